// matmul_reduce: C = alpha · Σ_z partial[z] + beta · C, finishing a split-K matmul.
//   partial: [splits, M·N] (matmul.wgsl's per-split products), C: [M·N]; with c_in = 1 the
//   beta term reads C_in instead of C (as matmul.wgsl).
// Work split: 256 invocations per workgroup, `ways` (a power of two ≤ 256) per element of C:
// invocation g of an element adds splits g, g + ways, …, then the ways' sums are added in
// workgroup memory. Small products with many splits (LoRA's gradients) then have enough
// invocations to keep the loads in flight; large ones use ways = 1. Neighbouring invocations
// take neighbouring elements, so every load is coalesced, and the order of the additions is
// fixed, so results are deterministic. 2-D grid for large M·N.

struct Params {
  MN: u32,
  splits: u32,
  ways: u32,
  alpha: f32,
  beta: f32,
  c_in: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> partial: array<f32>;  // [splits, M·N]
@group(0) @binding(2) var<storage, read> C_in: array<f32>;     // [M·N] (c_in = 1)
@group(0) @binding(3) var<storage, read_write> C: array<f32>;  // [M·N]

const WG = 256u;

var<workgroup> sums: array<f32, WG>;

@compute @workgroup_size(WG)
fn matmul_reduce(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u,
                 @builtin(local_invocation_index) li: u32) {
  let p = params;
  let per_group = WG / p.ways;  // elements per workgroup
  let way = li / per_group;
  let i = (wg.x + wg.y * nwg.x) * per_group + li % per_group;
  var s = 0.0;
  if (i < p.MN) {
    for (var z = way; z < p.splits; z += p.ways) { s += partial[z * p.MN + i]; }
  }
  if (p.ways == 1u) {
    if (i < p.MN) {
      var v = p.alpha * s;
      if (p.beta != 0.0) { v += p.beta * select(C[i], C_in[i], p.c_in != 0u); }
      C[i] = v;
    }
    return;
  }
  sums[li] = s;
  workgroupBarrier();
  if (way == 0u && i < p.MN) {
    var total = 0.0;
    for (var g = 0u; g < p.ways; g++) { total += sums[g * per_group + li % per_group]; }
    var v = p.alpha * total;
    if (p.beta != 0.0) { v += p.beta * select(C[i], C_in[i], p.c_in != 0u); }
    C[i] = v;
  }
}
