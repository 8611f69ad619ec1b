// adalora_apply: AdaLoRA's singular values folded into the up-projection the model reads:
//   eff_B[o, i] = B[o, i] · E[i] for every module (x · (A ∘ E)ᵀ · Bᵀ = x · Aᵀ · (B · diag E)ᵀ),
// so the forward and backward passes run as plain LoRA over (A, eff_B); adalora_grad maps the
// gradients back to B and E.
//   lora: the flat parameters; eff: a buffer of the same layout (only the B regions written).
// Work split: a workgroup per (triplet i, module), its 64 invocations over B's rows.

struct Params {
  M: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> adalora_table: array<u32>;
@group(0) @binding(2) var<storage, read> lora: array<f32>;
@group(0) @binding(3) var<storage, read_write> eff: array<f32>;

//! include adalora

@compute @workgroup_size(64)
fn adalora_apply(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  if (wg.y >= params.M) { return; }
  let d = wg.y * TABLE;
  let r = adalora_table[d + 2u];
  let i = wg.x;
  if (i >= r) { return; }
  let e = lora[adalora_table[d + 1u] + i];
  for (var o = lid.x; o < adalora_table[d + 11u]; o += 64u) {
    let at = b_row(d, o, r) + i;
    eff[at] = lora[at] * e;
  }
}
