// ada_score: each triplet's importance (PEFT's RankAllocator.mask_to_budget), s = ema · unc per
// element: score[i] = s(E[i]) + (mean_k s(A[i, k]) + mean_o s(B[o, i])), on budget steps
// (ctl[1] == 1).
// Work split: a workgroup per (triplet i, module); 64 invocations along A's row, then B's column.

struct Params {
  M: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> adalora_table: array<u32>;
@group(0) @binding(2) var<storage, read> ema: array<f32>;
@group(0) @binding(3) var<storage, read> unc: array<f32>;
@group(0) @binding(4) var<storage, read> ctl: array<u32>;
@group(0) @binding(5) var<storage, read_write> scores: array<f32>;

//! include adalora

var<workgroup> red: array<f32, 128>;

@compute @workgroup_size(64)
fn ada_score(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  if (wg.y >= params.M) { return; }
  let d = wg.y * TABLE;
  let r = adalora_table[d + 2u];
  let i = wg.x;
  let live = i < r && ctl[1] == 1u;
  var sa = 0.0;
  var sb = 0.0;
  if (live) {
    let a = adalora_table[d];
    let n = adalora_table[d + 3u];
    for (var k = lid.x; k < n; k += 64u) { sa += ema[a + i * n + k] * unc[a + i * n + k]; }
    for (var o = lid.x; o < adalora_table[d + 11u]; o += 64u) {
      let at = b_row(d, o, r) + i;
      sb += ema[at] * unc[at];
    }
  }
  red[lid.x] = sa;
  red[64u + lid.x] = sb;
  workgroupBarrier();
  for (var s = 32u; s > 0u; s >>= 1u) {
    if (lid.x < s) {
      red[lid.x] += red[lid.x + s];
      red[64u + lid.x] += red[64u + lid.x + s];
    }
    workgroupBarrier();
  }
  if (live && lid.x == 0u) {
    let e = adalora_table[d + 1u] + i;
    let mean_ab = red[0] / f32(adalora_table[d + 3u]) + red[64] / f32(adalora_table[d + 11u]);
    scores[adalora_table[d + 10u] + i] = ema[e] * unc[e] + mean_ab;
  }
}
