// glu_backward: gradients of h = act(gate) · up (glu.wgsl):
//   dgate = dh · up · act'(g),   dup = dh · act(g)
//   SiLU:  act' = σ(g) · (1 + g · (1 − σ(g)))
//   GELU (tanh): with u = √(2/π) · (g + 0.044715 · g³) and s = σ(2u) = (1 + tanh(u)) / 2:
//          act = g · s,  act' = s + 2 · g · s · (1 − s) · √(2/π) · (1 + 3 · 0.044715 · g²)
// Without `gated` (h = act(gate)): dgate = dh · act'(g); `up` is not read nor `dup` written.
//   gate, up, dh: [N] → dgate, dup: [N]
// Work split: one invocation per element, 256 per workgroup, 2-D grid for large N.

struct Params {
  N: u32,
  act: u32,
  gated: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> gate: array<f32>;        // [N]
@group(0) @binding(2) var<storage, read> up: array<f32>;          // [N]
@group(0) @binding(3) var<storage, read> dh: array<f32>;          // [N]
@group(0) @binding(4) var<storage, read_write> dgate: array<f32>; // [N]
@group(0) @binding(5) var<storage, read_write> dup: array<f32>;   // [N]

const WG = 256u;
const GELU_K = 0.7978845608028654;  // √(2/π)

@compute @workgroup_size(WG)
fn glu_backward(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * nwg.x * WG;
  if (i >= params.N) { return; }
  let g = gate[i];
  let d = dh[i];
  var act: f32;
  var slope: f32;
  if (params.act == 1u) {
    let s = 1.0 / (1.0 + exp(-2.0 * GELU_K * (g + 0.044715 * g * g * g)));
    act = g * s;
    slope = s + 2.0 * g * s * (1.0 - s) * GELU_K * (1.0 + 3.0 * 0.044715 * g * g);
  } else {
    let sig = 1.0 / (1.0 + exp(-g));
    act = g * sig;
    slope = sig * (1.0 + g * (1.0 - sig));
  }
  if (params.gated != 0u) {
    dgate[i] = d * up[i] * slope;
    dup[i] = d * act;
  } else {
    dgate[i] = d * slope;
  }
}
