// matmul: C = alpha · op(A) · op(B)ᵀ + beta · C, every product of the training step.
//   op(A): [M, K], element (m, k) at A[m * a_sm + k * a_sk]
//   op(B): [N, K], element (n, k) at B[n * b_sn + k * b_sk]
//   C:     [M, N] f32, row-major; beta = 0 overwrites (C is not read), beta = 1 accumulates;
//          with c_in = 1 the beta term reads C_in instead (y = residual + x·Wᵀ without a copy).
//   B is float32, float16 pairs with the pipeline constant B_F16, or quantized with Q_BITS > 0
//   (frozen weights; include/qweight.wgsl).
// Strides express the three products of a linear layer without copies:
//   forward  y  = x · Wᵀ   A = x [M,K] (K, 1),   B = W [N,K] (K, 1)
//   backward dx = dy · W   A = dy [M,N'] (N', 1), B = W [N',K] read as (1, K)
//   weights  dW = dyᵀ · x  A = dy read as (1, N), B = x read as (1, K)
// Work split: one workgroup per 128×128 tile of C, 16×16 invocations, each owning an 8×8 block
// (rows ty·4…+3 and 64+ty·4…+3, columns tx·4…+3 and 64+tx·4…+3) held in 16 vec4 registers.
// K is walked 16 at a time through workgroup memory (16 KiB) stored as vec4 along M and N, so
// the inner loop does 64 FMAs per 4 vector loads; the next 16 are read into registers meanwhile. Global loads run along whichever stride is 1
// (K for plain operands, M or N for transposed ones) so neighbouring invocations read
// neighbouring addresses. Out-of-range loads read 0 and stores are skipped: no size needs to
// be a multiple of the tile.
// A second product: with K2 > 0, C = alpha · (op(A) · op(B)ᵀ + rel2 · op(A2) · op(B2)ᵀ) + beta · C,
// both summed in the same registers (LoRA's up-projection rides on the frozen weight's product
// instead of a second pass over C).
// Split K: with k_split < K, workgroup z sums k in [z·k_split, (z+1)·k_split) and writes its
// partial product to C + z·c_sz (c_sz = M·N into scratch, alpha = 1 and beta = 0, for
// matmul_reduce.wgsl to add; or each split's own slice of LoRA's gradients, accumulated with
// beta, summed once after the backward pass).
// Products with few output tiles and a long K (LoRA's gradients, K = tokens) need this to
// fill the GPU.

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

var<workgroup> a_tile: array<vec4f, 512>;  // [TILE_K][TILE_M / 4]
var<workgroup> b_tile: array<vec4f, 512>;  // [TILE_K][TILE_N / 4]

//! include qweight
//! include matmul_io

fn store_a(li: u32, v: Part, along_k: bool) {
  if (along_k) {
    let k = li % 16u;
    a_tile[slot(li / 16u, k)] = v.lo;
    a_tile[slot(16u + li / 16u, k)] = v.hi;
  } else {
    let k = li / 32u;
    a_tile[slot(li % 32u, k)] = v.lo;
    a_tile[slot(li % 32u, k + 8u)] = v.hi;
  }
}

fn store_b(li: u32, v: Part, along_k: bool) {
  if (along_k) {
    let k = li % 16u;
    b_tile[slot(li / 16u, k)] = v.lo;
    b_tile[slot(16u + li / 16u, k)] = v.hi;
  } else {
    let k = li / 32u;
    b_tile[slot(li % 32u, k)] = v.lo;
    b_tile[slot(li % 32u, k + 8u)] = v.hi;
  }
}

@compute @workgroup_size(16, 16)
fn matmul(@builtin(workgroup_id) wg: vec3u,
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
    if (half_n) {  // the right half of the tile is past N: its products would all be 0
      for (var k = 0u; k < TILE_K; k++) {
        let a0 = a_tile[slot(ty, k)];
        let a1 = a_tile[slot(16u + ty, k)];
        let b0 = b_tile[slot(tx, k)];
        c0 += a0.x * b0; c2 += a0.y * b0; c4 += a0.z * b0; c6 += a0.w * b0;
        c8 += a1.x * b0; c10 += a1.y * b0; c12 += a1.z * b0; c14 += a1.w * b0;
      }
      workgroupBarrier();
      continue;
    }
    for (var k = 0u; k < TILE_K; k++) {
      let a0 = a_tile[slot(ty, k)];
      let a1 = a_tile[slot(16u + ty, k)];
      let b0 = b_tile[slot(tx, k)];
      let b1 = b_tile[slot(16u + tx, k)];
      c0 += a0.x * b0; c1 += a0.x * b1;
      c2 += a0.y * b0; c3 += a0.y * b1;
      c4 += a0.z * b0; c5 += a0.z * b1;
      c6 += a0.w * b0; c7 += a0.w * b1;
      c8 += a1.x * b0; c9 += a1.x * b1;
      c10 += a1.y * b0; c11 += a1.y * b1;
      c12 += a1.z * b0; c13 += a1.z * b1;
      c14 += a1.w * b0; c15 += a1.w * b1;
    }
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
