// transpose: out[o, i] = x[i, first + o] for o < N — columns first…first+N−1 of a [R, K] matrix
// as an [N, R] one. GPT-2 keeps its projections as Conv1D weights, [in, out]: the engine's
// matrices are [out, in] (and c_attn's q, k and v are column ranges of one). Also the way back,
// for merged exports. Load-time only.
//   x: [R, K] → out: [N, R]
// Work split: one invocation per output element, 256 per workgroup, 2-D grid for large N·R.

struct Params {
  R: u32,
  K: u32,
  first: u32,
  N: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;          // [R, K]
@group(0) @binding(2) var<storage, read_write> out: array<f32>;  // [N, R]

const WG = 256u;

@compute @workgroup_size(WG)
fn transpose(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let j = gid.x + gid.y * nwg.x * WG;
  if (j >= params.N * params.R) { return; }
  let o = j / params.R;
  let i = j % params.R;
  out[j] = x[i * params.K + params.first + o];
}
