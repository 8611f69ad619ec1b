// attention_backward_dq: dq of causal GQA attention, recomputing the probabilities from lse.
//   For query i of head h:  delta_i = do_i · o_i,  p_ij = exp(scale · q_i·k_j − lse_i),
//   ds_ij = p_ij · (do_i·v_j − delta_i),  dq_i = scale · Σ_j≤i ds_ij · k_j.
//   Also stores delta [B, Hq, S] for attention_backward_dkv.
//   Layouts as in attention.wgsl; dq: [B·S, Hq·D].
// Work split: one invocation per (b, h, query i), 64 per workgroup; D ≤ 256.

struct Params {
  B: u32,
  S: u32,
  Hq: u32,
  Hkv: u32,
  D: u32,
  scale: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;             // [B·S, Hq·D]
@group(0) @binding(2) var<storage, read> k: array<f32>;             // [B·S, Hkv·D]
@group(0) @binding(3) var<storage, read> v: array<f32>;             // [B·S, Hkv·D]
@group(0) @binding(4) var<storage, read> o: array<f32>;             // [B·S, Hq·D]
@group(0) @binding(5) var<storage, read> d_o: array<f32>;           // [B·S, Hq·D]
@group(0) @binding(6) var<storage, read> lse: array<f32>;           // [B, Hq, S]
@group(0) @binding(7) var<storage, read_write> dq: array<f32>;      // [B·S, Hq·D]
@group(0) @binding(8) var<storage, read_write> delta: array<f32>;   // [B, Hq, S]

const WG = 64u;
const MAX_D = 256u;

@compute @workgroup_size(WG)
fn attention_backward_dq(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let p = params;
  let idx = gid.x + gid.y * nwg.x * WG;
  if (idx >= p.B * p.Hq * p.S) { return; }
  let i = idx % p.S;
  let h = (idx / p.S) % p.Hq;
  let b = idx / (p.S * p.Hq);
  let g = h / (p.Hq / p.Hkv);
  let q_base = (b * p.S + i) * p.Hq * p.D + h * p.D;
  var di = 0.0;
  for (var d = 0u; d < p.D; d++) { di += d_o[q_base + d] * o[q_base + d]; }
  delta[idx] = di;
  let li = lse[idx];
  var acc: array<f32, MAX_D>;
  for (var d = 0u; d < p.D; d++) { acc[d] = 0.0; }
  for (var j = 0u; j <= i; j++) {
    let kv_base = (b * p.S + j) * p.Hkv * p.D + g * p.D;
    var s = 0.0;
    var dp = 0.0;
    for (var d = 0u; d < p.D; d++) {
      s += q[q_base + d] * k[kv_base + d];
      dp += d_o[q_base + d] * v[kv_base + d];
    }
    let pij = exp(s * p.scale - li);
    let ds = pij * (dp - di) * p.scale;
    for (var d = 0u; d < p.D; d++) { acc[d] += ds * k[kv_base + d]; }
  }
  for (var d = 0u; d < p.D; d++) { dq[q_base + d] = acc[d]; }
}
