// swiglu_backward: gradients of h = silu(gate) · up.
//   dgate = dh · up · σ(g) · (1 + g · (1 − σ(g))),   dup = dh · silu(g)
//   gate, up, dh: [N] → dgate, dup: [N]
// Work split: one invocation per element, 256 per workgroup, 2-D grid for large N.

struct Params {
  N: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> gate: array<f32>;        // [N]
@group(0) @binding(2) var<storage, read> up: array<f32>;          // [N]
@group(0) @binding(3) var<storage, read> dh: array<f32>;          // [N]
@group(0) @binding(4) var<storage, read_write> dgate: array<f32>; // [N]
@group(0) @binding(5) var<storage, read_write> dup: array<f32>;   // [N]

const WG = 256u;

@compute @workgroup_size(WG)
fn swiglu_backward(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * nwg.x * WG;
  if (i >= params.N) { return; }
  let g = gate[i];
  let sig = 1.0 / (1.0 + exp(-g));
  let d = dh[i];
  dgate[i] = d * up[i] * sig * (1.0 + g * (1.0 - sig));
  dup[i] = d * g * sig;
}
