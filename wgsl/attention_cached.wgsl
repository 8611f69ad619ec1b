// attention_cached: causal GQA attention of T new tokens against a KV cache (generation).
//   q: [T, Hq·D] for the tokens at positions start … start+T−1; k_cache, v_cache: [max, Hkv·D]
//   already holding positions 0 … start+T−1. Token i of head h attends to positions ≤ start+i
//   (and, with a sliding window, > start+i − window).
//   o: [T, Hq·D].  Prefill is T = prompt length, start = 0; each decoding step is T = 1.
// Work split: one invocation per (i, h), 64 per workgroup, online softmax over the cache; D ≤ 256.

struct Params {
  T: u32,
  start: u32,
  Hq: u32,
  Hkv: u32,
  D: u32,
  scale: f32,
  window: u32,  // sliding-window attention: keys within `window` positions (i − j < window); 0: all
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;          // [T, Hq·D]
@group(0) @binding(2) var<storage, read> k_cache: array<f32>;    // [max, Hkv·D]
@group(0) @binding(3) var<storage, read> v_cache: array<f32>;    // [max, Hkv·D]
@group(0) @binding(4) var<storage, read_write> o: array<f32>;    // [T, Hq·D]

const WG = 64u;
const MAX_D = 256u;

//! include attention_window

@compute @workgroup_size(WG)
fn attention_cached(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let p = params;
  let idx = gid.x + gid.y * nwg.x * WG;   // i · Hq + h
  if (idx >= p.T * p.Hq) { return; }
  let h = idx % p.Hq;
  let i = idx / p.Hq;
  let g = h / (p.Hq / p.Hkv);
  let q_base = i * p.Hq * p.D + h * p.D;
  var acc: array<f32, MAX_D>;
  for (var d = 0u; d < p.D; d++) { acc[d] = 0.0; }
  var m = -3.4e38;
  var l = 0.0;
  for (var j = first_key(p.start + i, p.window); j <= p.start + i; j++) {
    let kv_base = j * p.Hkv * p.D + g * p.D;
    var s = 0.0;
    for (var d = 0u; d < p.D; d++) { s += q[q_base + d] * k_cache[kv_base + d]; }
    s *= p.scale;
    let m_new = max(m, s);
    let correction = exp(m - m_new);
    let w = exp(s - m_new);
    l = l * correction + w;
    for (var d = 0u; d < p.D; d++) { acc[d] = acc[d] * correction + w * v_cache[kv_base + d]; }
    m = m_new;
  }
  for (var d = 0u; d < p.D; d++) { o[q_base + d] = acc[d] / l; }
}
