// attention: causal grouped-query attention, forward, memory-efficient (online softmax: no S×S
// matrix is ever stored), plus the row log-sum-exp the backward pass needs.
//   q: [B·S, Hq·D], k, v: [B·S, Hkv·D] (the projections' own layout), head h reads kv head
//   h / (Hq / Hkv).  o: [B·S, Hq·D].  lse: [B, Hq, S] = log Σ_j≤i exp(scale · q_i·k_j).
// Work split: one invocation per (b, h, query i), 64 per workgroup, looping over keys j ≤ i
// with a running max and sum; D ≤ 256.

struct Params {
  B: u32,
  S: u32,
  Hq: u32,
  Hkv: u32,
  D: u32,
  scale: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;          // [B·S, Hq·D]
@group(0) @binding(2) var<storage, read> k: array<f32>;          // [B·S, Hkv·D]
@group(0) @binding(3) var<storage, read> v: array<f32>;          // [B·S, Hkv·D]
@group(0) @binding(4) var<storage, read_write> o: array<f32>;    // [B·S, Hq·D]
@group(0) @binding(5) var<storage, read_write> lse: array<f32>;  // [B, Hq, S]

const WG = 64u;
const MAX_D = 256u;

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
  var acc: array<f32, MAX_D>;
  for (var d = 0u; d < p.D; d++) { acc[d] = 0.0; }
  var m = -3.4e38;
  var l = 0.0;
  for (var j = 0u; j <= i; j++) {
    let kv_base = (b * p.S + j) * p.Hkv * p.D + g * p.D;
    var s = 0.0;
    for (var d = 0u; d < p.D; d++) { s += q[q_base + d] * k[kv_base + d]; }
    s *= p.scale;
    let m_new = max(m, s);
    let correction = exp(m - m_new);
    let w = exp(s - m_new);
    l = l * correction + w;
    for (var d = 0u; d < p.D; d++) { acc[d] = acc[d] * correction + w * v[kv_base + d]; }
    m = m_new;
  }
  for (var d = 0u; d < p.D; d++) { o[q_base + d] = acc[d] / l; }
  lse[idx] = m + log(l);
}
