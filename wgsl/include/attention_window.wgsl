// attention_window: the keys a query sees under causal attention with an optional sliding
// window (Gemma's local layers): key j is visible to query i when j ≤ i and i − j < window
// (window 0: every j ≤ i), as transformers' sliding-window causal mask.

// The first key query i sees.
fn first_key(i: u32, window: u32) -> u32 {
  if (window == 0u || i < window) { return 0u; }
  return i + 1u - window;
}

// One past the last query that sees key j (of S queries).
fn last_query(j: u32, S: u32, window: u32) -> u32 {
  if (window == 0u) { return S; }
  return min(S, j + window);
}
