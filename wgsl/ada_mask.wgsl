// ada_mask: AdaLoRA's pruning of singular values (PEFT's mask_to_budget and
// mask_using_rank_pattern): ctl[1] == 1 (a budget step): keep[t] = k == 0 or score[t] > threshold,
// stored in mask; ctl[1] == 2 (after the budget phase): keep[t] = mask[t]. E[i] ← 0 where not kept.
// Work split: an invocation per triplet of a module, grid (⌈R / 64⌉, module).

struct Params {
  M: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> adalora_table: array<u32>;
@group(0) @binding(2) var<storage, read> scores: array<f32>;
@group(0) @binding(3) var<storage, read> threshold: array<f32>;
@group(0) @binding(4) var<storage, read> ctl: array<u32>;
@group(0) @binding(5) var<storage, read_write> mask: array<f32>;
@group(0) @binding(6) var<storage, read_write> lora: array<f32>;

//! include adalora

@compute @workgroup_size(64)
fn ada_mask(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  if (wg.y >= params.M) { return; }
  let d = wg.y * TABLE;
  let i = wg.x * 64u + lid.x;
  let mode = ctl[1];
  if (i >= adalora_table[d + 2u] || mode == 0u) { return; }
  let t = adalora_table[d + 10u] + i;
  var keep = mask[t] != 0.0;
  if (mode == 1u) {
    keep = ctl[2] == 0u || scores[t] > threshold[0];
    mask[t] = select(0.0, 1.0, keep);
  }
  if (!keep) { lora[adalora_table[d + 1u] + i] = 0.0; }
}
