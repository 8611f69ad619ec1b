// dora_scale: DoRA's magnitude over the direction: each output of an adapted projection times
// g = m / n (m the trained magnitude, n the weight norm of dora_norm, held constant as PEFT does).
//   by_row = 0: y[t, j] = g[j] · x[t, j] (+ res[t, j]) (+ bias[j])   x, y: [rows, cols = N]
//               (forward: the projection's x · Wᵀ + s · u · Bᵀ → its output; backward: g · dy)
//   by_row = 1: y[j, i] = g[j] · x[j, i]                             x, y: [rows = N, cols]
//               (a merged matrix: the rows of W + s · B · A scaled)
//   res and bias are read only when has_res / has_bias.
// Work split: one invocation per element, 256 per workgroup, 2-D grid for large sizes.

struct Params {
  rows: u32,
  cols: u32,
  by_row: u32,
  has_res: u32,
  has_bias: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;          // [rows, cols]
@group(0) @binding(2) var<storage, read> m: array<f32>;          // [N]
@group(0) @binding(3) var<storage, read> norms: array<f32>;          // [N]
@group(0) @binding(4) var<storage, read> res: array<f32>;        // [rows, cols] (has_res)
@group(0) @binding(5) var<storage, read> bias: array<f32>;       // [N] (has_bias)
@group(0) @binding(6) var<storage, read_write> y: array<f32>;    // [rows, cols]

const WG = 256u;

@compute @workgroup_size(WG)
fn dora_scale(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let e = gid.x + gid.y * nwg.x * WG;
  if (e >= params.rows * params.cols) { return; }
  let j = select(e % params.cols, e / params.cols, params.by_row != 0u);
  var v = m[j] / norms[j] * x[e];
  if (params.has_res != 0u) { v += res[e]; }
  if (params.has_bias != 0u) { v += bias[j]; }
  y[e] = v;
}
