// matmul_reduce: C = alpha · Σ_z partial[z] + beta · C, finishing a split-K matmul.
//   partial: [splits, M·N] (matmul.wgsl's per-split products), C: [M·N]
// Work split: one invocation per element of C, 256 per workgroup, 2-D grid for large M·N;
// the splits are added in order, so results are deterministic.

struct Params {
  MN: u32,
  splits: u32,
  alpha: f32,
  beta: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> partial: array<f32>;  // [splits, M·N]
@group(0) @binding(2) var<storage, read_write> C: array<f32>;  // [M·N]

const WG = 256u;

@compute @workgroup_size(WG)
fn matmul_reduce(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * nwg.x * WG;
  if (i >= params.MN) { return; }
  var s = 0.0;
  for (var z = 0u; z < params.splits; z++) { s += partial[z * params.MN + i]; }
  var v = params.alpha * s;
  if (params.beta != 0.0) { v += params.beta * C[i]; }
  C[i] = v;
}
