// ada_kth: the budget's threshold, the k-th smallest triplet score (torch.kthvalue, k = ctl[2] =
// the triplets to prune): the score x with #(s < x) < k ≤ #(s ≤ x) (equal scores write the same
// value). On budget steps (ctl[1] == 1) with k > 0.
// Work split: an invocation per candidate score, 64 per workgroup; each counts over all N.

struct Params {
  N: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> scores: array<f32>;
@group(0) @binding(2) var<storage, read> ctl: array<u32>;
@group(0) @binding(3) var<storage, read_write> threshold: array<f32>;

@compute @workgroup_size(64)
fn ada_kth(@builtin(global_invocation_id) gid: vec3u) {
  let c = gid.x;
  let k = ctl[2];
  if (c >= params.N || ctl[1] != 1u || k == 0u) { return; }
  let x = scores[c];
  var less = 0u;
  var at_most = 0u;
  for (var t = 0u; t < params.N; t++) {
    let s = scores[t];
    less += select(0u, 1u, s < x);
    at_most += select(0u, 1u, s <= x);
  }
  if (less < k && k <= at_most) { threshold[0] = x; }
}
