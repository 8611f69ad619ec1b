// matmul_f16: matmul.wgsl's products (the same Params, operands, strides, blocks, second
// product and K splits) with float16 arithmetic, for adapters with shader-f16 (--precision
// mixed): the tiles sit in workgroup memory as float16, the products run as float16 fused
// multiply-adds (two per instruction where the GPU pairs them) summed over each 16-wide step of
// K, and those partial sums are added into float32 accumulators, so rounding does not grow with K.
// Operands and C stay float32 in memory; values beyond float16's range (±65504) do not belong here.
// Work split as matmul.wgsl: 128×128 tiles of C, 16×16 invocations with 8×8 outputs each.

enable f16;

struct Params {
  M: u32,
  N: u32,
  K: u32,
  a_sm: u32,
  a_sk: u32,
  b_sn: u32,
  b_sk: u32,
  alpha: f32,
  beta: f32,
  k_split: u32,
  c_sz: u32,  // floats between the splits' outputs
  K2: u32,
  a2_sm: u32,
  a2_sk: u32,
  b2_sn: u32,
  b2_sk: u32,
  rel2: f32,  // the second product's scale over alpha
  c_in: u32,  // 1: beta · C_in (else beta · C)
  // Fused projections (q, k and v as one product), up to three blocks each:
  seg_n1: u32,  // C's columns in blocks [0, seg_n1), [seg_n1, seg_n2), [seg_n2, N), each
  seg_n2: u32,  //   its own row-major [M, width] after the one before (seg_n1 = N: no blocks)
  seg_k1: u32,  // A's K likewise: blocks [M, width] one after the other, read along K
  seg_k2: u32,  //   (seg_k1 = K: no blocks)
  r2: u32,      // the second product in blocks of r2 k (0: one block): block g of A2 is at
  a2_blk: u32,  //   A2 + g · a2_blk, of B2 at B2 + b2_off[g]; with b2_diag, B2's block g only
  b2_off0: u32, //   meets C's column block g (n counted from the block's start)
  b2_off1: u32,
  b2_off2: u32,
  b2_diag: u32,
  b_scales: u32,  // a quantized B (Q_BITS > 0, include/qweight.wgsl): the word where its group heads
  b_groups: u32,  //   start, and how many groups it has
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> A: array<f32>;        // op(A) [M, K]
@group(0) @binding(2) var<storage, read> B: array<u32>;        // op(B) [N, K]: f32 bits, or f16 pairs
@group(0) @binding(3) var<storage, read> A2: array<f32>;       // op(A2) [M, K2] (K2 = 0: unused)
@group(0) @binding(4) var<storage, read> B2: array<f32>;       // op(B2) [N, K2]
@group(0) @binding(5) var<storage, read> C_in: array<f32>;     // [M, N] (c_in = 1)
@group(0) @binding(6) var<storage, read_write> C: array<f32>;  // [M, N]

const TILE_M = 128u;
const TILE_N = 128u;
const TILE_K = 16u;

var<workgroup> a_tile: array<vec4<f16>, 512>;  // [TILE_K][TILE_M / 4]
var<workgroup> b_tile: array<vec4<f16>, 512>;  // [TILE_K][TILE_N / 4]

//! include qweight
//! include matmul_io

fn store_a(li: u32, v: Part, along_k: bool) {
  if (along_k) {
    let k = li % 16u;
    a_tile[slot(li / 16u, k)] = vec4<f16>(v.lo);
    a_tile[slot(16u + li / 16u, k)] = vec4<f16>(v.hi);
  } else {
    let k = li / 32u;
    a_tile[slot(li % 32u, k)] = vec4<f16>(v.lo);
    a_tile[slot(li % 32u, k + 8u)] = vec4<f16>(v.hi);
  }
}

fn store_b(li: u32, v: Part, along_k: bool) {
  if (along_k) {
    let k = li % 16u;
    b_tile[slot(li / 16u, k)] = vec4<f16>(v.lo);
    b_tile[slot(16u + li / 16u, k)] = vec4<f16>(v.hi);
  } else {
    let k = li / 32u;
    b_tile[slot(li % 32u, k)] = vec4<f16>(v.lo);
    b_tile[slot(li % 32u, k + 8u)] = vec4<f16>(v.hi);
  }
}

@compute @workgroup_size(16, 16)
fn matmul_f16(@builtin(workgroup_id) wg: vec3u,
          @builtin(local_invocation_id) lid: vec3u,
          @builtin(local_invocation_index) li: u32) {
  let tx = lid.x;
  let ty = lid.y;
  let row0 = wg.y * TILE_M;
  let col0 = wg.x * TILE_N;
  let a_along_k = params.a_sk == 1u;
  let b_along_k = params.b_sk == 1u;
  let half_n = col0 + 64u >= params.N;  // N = 576 is 4.5 tiles: the last does half the work
  var c0 = vec4f(0.0); var c1 = vec4f(0.0);
  var c2 = vec4f(0.0); var c3 = vec4f(0.0);
  var c4 = vec4f(0.0); var c5 = vec4f(0.0);
  var c6 = vec4f(0.0); var c7 = vec4f(0.0);
  var c8 = vec4f(0.0); var c9 = vec4f(0.0);
  var c10 = vec4f(0.0); var c11 = vec4f(0.0);
  var c12 = vec4f(0.0); var c13 = vec4f(0.0);
  var c14 = vec4f(0.0); var c15 = vec4f(0.0);

  let k_begin = wg.z * params.k_split;
  let k_end = max(k_begin, min(params.K, k_begin + params.k_split));  // a split past K sums nothing
  // Tiles 0 … tiles1 − 1 walk this split's K; then (first split only) tiles of the second
  // product, A2 · B2ᵀ, accumulate into the same registers (LoRA's s · u · Bᵀ after x · Wᵀ).
  let tiles1 = (k_end - k_begin + TILE_K - 1u) / TILE_K;
  let tiles = tiles1 + select(0u, (params.K2 + TILE_K - 1u) / TILE_K, wg.z == 0u);
  let a2_along_k = params.a2_sk == 1u;
  let b2_along_k = params.b2_sk == 1u;
  // The next tile's values are read from global memory into registers while this tile's
  // products run, so the loads' latency hides behind the arithmetic.
  var next_a = tile_a(li, row0, k_begin, k_end, a_along_k, tiles1 == 0u);
  var next_b = tile_b(li, col0, k_begin, k_end, b_along_k, tiles1 == 0u);
  if (tiles1 == 0u) {
    next_a = tile_a(li, row0, 0u, params.K2, a2_along_k, true);
    next_b = tile_b(li, col0, 0u, params.K2, b2_along_k, true);
  }
  for (var t = 0u; t < tiles; t++) {
    let second = t >= tiles1;
    store_a(li, next_a, select(a_along_k, a2_along_k, second));
    store_b(li, next_b, select(b_along_k, b2_along_k, second));
    workgroupBarrier();
    let u = t + 1u;
    if (u < tiles1) {
      next_a = tile_a(li, row0, k_begin + u * TILE_K, k_end, a_along_k, false);
      next_b = tile_b(li, col0, k_begin + u * TILE_K, k_end, b_along_k, false);
    } else if (u < tiles) {
      next_a = tile_a(li, row0, (u - tiles1) * TILE_K, params.K2, a2_along_k, true);
      next_b = tile_b(li, col0, (u - tiles1) * TILE_K, params.K2, b2_along_k, true);
    }
    var h0 = vec4<f16>(0.0); var h1 = vec4<f16>(0.0);
    var h2 = vec4<f16>(0.0); var h3 = vec4<f16>(0.0);
    var h4 = vec4<f16>(0.0); var h5 = vec4<f16>(0.0);
    var h6 = vec4<f16>(0.0); var h7 = vec4<f16>(0.0);
    var h8 = vec4<f16>(0.0); var h9 = vec4<f16>(0.0);
    var h10 = vec4<f16>(0.0); var h11 = vec4<f16>(0.0);
    var h12 = vec4<f16>(0.0); var h13 = vec4<f16>(0.0);
    var h14 = vec4<f16>(0.0); var h15 = vec4<f16>(0.0);
    if (half_n) {  // the right half of the tile is past N: its products would all be 0
      for (var k = 0u; k < TILE_K; k++) {
        let a0 = a_tile[slot(ty, k)];
        let a1 = a_tile[slot(16u + ty, k)];
        let b0 = b_tile[slot(tx, k)];
        h0 += a0.x * b0; h2 += a0.y * b0; h4 += a0.z * b0; h6 += a0.w * b0;
        h8 += a1.x * b0; h10 += a1.y * b0; h12 += a1.z * b0; h14 += a1.w * b0;
      }
    } else {
      for (var k = 0u; k < TILE_K; k++) {
        let a0 = a_tile[slot(ty, k)];
        let a1 = a_tile[slot(16u + ty, k)];
        let b0 = b_tile[slot(tx, k)];
        let b1 = b_tile[slot(16u + tx, k)];
        h0 += a0.x * b0; h1 += a0.x * b1;
        h2 += a0.y * b0; h3 += a0.y * b1;
        h4 += a0.z * b0; h5 += a0.z * b1;
        h6 += a0.w * b0; h7 += a0.w * b1;
        h8 += a1.x * b0; h9 += a1.x * b1;
        h10 += a1.y * b0; h11 += a1.y * b1;
        h12 += a1.z * b0; h13 += a1.z * b1;
        h14 += a1.w * b0; h15 += a1.w * b1;
      }
    }
    c0 += vec4f(h0); c1 += vec4f(h1); c2 += vec4f(h2); c3 += vec4f(h3);
    c4 += vec4f(h4); c5 += vec4f(h5); c6 += vec4f(h6); c7 += vec4f(h7);
    c8 += vec4f(h8); c9 += vec4f(h9); c10 += vec4f(h10); c11 += vec4f(h11);
    c12 += vec4f(h12); c13 += vec4f(h13); c14 += vec4f(h14); c15 += vec4f(h15);
    workgroupBarrier();
  }

  store_row(row0 + ty * 4u, col0 + tx * 4u, c0, c1, wg.z);
  store_row(row0 + ty * 4u + 1u, col0 + tx * 4u, c2, c3, wg.z);
  store_row(row0 + ty * 4u + 2u, col0 + tx * 4u, c4, c5, wg.z);
  store_row(row0 + ty * 4u + 3u, col0 + tx * 4u, c6, c7, wg.z);
  store_row(row0 + 64u + ty * 4u, col0 + tx * 4u, c8, c9, wg.z);
  store_row(row0 + 64u + ty * 4u + 1u, col0 + tx * 4u, c10, c11, wg.z);
  store_row(row0 + 64u + ty * 4u + 2u, col0 + tx * 4u, c12, c13, wg.z);
  store_row(row0 + 64u + ty * 4u + 3u, col0 + tx * 4u, c14, c15, wg.z);
}
