// adamw: one AdamW step over a flat parameter buffer (torch.optim.AdamW semantics).
//   g ← grad · clip[1]   (clip = [norm, factor] from grad_clip.wgsl: the mean-loss scale times
//   the clipping coefficient)
//   p ← p − lr · wd · p;  m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²
//   p ← p − (lr / bc1) · m / (sqrt(v) / sqrt(bc2) + eps)
//   step: Step (include/step.wgsl): lr, bc1, bc2 written by the host each step (bc = 1 − β^t), so the uniform stays fixed.
//   param, m, v: [N] updated in place; grad: [N].
//   last_good: [N] ← param before the update, the adapter whose loss this step found finite; once
//   clip[2] (halted: a loss or norm that was not finite) is set, param ← last_good and nothing steps.
// Work split: one invocation per element, 256 per workgroup, 2-D grid for large N.

struct Params {
  N: u32,
  beta1: f32,
  beta2: f32,
  one_minus_beta1: f32,  // 1 − β computed in double on the host, as torch does: f32(1) − f32(β)
  one_minus_beta2: f32,  // would be off by up to 1e-5 relative for β2 = 0.999
  eps: f32,
  weight_decay: f32,
}

//! include step

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> grad: array<f32>;         // [N]
@group(0) @binding(2) var<storage, read> step: Step;
@group(0) @binding(3) var<storage, read> clip: array<f32>;         // [norm, coefficient, halted]
@group(0) @binding(4) var<storage, read_write> param: array<f32>;  // [N]
@group(0) @binding(5) var<storage, read_write> m: array<f32>;      // [N]
@group(0) @binding(6) var<storage, read_write> v: array<f32>;      // [N]
@group(0) @binding(7) var<storage, read_write> last_good: array<f32>;  // [N]

const WG = 256u;

@compute @workgroup_size(WG)
fn adamw(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * nwg.x * WG;
  if (i >= params.N) { return; }
  if (clip[2] != 0.0) {
    param[i] = last_good[i];
    return;
  }
  let lr = step.lr;
  let g = grad[i] * clip[1];
  last_good[i] = param[i];
  var p = param[i] * (1.0 - lr * params.weight_decay);
  let mi = params.beta1 * m[i] + params.one_minus_beta1 * g;
  let vi = params.beta2 * v[i] + params.one_minus_beta2 * g * g;
  m[i] = mi;
  v[i] = vi;
  p -= (lr / step.bc1) * mi / (sqrt(vi) / sqrt(step.bc2) + params.eps);
  param[i] = p;
}
