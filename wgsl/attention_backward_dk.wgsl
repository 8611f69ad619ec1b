// attention_backward_dk: dk of causal GQA attention (after attention_backward_dq, which stores
// delta). For key j of kv head g, over the query heads h of its group and queries i ≥ j:
//   p_ij = exp(scale · q_i·k_j − lse_i),  dk_j = scale · Σ p_ij · (do_i·v_j − delta_i) · q_i
//   Layouts as in attention.wgsl; dk_heads: [B·S, Hq·D], one share per query head.
// Work split: one invocation per (b, query head h, key j), 64 per workgroup, each writing head h's
// share of dk_j (head_sum.wgsl adds the shares of a kv group); k_j, v_j and dk_j live in vec4
// registers (HEAD_DIM4 as in attention.wgsl). dv has its own kernel so neither needs four rows.

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
@group(0) @binding(4) var<storage, read> d_o: array<f32>;        // [B·S, Hq·D]
@group(0) @binding(5) var<storage, read> lse: array<f32>;        // [B, Hq, S]
@group(0) @binding(6) var<storage, read> delta: array<f32>;      // [B, Hq, S]
@group(0) @binding(7) var<storage, read_write> dk_heads: array<f32>;  // [B·S, Hq·D], summed per kv group by head_sum

override HEAD_DIM4: u32 = 64u;
const MAX_D4 = 64u;
const WG = 64u;

//! include attention_window

//! include attention_qk

//! include attention_v

//! include attention_do

@compute @workgroup_size(WG)
fn attention_backward_dk(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let p = params;
  let idx = gid.x + gid.y * nwg.x * WG;   // ((b · Hq) + h) · S + j
  if (idx >= p.B * p.Hq * p.S) { return; }
  let j = idx % p.S;
  let h = (idx / p.S) % p.Hq;
  let b = idx / (p.S * p.Hq);
  let g = h / (p.Hq / p.Hkv);
  let kv_base = (b * p.S + j) * p.Hkv * p.D + g * p.D;
  let out_base = (b * p.S + j) * p.Hq * p.D + h * p.D;
  var kr: array<vec4f, MAX_D4>;
  var vr: array<vec4f, MAX_D4>;
  var acc: array<vec4f, MAX_D4>;
  for (var d4 = 0u; d4 < HEAD_DIM4; d4++) { kr[d4] = load_k(kv_base, d4) * p.scale; vr[d4] = load_v(kv_base, d4); acc[d4] = vec4f(0.0); }
  // Every invocation of a workgroup walks the same queries in step (from the block's first key),
  // so each query row is read once for all of them; rows before a thread's own key are skipped.
  for (var i = j - j % WG; i < last_query(j - j % WG + WG - 1u, p.S, p.window); i++) {
    if (i >= j && i < last_query(j, p.S, p.window)) {
      let q_base = (b * p.S + i) * p.Hq * p.D + h * p.D;
      let row = (b * p.Hq + h) * p.S + i;
      var s = 0.0;
      var dp = 0.0;
      for (var d4 = 0u; d4 < HEAD_DIM4; d4++) {
        s += dot(load_q(q_base, d4), kr[d4]);
        dp += dot(load_d_o(q_base, d4), vr[d4]);
      }
      let ds = exp(s - lse[row]) * (dp - delta[row]) * p.scale;
      for (var d4 = 0u; d4 < HEAD_DIM4; d4++) { acc[d4] += ds * load_q(q_base, d4); }
    }
  }
  for (var d4 = 0u; d4 < HEAD_DIM4; d4++) {
    let d = d4 * 4u;
    for (var c = 0u; c < 4u; c++) {
      if (d + c < p.D) { dk_heads[out_base + d + c] = acc[d4][c]; }
    }
  }
}
