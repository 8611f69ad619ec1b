// grad_clip: the global gradient norm and the factor the optimizer applies to the raw gradients,
// on the GPU so the step needs no readback; and whether the step may update the adapter at all.
//   partial: [P] (from sumsq.wgsl over the raw, unscaled gradients)
//   step.grad_scale (include/step.wgsl; grad_scale = 1 / target tokens of the step, so the
//   loss is a mean and the raw gradients are sums)
//   clip ← [norm, factor]: norm = sqrt(Σ partial) · grad_scale (torch's total_norm), and
//   factor = grad_scale · min(1, max_norm / (norm + 1e-6))  (clip_grad_norm_; max_norm = 0 → no clip)
//   clip[2] ← 1 once a step's loss (history[step.slot], complete after its last micro-batch) or norm
//   is NaN or infinite, and it stays 1 (the host zeroes it when training starts): the optimizer
//   then restores the last adapter whose loss was finite instead of stepping.
// Work split: one workgroup of 256 invocations.

struct Params {
  P: u32,
  max_norm: f32,
}

//! include step

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> partial: array<f32>;     // [P]
@group(0) @binding(2) var<storage, read> step: Step;
@group(0) @binding(3) var<storage, read> history: array<f32>;    // the loss of each step in the window
@group(0) @binding(4) var<storage, read_write> clip: array<f32>;  // [norm, factor, halted]

const WG = 256u;
var<workgroup> red: array<f32, WG>;

// Not NaN or ±inf, from the bits (compilers may fold x == x away).
fn is_finite(x: f32) -> bool {
  return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}

@compute @workgroup_size(WG)
fn grad_clip(@builtin(local_invocation_index) li: u32) {
  var s = 0.0;
  for (var i = li; i < params.P; i += WG) { s += partial[i]; }
  red[li] = s;
  workgroupBarrier();
  for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
    if (li < stride) { red[li] += red[li + stride]; }
    workgroupBarrier();
  }
  if (li == 0u) {
    let scale = step.grad_scale;
    let norm = sqrt(red[0]) * scale;
    var coefficient = 1.0;
    if (params.max_norm > 0.0) { coefficient = min(1.0, params.max_norm / (norm + 1e-6)); }
    clip[0] = norm;
    clip[1] = coefficient * scale;
    if (!is_finite(norm) || !is_finite(history[u32(step.slot)])) { clip[2] = 1.0; }
  }
}
