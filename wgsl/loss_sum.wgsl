// loss_sum: adds a micro-batch's summed token losses into the step's slot of the loss history,
// so losses are read back every N steps instead of every step.
//   loss: [T] per-token losses (cross_entropy.wgsl), step.slot (include/step.wgsl)
//   history[slot] += Σ loss   (the host zeroes the history when it starts a new window and
//   divides by the step's target-token count when it reads it)
// Work split: one workgroup of 256 invocations.

struct Params {
  T: u32,
}

//! include step

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> loss: array<f32>;           // [T]
@group(0) @binding(2) var<storage, read> step: Step;
@group(0) @binding(3) var<storage, read_write> history: array<f32>;  // [window]

const WG = 256u;
var<workgroup> red: array<f32, WG>;

@compute @workgroup_size(WG)
fn loss_sum(@builtin(local_invocation_index) li: u32) {
  var s = 0.0;
  for (var i = li; i < params.T; i += WG) { s += loss[i]; }
  red[li] = s;
  workgroupBarrier();
  for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
    if (li < stride) { red[li] += red[li + stride]; }
    workgroupBarrier();
  }
  if (li == 0u) {
    let slot = u32(step.slot);
    history[slot] += red[0];
  }
}
