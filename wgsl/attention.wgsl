// attention: causal grouped-query attention, forward, memory-efficient (online softmax: no S×S
// matrix is ever stored), plus the row log-sum-exp the backward pass needs.
//   q: [B·S, Hq·D], k, v: [B·S, Hkv·D] (the projections' own layout), head h reads kv head
//   h / (Hq / Hkv).  o: [B·S, Hq·D].  lse: [B, Hq, S] = log Σ_j exp(scale · q_i·k_j) over the keys j ≤ i
//   (and i − j < window with a sliding window).
// Work split: one invocation per (b, h, query i), 64 per workgroup (neighbouring queries of one
// head, so the keys they read are shared through the cache), looping over keys j ≤ i with a
// running max and sum. The query and the output row live in vec4 registers: HEAD_DIM4 =
// ceil(D / 4) is a pipeline constant, so the loops over it unroll (the default, 64, serves any
// D ≤ 256 through the guards in load4).

struct Params {
  B: u32,
  S: u32,
  Hq: u32,
  Hkv: u32,
  D: u32,
  scale: f32,
  window: u32,  // sliding-window attention: keys within `window` positions (i − j < window); 0: all
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;          // [B·S, Hq·D]
@group(0) @binding(2) var<storage, read> k: array<f32>;          // [B·S, Hkv·D]
@group(0) @binding(3) var<storage, read> v: array<f32>;          // [B·S, Hkv·D]
@group(0) @binding(4) var<storage, read_write> o: array<f32>;    // [B·S, Hq·D]
@group(0) @binding(5) var<storage, read_write> lse: array<f32>;  // [B, Hq, S]

override HEAD_DIM4: u32 = 64u;
const MAX_D4 = 64u;
const WG = 64u;

//! include attention_window

//! include attention_qk

//! include attention_v

@compute @workgroup_size(WG)
fn attention(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let p = params;
  let idx = gid.x + gid.y * nwg.x * WG;   // ((b · Hq) + h) · S + i
  if (idx >= p.B * p.Hq * p.S) { return; }
  let i = idx % p.S;
  let h = (idx / p.S) % p.Hq;
  let b = idx / (p.S * p.Hq);
  let g = h / (p.Hq / p.Hkv);
  let q_base = (b * p.S + i) * p.Hq * p.D + h * p.D;
  var qr: array<vec4f, MAX_D4>;
  var acc: array<vec4f, MAX_D4>;
  for (var d4 = 0u; d4 < HEAD_DIM4; d4++) { qr[d4] = load_q(q_base, d4) * p.scale; acc[d4] = vec4f(0.0); }
  var m = -3.4e38;
  var l = 0.0;
  for (var j = first_key(i, p.window); j <= i; j++) {
    let kv_base = (b * p.S + j) * p.Hkv * p.D + g * p.D;
    var s = 0.0;
    for (var d4 = 0u; d4 < HEAD_DIM4; d4++) { s += dot(qr[d4], load_k(kv_base, d4)); }
    let m_new = max(m, s);
    let correction = exp(m - m_new);
    let w = exp(s - m_new);
    l = l * correction + w;
    for (var d4 = 0u; d4 < HEAD_DIM4; d4++) { acc[d4] = acc[d4] * correction + w * load_v(kv_base, d4); }
    m = m_new;
  }
  let inv = 1.0 / l;
  for (var d4 = 0u; d4 < HEAD_DIM4; d4++) {
    let d = d4 * 4u;
    for (var c = 0u; c < 4u; c++) {
      if (d + c < p.D) { o[q_base + d + c] = acc[d4][c] * inv; }
    }
  }
  lse[idx] = m + log(l);
}
