// ada_ipt: AdaLoRA's importance with its moving averages (PEFT's RankAllocator.update_ipt), after
// the optimizer step, over the whole flat adapter (A, E and B; padding stays 0):
//   ipt = |p · g| with g the step's gradient as the optimizer applied it (clip[1]: the mean-loss
//   scale times the clipping coefficient); ema ← β1 · ema + (1 − β1) · ipt;
//   unc ← β2 · unc + (1 − β2) · |ipt − ema|
// Only when ctl[0] is 1 (the host's schedule: before total_step − tfinal), and not on a halted
// step (clip[2]).
// Work split: one invocation per element, 256 per workgroup, 2-D grid for large N.

struct Params {
  N: u32,
  beta1: f32,
  beta2: f32,
  one_minus_beta1: f32,
  one_minus_beta2: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> lora: array<f32>;
@group(0) @binding(2) var<storage, read> grads: array<f32>;
@group(0) @binding(3) var<storage, read> clip: array<f32>;
@group(0) @binding(4) var<storage, read> ctl: array<u32>;   // [update, mode, k, _] (ada_mask)
@group(0) @binding(5) var<storage, read_write> ema: array<f32>;
@group(0) @binding(6) var<storage, read_write> unc: array<f32>;

const WG = 256u;

@compute @workgroup_size(WG)
fn ada_ipt(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * nwg.x * WG;
  if (i >= params.N || ctl[0] == 0u || clip[2] != 0.0) { return; }
  let ipt = abs(lora[i] * (grads[i] * clip[1]));
  let e = params.beta1 * ema[i] + params.one_minus_beta1 * ipt;
  ema[i] = e;
  unc[i] = params.beta2 * unc[i] + params.one_minus_beta2 * abs(ipt - e);
}
