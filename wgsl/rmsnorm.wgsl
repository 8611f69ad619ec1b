// rmsnorm: y = x / sqrt(mean(x²) + eps) · (w + w_offset), per row (in f32): Llama/Qwen RMSNorm
// (w_offset 0), Gemma's (1 + w). With add_residual, y = residual + that (Gemma's norms after
// attention and the MLP, added to the stream without a copy).
// With center (GPT-2's LayerNorm): x − mean(x) in place of x (the variance taken about the mean,
// in a second pass over the row), plus the bias b.
//   x: [T, C], w, b: [C] → y: [T, C], rstd: [T] (1/sqrt(mean(x²)+eps), kept for the backward pass)
// Work split: one workgroup of 256 invocations per row; a tree reduction in workgroup memory.

struct Params {
  T: u32,
  C: u32,
  eps: f32,
  w_offset: f32,
  add_residual: u32,
  center: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;           // [T, C]
@group(0) @binding(2) var<storage, read> w: array<f32>;           // [C]
@group(0) @binding(3) var<storage, read> b: array<f32>;           // [C] (center)
@group(0) @binding(4) var<storage, read> residual: array<f32>;    // [T, C] (add_residual)
@group(0) @binding(5) var<storage, read_write> y: array<f32>;     // [T, C]
@group(0) @binding(6) var<storage, read_write> rstd: array<f32>;  // [T]

const WG = 256u;
var<workgroup> partial: array<f32, WG>;

@compute @workgroup_size(WG)
fn rmsnorm(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) li: u32) {
  let t = wg.x + wg.y * 65535u;
  if (t >= params.T) { return; }  // uniform per workgroup: no barrier is skipped by part of it
  let C = params.C;
  let base = t * C;
  var mean = 0.0;
  if (params.center != 0u) {  // (uniform: the whole workgroup takes this branch or none does)
    mean = row_sum(base, C, 0.0, li, false) / f32(C);
    workgroupBarrier();  // everyone has read partial[0] before it is written again
  }
  let r = inverseSqrt(row_sum(base, C, mean, li, true) / f32(C) + params.eps);
  for (var c = li; c < C; c += WG) {
    var v = (x[base + c] - mean) * r * (w[c] + params.w_offset);
    if (params.center != 0u) { v += b[c]; }
    if (params.add_residual != 0u) { v = residual[base + c] + v; }
    y[base + c] = v;
  }
  if (li == 0u) { rstd[t] = r; }
}

// Σ (x − mean)² over the row (squared), or Σ x; every invocation gets the total.
fn row_sum(base: u32, C: u32, mean: f32, li: u32, squared: bool) -> f32 {
  var s = 0.0;
  for (var c = li; c < C; c += WG) {
    let v = x[base + c] - mean;
    s += select(v, v * v, squared);
  }
  partial[li] = s;
  workgroupBarrier();
  for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
    if (li < stride) { partial[li] += partial[li + stride]; }
    workgroupBarrier();
  }
  return partial[0];
}
