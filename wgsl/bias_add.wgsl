// bias_add: y[t, n] += bias[n] (the q/k/v biases of Qwen2 attention, every projection's of GPT-2).
//   y: [T, N] in place, bias: [N]
// Work split: one invocation per element, 256 per workgroup, 2-D grid for large T·N.

struct Params {
  T: u32,
  N: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> bias: array<f32>;   // [N]
@group(0) @binding(2) var<storage, read_write> y: array<f32>;  // [T, N]

const WG = 256u;

@compute @workgroup_size(WG)
fn bias_add(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * nwg.x * WG;
  if (i >= params.T * params.N) { return; }
  y[i] += bias[i % params.N];
}
