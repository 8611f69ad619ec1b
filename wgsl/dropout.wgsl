// dropout: y (+)= x · keep / (1 − p), the LoRA dropout on an adapter's input (training only).
//   keep = 0 for a fraction p of elements, from a PCG hash of (step seed, stream, element), so
//   the backward pass regenerates the same mask instead of storing it.
//   x: [N], step.seed (include/step.wgsl; a new seed every micro-batch: an integer below 2^24,
//   stored as a float; raw u32 bits would be denormal floats, which GPUs may flush to zero),
//   stream: one per (layer, module), so every adapter draws its own mask.
//   accumulate = 1 adds into y (the gradient path: dx += mask · d(dropped x)).
// Work split: one invocation per element, 256 per workgroup, 2-D grid for large N.

struct Params {
  N: u32,
  p: f32,
  stream: u32,
  accumulate: u32,
}

//! include step

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;         // [N]
@group(0) @binding(2) var<storage, read> step: Step;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;   // [N]

const WG = 256u;

//! include pcg

@compute @workgroup_size(WG)
fn dropout(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * nwg.x * WG;
  if (i >= params.N) { return; }
  let seed = u32(step.seed);
  let r = pcg(pcg(seed ^ pcg(params.stream)) ^ i);
  let u = f32(r >> 8u) / 16777216.0;
  var v = 0.0;
  if (u >= params.p) { v = x[i] / (1.0 - params.p); }
  if (params.accumulate != 0u) { v += y[i]; }
  y[i] = v;
}
