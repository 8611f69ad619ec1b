// attention_backward_dkv: dk and dv of causal GQA attention (run after attention_backward_dq,
// which stores delta). For key j of kv head g, over the query heads h of its group and i ≥ j:
//   p_ij = exp(scale · q_i·k_j − lse_i),  dv_j = Σ p_ij · do_i,
//   dk_j = scale · Σ p_ij · (do_i·v_j − delta_i) · q_i
//   Layouts as in attention.wgsl; dk, dv: [B·S, Hkv·D].
// Work split: one invocation per (b, g, key j), 64 per workgroup; D ≤ 256.

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
@group(0) @binding(4) var<storage, read> d_o: array<f32>;        // [B·S, Hq·D]
@group(0) @binding(5) var<storage, read> lse: array<f32>;        // [B, Hq, S]
@group(0) @binding(6) var<storage, read> delta: array<f32>;      // [B, Hq, S]
@group(0) @binding(7) var<storage, read_write> dk: array<f32>;   // [B·S, Hkv·D]
@group(0) @binding(8) var<storage, read_write> dv: array<f32>;   // [B·S, Hkv·D]

const WG = 64u;
const MAX_D = 256u;

@compute @workgroup_size(WG)
fn attention_backward_dkv(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let p = params;
  let idx = gid.x + gid.y * nwg.x * WG;   // ((b · Hkv) + g) · S + j
  if (idx >= p.B * p.Hkv * p.S) { return; }
  let j = idx % p.S;
  let g = (idx / p.S) % p.Hkv;
  let b = idx / (p.S * p.Hkv);
  let group = p.Hq / p.Hkv;
  let kv_base = (b * p.S + j) * p.Hkv * p.D + g * p.D;
  var dk_acc: array<f32, MAX_D>;
  var dv_acc: array<f32, MAX_D>;
  for (var d = 0u; d < p.D; d++) { dk_acc[d] = 0.0; dv_acc[d] = 0.0; }
  for (var h = g * group; h < (g + 1u) * group; h++) {
    for (var i = j; i < p.S; i++) {
      let q_base = (b * p.S + i) * p.Hq * p.D + h * p.D;
      let row = (b * p.Hq + h) * p.S + i;
      var s = 0.0;
      var dp = 0.0;
      for (var d = 0u; d < p.D; d++) {
        s += q[q_base + d] * k[kv_base + d];
        dp += d_o[q_base + d] * v[kv_base + d];
      }
      let pij = exp(s * p.scale - lse[row]);
      let ds = pij * (dp - delta[row]) * p.scale;
      for (var d = 0u; d < p.D; d++) {
        dv_acc[d] += pij * d_o[q_base + d];
        dk_acc[d] += ds * q[q_base + d];
      }
    }
  }
  for (var d = 0u; d < p.D; d++) { dk[kv_base + d] = dk_acc[d]; dv[kv_base + d] = dv_acc[d]; }
}
