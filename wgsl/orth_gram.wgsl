// orth_gram: the Gram matrices of AdaLoRA's orthogonality regulariser (PEFT's AdaLoraModel.forward):
//   which 0: G = A · Aᵀ (A [r, in]);  which 1: G = Bᵀ · B (B [rows, r], over all of its parts)
//   gram[((m · 2 + which) · R + i) · R + j] = G[i, j] for i, j < r (R: the largest rank).
// Work split: a workgroup per (entry i · R + j, module, which); 64 invocations along the sum.

struct Params {
  M: u32,
  R: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> adalora_table: array<u32>;
@group(0) @binding(2) var<storage, read> lora: array<f32>;
@group(0) @binding(3) var<storage, read_write> gram: array<f32>;

//! include adalora

var<workgroup> red: array<f32, 64>;

@compute @workgroup_size(64)
fn orth_gram(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let m = wg.y;
  let d = m * TABLE;
  let r = adalora_table[d + 2u];
  let i = wg.x / params.R;
  let j = wg.x % params.R;
  let live = i < r && j < r;
  var acc = 0.0;
  if (live) {
    if (wg.z == 0u) {
      let a = adalora_table[d];
      let n = adalora_table[d + 3u];
      for (var k = lid.x; k < n; k += 64u) { acc += lora[a + i * n + k] * lora[a + j * n + k]; }
    } else {
      for (var o = lid.x; o < adalora_table[d + 11u]; o += 64u) {
        let row = b_row(d, o, r);
        acc += lora[row + i] * lora[row + j];
      }
    }
  }
  red[lid.x] = acc;
  workgroupBarrier();
  for (var s = 32u; s > 0u; s >>= 1u) {
    if (lid.x < s) { red[lid.x] += red[lid.x + s]; }
    workgroupBarrier();
  }
  if (live && lid.x == 0u) { gram[((m * 2u + wg.z) * params.R + i) * params.R + j] = red[0]; }
}
