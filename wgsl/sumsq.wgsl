// sumsq: partial sums of squares, the first stage of the global gradient norm.
//   x: [N] → partial: [P], partial[w] = Σ x[i]² over the CHUNK elements of workgroup w
//   (P = ceil(N / CHUNK); grad_clip.wgsl adds the partials).
// Work split: 256 invocations per workgroup, each striding over its workgroup's chunk, then a
// tree reduction in workgroup memory. Fixed order: the same input always gives the same bits.

struct Params {
  N: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;              // [N]
@group(0) @binding(2) var<storage, read_write> partial: array<f32>;  // [ceil(N / CHUNK)]

const WG = 256u;
const CHUNK = 4096u;
var<workgroup> red: array<f32, WG>;

@compute @workgroup_size(WG)
fn sumsq(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) li: u32) {
  let w = wg.x + wg.y * 65535u;
  let start = w * CHUNK;
  if (start >= params.N) { return; }
  let end = min(start + CHUNK, params.N);
  var s = 0.0;
  for (var i = start + li; i < end; i += WG) { let v = x[i]; s += v * v; }
  red[li] = s;
  workgroupBarrier();
  for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
    if (li < stride) { red[li] += red[li + stride]; }
    workgroupBarrier();
  }
  if (li == 0u) { partial[w] = red[0]; }
}
