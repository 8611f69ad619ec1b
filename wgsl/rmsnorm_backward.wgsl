// rmsnorm_backward: dx (+)= rstd · (g − x · rstd² · mean(g · x)),  g = dy · (w + w_offset)
// (w is frozen; w_offset as in rmsnorm.wgsl).
//   x: [T, C], w: [C], rstd: [T] (from rmsnorm), dy: [T, C] → dx: [T, C]
//   accumulate = 1 adds into dx (the residual stream's gradient), 2 adds `residual` instead
//   (dx = residual + …: the stream's gradient carried over without a copy), 0 overwrites dx.
// Work split: one workgroup of 256 invocations per row; a tree reduction in workgroup memory.

struct Params {
  T: u32,
  C: u32,
  accumulate: u32,
  w_offset: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;         // [T, C]
@group(0) @binding(2) var<storage, read> w: array<f32>;         // [C]
@group(0) @binding(3) var<storage, read> rstd: array<f32>;      // [T]
@group(0) @binding(4) var<storage, read> dy: array<f32>;        // [T, C]
@group(0) @binding(5) var<storage, read> residual: array<f32>;  // [T, C] (accumulate = 2)
@group(0) @binding(6) var<storage, read_write> dx: array<f32>;  // [T, C]

const WG = 256u;
var<workgroup> partial: array<f32, WG>;

@compute @workgroup_size(WG)
fn rmsnorm_backward(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) li: u32) {
  let t = wg.x + wg.y * 65535u;
  if (t >= params.T) { return; }
  let C = params.C;
  let base = t * C;
  var s = 0.0;
  for (var c = li; c < C; c += WG) { s += dy[base + c] * (w[c] + params.w_offset) * x[base + c]; }
  partial[li] = s;
  workgroupBarrier();
  for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
    if (li < stride) { partial[li] += partial[li + stride]; }
    workgroupBarrier();
  }
  let r = rstd[t];
  let k = r * r * partial[0] / f32(C);
  for (var c = li; c < C; c += WG) {
    var v = r * (dy[base + c] * (w[c] + params.w_offset) - x[base + c] * k);
    if (params.accumulate == 1u) { v += dx[base + c]; }
    if (params.accumulate == 2u) { v += residual[base + c]; }
    dx[base + c] = v;
  }
}
