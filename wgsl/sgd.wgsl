// sgd: one plain SGD step with decoupled-free weight decay (torch.optim.SGD, no momentum):
//   g ← grad · clip[1] + wd · p;  p ← p − lr · g   (clip[1]: mean-loss scale × clip coefficient)
//   step.lr (include/step.wgsl) written by the host; clip: [norm, coefficient, halted] from
//   grad_clip.wgsl; last_good as in adamw.wgsl.
// Work split: one invocation per element, 256 per workgroup, 2-D grid for large N.

struct Params {
  N: u32,
  weight_decay: f32,
}

//! include step

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> grad: array<f32>;         // [N]
@group(0) @binding(2) var<storage, read> step: Step;
@group(0) @binding(3) var<storage, read> clip: array<f32>;         // [norm, coefficient, halted]
@group(0) @binding(4) var<storage, read_write> param: array<f32>;  // [N]
@group(0) @binding(5) var<storage, read_write> last_good: array<f32>;  // [N]

const WG = 256u;

@compute @workgroup_size(WG)
fn sgd(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * nwg.x * WG;
  if (i >= params.N) { return; }
  if (clip[2] != 0.0) {
    param[i] = last_good[i];
    return;
  }
  let p = param[i];
  last_good[i] = p;
  let g = grad[i] * clip[1] + params.weight_decay * p;
  param[i] = p - step.lr * g;
}
