// swiglu: h = silu(gate) · up, silu(g) = g · sigmoid(g) (the Llama/Qwen2 MLP activation).
//   gate, up: [N] → h: [N]   (N = tokens × intermediate size)
// Work split: one invocation per element, 256 per workgroup, 2-D grid for large N.

struct Params {
  N: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> gate: array<f32>;   // [N]
@group(0) @binding(2) var<storage, read> up: array<f32>;     // [N]
@group(0) @binding(3) var<storage, read_write> h: array<f32>;  // [N]

const WG = 256u;

@compute @workgroup_size(WG)
fn swiglu(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * nwg.x * WG;
  if (i >= params.N) { return; }
  let g = gate[i];
  h[i] = g / (1.0 + exp(-g)) * up[i];
}
