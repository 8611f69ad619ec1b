// orth_sum: the orthogonality regulariser's value, c · Σ ‖G − I‖_F over every A and B (orth_grad's
// fro), into history[step.slot] (the step's `orth_reg`, reported beside the loss).
// Work split: one workgroup of 64.

struct Params {
  count: u32,
  c: f32,
}

//! include step

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> fro: array<f32>;
@group(0) @binding(2) var<storage, read> step: Step;
@group(0) @binding(3) var<storage, read_write> history: array<f32>;

var<workgroup> red: array<f32, 64>;

@compute @workgroup_size(64)
fn orth_sum(@builtin(local_invocation_id) lid: vec3u) {
  var acc = 0.0;
  for (var i = lid.x; i < params.count; i += 64u) { acc += fro[i]; }
  red[lid.x] = acc;
  workgroupBarrier();
  for (var s = 32u; s > 0u; s >>= 1u) {
    if (lid.x < s) { red[lid.x] += red[lid.x + s]; }
    workgroupBarrier();
  }
  if (lid.x == 0u) { history[u32(step.slot)] = params.c * red[0]; }
}
