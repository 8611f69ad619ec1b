// attention_backward_dq: dq of causal GQA attention, recomputing the probabilities from lse.
//   For query i of head h:  delta_i = do_i · o_i,  p_ij = exp(scale · q_i·k_j − lse_i),
//   ds_ij = p_ij · (do_i·v_j − delta_i),  dq_i = scale · Σ_j≤i ds_ij · k_j.
//   Also stores delta [B, Hq, S] for attention_backward_dk.
//   Layouts as in attention.wgsl; dq: [B·S, Hq·D].
// Work split: one invocation per (b, h, query i), 64 per workgroup; q_i, do_i and dq_i live in
// vec4 registers (HEAD_DIM4 = ceil(D / 4) is a pipeline constant, as in attention.wgsl).

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
@group(0) @binding(1) var<storage, read> q: array<f32>;             // [B·S, Hq·D]
@group(0) @binding(2) var<storage, read> k: array<f32>;             // [B·S, Hkv·D]
@group(0) @binding(3) var<storage, read> v: array<f32>;             // [B·S, Hkv·D]
@group(0) @binding(4) var<storage, read> o: array<f32>;             // [B·S, Hq·D]
@group(0) @binding(5) var<storage, read> d_o: array<f32>;           // [B·S, Hq·D]
@group(0) @binding(6) var<storage, read> lse: array<f32>;           // [B, Hq, S]
@group(0) @binding(7) var<storage, read_write> dq: array<f32>;      // [B·S, Hq·D]
@group(0) @binding(8) var<storage, read_write> delta: array<f32>;   // [B, Hq, S]

override HEAD_DIM4: u32 = 64u;
const MAX_D4 = 64u;
const WG = 64u;

//! include attention_window

//! include attention_qk

//! include attention_v

fn load_o(base: u32, d4: u32) -> vec4f {
  let d = d4 * 4u;
  if (d + 3u < params.D) { return vec4f(o[base + d], o[base + d + 1u], o[base + d + 2u], o[base + d + 3u]); }
  let m = lane_mask(d);
  return vec4f(o[base + min(d, params.D - 1u)] * m.x, o[base + min(d + 1u, params.D - 1u)] * m.y,
               o[base + min(d + 2u, params.D - 1u)] * m.z, o[base + min(d + 3u, params.D - 1u)] * m.w);
}

//! include attention_do

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
  var qr: array<vec4f, MAX_D4>;
  var dor: array<vec4f, MAX_D4>;
  var acc: array<vec4f, MAX_D4>;
  var di = 0.0;
  for (var d4 = 0u; d4 < HEAD_DIM4; d4++) {
    qr[d4] = load_q(q_base, d4) * p.scale;
    dor[d4] = load_d_o(q_base, d4);
    di += dot(dor[d4], load_o(q_base, d4));
    acc[d4] = vec4f(0.0);
  }
  delta[idx] = di;
  let li = lse[idx];
  for (var j = first_key(i, p.window); j <= i; j++) {
    let kv_base = (b * p.S + j) * p.Hkv * p.D + g * p.D;
    var s = 0.0;
    var dp = 0.0;
    for (var d4 = 0u; d4 < HEAD_DIM4; d4++) {
      s += dot(qr[d4], load_k(kv_base, d4));
      dp += dot(dor[d4], load_v(kv_base, d4));
    }
    let ds = exp(s - li) * (dp - di) * p.scale;
    for (var d4 = 0u; d4 < HEAD_DIM4; d4++) { acc[d4] += ds * load_k(kv_base, d4); }
  }
  for (var d4 = 0u; d4 < HEAD_DIM4; d4++) {
    let d = d4 * 4u;
    for (var c = 0u; c < 4u; c++) {
      if (d + c < p.D) { dq[q_base + d + c] = acc[d4][c]; }
    }
  }
}
