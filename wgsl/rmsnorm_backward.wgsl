// rmsnorm_backward: dx (+)= rstd · (g − x · rstd² · mean(g · x)),  g = dy · (w + w_offset)
// (w is frozen; w_offset as in rmsnorm.wgsl). With center (LayerNorm), x̂ = (x − mean) · rstd:
//   dx (+)= rstd · (g − mean(g) − x̂ · mean(g · x̂)),
// the mean taken in a first pass over the row.
//   x: [T, C], w: [C], rstd: [T] (from rmsnorm), dy: [T, C] → dx: [T, C]
//   accumulate = 1 adds into dx (the residual stream's gradient), 2 adds `residual` instead
//   (dx = residual + …: the stream's gradient carried over without a copy), 0 overwrites dx.
// Work split: one workgroup of 256 invocations per row; a tree reduction in workgroup memory.

struct Params {
  T: u32,
  C: u32,
  accumulate: u32,
  w_offset: f32,
  center: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;         // [T, C]
@group(0) @binding(2) var<storage, read> w: array<f32>;         // [C]
@group(0) @binding(3) var<storage, read> rstd: array<f32>;      // [T]
@group(0) @binding(4) var<storage, read> dy: array<f32>;        // [T, C]
@group(0) @binding(5) var<storage, read> residual: array<f32>;  // [T, C] (accumulate = 2)
@group(0) @binding(6) var<storage, read_write> dx: array<f32>;  // [T, C]

const WG = 256u;
var<workgroup> partial: array<vec3f, WG>;

@compute @workgroup_size(WG)
fn rmsnorm_backward(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) li: u32) {
  let t = wg.x + wg.y * 65535u;
  if (t >= params.T) { return; }
  let C = params.C;
  let base = t * C;
  let n = f32(C);
  var mean = 0.0;
  if (params.center != 0u) {  // (uniform: the whole workgroup takes this branch or none does)
    var m = vec3f(0.0);
    for (var c = li; c < C; c += WG) { m.x += x[base + c]; }
    mean = row_sum(m, li).x / n;
    workgroupBarrier();  // everyone has read partial[0] before it is written again
  }
  var s = vec3f(0.0);  // Σ g · (x − mean), Σ g
  for (var c = li; c < C; c += WG) {
    let g = dy[base + c] * (w[c] + params.w_offset);
    s += vec3f(g * (x[base + c] - mean), g, 0.0);
  }
  let sums = row_sum(s, li);
  let r = rstd[t];
  let g_mean = select(0.0, sums.y / n, params.center != 0u);
  let k = r * r * sums.x / n;  // mean(g · x̂) · rstd, with x̂ = (x − mean) · rstd
  for (var c = li; c < C; c += WG) {
    var v = r * (dy[base + c] * (w[c] + params.w_offset) - g_mean - (x[base + c] - mean) * k);
    if (params.accumulate == 1u) { v += dx[base + c]; }
    if (params.accumulate == 2u) { v += residual[base + c]; }
    dx[base + c] = v;
  }
}

// The workgroup's total of each invocation's `v` (every invocation gets it).
fn row_sum(v: vec3f, li: u32) -> vec3f {
  partial[li] = v;
  workgroupBarrier();
  for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
    if (li < stride) { partial[li] += partial[li + stride]; }
    workgroupBarrier();
  }
  return partial[0];
}
