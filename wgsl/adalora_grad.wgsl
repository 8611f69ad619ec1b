// adalora_grad: the gradients of AdaLoRA's B and E from the gradient of the B the model read
// (eff_B = B · diag E, adalora_apply), in place in the flat gradient buffer:
//   dE[i] = Σ_o dEff[o, i] · B[o, i];   dB[o, i] = dEff[o, i] · E[i]
// (A's gradient needs nothing: the model's is already A's). Raw gradient sums, like the rest.
// Work split: a workgroup per (triplet i, module); 64 invocations over B's rows, then a tree sum.
// Each invocation rescales the rows it summed, so no other invocation's reads are disturbed.

struct Params {
  M: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> adalora_table: array<u32>;
@group(0) @binding(2) var<storage, read> lora: array<f32>;
@group(0) @binding(3) var<storage, read_write> grads: array<f32>;

//! include adalora

var<workgroup> red: array<f32, 64>;

@compute @workgroup_size(64)
fn adalora_grad(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  if (wg.y >= params.M) { return; }
  let d = wg.y * TABLE;
  let r = adalora_table[d + 2u];
  let i = wg.x;
  let live = i < r;
  var acc = 0.0;
  if (live) {
    for (var o = lid.x; o < adalora_table[d + 11u]; o += 64u) {
      let at = b_row(d, o, r) + i;
      acc += grads[at] * lora[at];
    }
  }
  red[lid.x] = acc;
  workgroupBarrier();
  for (var s = 32u; s > 0u; s >>= 1u) {
    if (lid.x < s) { red[lid.x] += red[lid.x + s]; }
    workgroupBarrier();
  }
  if (!live) { return; }
  let e = lora[adalora_table[d + 1u] + i];
  if (lid.x == 0u) { grads[adalora_table[d + 1u] + i] = red[0]; }
  for (var o = lid.x; o < adalora_table[d + 11u]; o += 64u) {
    let at = b_row(d, o, r) + i;
    grads[at] = grads[at] * e;
  }
}
