// orth_grad: the orthogonality regulariser's gradient added to A's and B's raw gradients, and
// each matrix's ‖G − I‖_F for the reported value (orth_sum):
//   f = ‖G − I‖_F (orth_gram's G);  reg = c · Σ f over every A and B, c = orth_reg_weight / (2M)
//   dA += c · 2 (G − I) · A / f;  dB += c · 2 B · (G − I) / f   (0 where f = 0, as torch's norm)
//   divided by step.grad_scale: the gradient buffers hold raw sums that the optimizer scales.
// Work split: grid (X, module, which): which 0 a workgroup per row i of A, its invocations along
// the row; which 1 a workgroup per 64 rows of B, an invocation per row.

struct Params {
  M: u32,
  R: u32,
  c: f32,
}

//! include step

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> adalora_table: array<u32>;
@group(0) @binding(2) var<storage, read> lora: array<f32>;
@group(0) @binding(3) var<storage, read> gram: array<f32>;
@group(0) @binding(4) var<storage, read> step: Step;
@group(0) @binding(5) var<storage, read_write> grads: array<f32>;
@group(0) @binding(6) var<storage, read_write> fro: array<f32>;   // [M, 2]

//! include adalora

var<workgroup> red: array<f32, 64>;

fn centred(g: u32, i: u32, j: u32) -> f32 {
  let v = gram[(g * params.R + i) * params.R + j];
  return select(v, v - 1.0, i == j);
}

@compute @workgroup_size(64)
fn orth_grad(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let m = wg.y;
  let d = m * TABLE;
  let r = adalora_table[d + 2u];
  let g = m * 2u + wg.z;
  var acc = 0.0;
  for (var e = lid.x; e < r * r; e += 64u) {
    let x = centred(g, e / r, e % r);
    acc += x * x;
  }
  red[lid.x] = acc;
  workgroupBarrier();
  for (var s = 32u; s > 0u; s >>= 1u) {
    if (lid.x < s) { red[lid.x] += red[lid.x + s]; }
    workgroupBarrier();
  }
  let f = sqrt(red[0]);
  if (wg.x == 0u && lid.x == 0u) { fro[g] = f; }
  if (f == 0.0) { return; }
  let coef = 2.0 * params.c / (f * step.grad_scale);
  if (wg.z == 0u) {
    let i = wg.x;
    if (i >= r) { return; }
    let a = adalora_table[d];
    let n = adalora_table[d + 3u];
    for (var k = lid.x; k < n; k += 64u) {
      var s = 0.0;
      for (var j = 0u; j < r; j++) { s += centred(g, i, j) * lora[a + j * n + k]; }
      grads[a + i * n + k] += coef * s;
    }
  } else {
    let o = wg.x * 64u + lid.x;
    if (o >= adalora_table[d + 11u]) { return; }
    let row = b_row(d, o, r);
    for (var j = 0u; j < r; j++) {
      var s = 0.0;
      for (var i = 0u; i < r; i++) { s += lora[row + i] * centred(g, i, j); }
      grads[row + j] += coef * s;
    }
  }
}
