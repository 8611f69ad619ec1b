// matmul: C = alpha · op(A) · op(B)ᵀ + beta · C, every product of the training step.
//   op(A): [M, K], element (m, k) at A[m * a_sm + k * a_sk]
//   op(B): [N, K], element (n, k) at B[n * b_sn + k * b_sk]
//   C:     [M, N] f32, row-major; beta = 0 overwrites (C is not read), beta = 1 accumulates.
//   B is float32, or float16 pairs with the pipeline constant B_F16 (frozen weights).
// Strides express the three products of a linear layer without copies:
//   forward  y  = x · Wᵀ   A = x [M,K] (K, 1),   B = W [N,K] (K, 1)
//   backward dx = dy · W   A = dy [M,N'] (N', 1), B = W [N',K] read as (1, K)
//   weights  dW = dyᵀ · x  A = dy read as (1, N), B = x read as (1, K)
// Work split: one workgroup per 128×128 tile of C, 16×16 invocations, each owning an 8×8 block
// (rows ty·4…+3 and 64+ty·4…+3, columns tx·4…+3 and 64+tx·4…+3) held in 16 vec4 registers.
// K is walked 8 at a time through workgroup memory (8 KiB) stored as vec4 along M and N, so
// the inner loop does 64 FMAs per 4 vector loads. Global loads run along whichever stride is 1
// (K for plain operands, M or N for transposed ones) so neighbouring invocations read
// neighbouring addresses. Out-of-range loads read 0 and stores are skipped: no size needs to
// be a multiple of the tile.
// Split K: with k_split < K, workgroup z sums k in [z·k_split, (z+1)·k_split) and writes its
// partial product to C + z·M·N (alpha applied, beta = 0); matmul_reduce.wgsl adds the partials.
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
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> A: array<f32>;        // op(A) [M, K]
@group(0) @binding(2) var<storage, read> B: array<u32>;        // op(B) [N, K]: f32 bits, or f16 pairs
@group(0) @binding(3) var<storage, read_write> C: array<f32>;  // [M, N]

const TILE_M = 128u;
const TILE_N = 128u;
const TILE_K = 8u;

var<workgroup> a_tile: array<vec4f, 256>;  // [TILE_K][TILE_M / 4]
var<workgroup> b_tile: array<vec4f, 256>;  // [TILE_K][TILE_N / 4]

fn load_a(m: u32, k: u32, k_end: u32) -> f32 {
  if (m < params.M && k < k_end) { return A[m * params.a_sm + k * params.a_sk]; }
  return 0.0;
}

// B_F16: B holds float16 values, two per u32 (frozen weights stored at half the memory; read
// with unpack2x16float, which needs no shader-f16 feature). Otherwise B is float32 bits.
override B_F16: bool = false;

fn load_b(n: u32, k: u32, k_end: u32) -> f32 {
  if (n >= params.N || k >= k_end) { return 0.0; }
  let e = n * params.b_sn + k * params.b_sk;
  if (B_F16) { return unpack2x16float(B[e / 2u])[e % 2u]; }
  return bitcast<f32>(B[e]);
}

fn store_row(r: u32, c: u32, left: vec4f, right: vec4f, z: u32) {
  if (r >= params.M) { return; }
  let base = z * params.M * params.N + r * params.N;
  for (var j = 0u; j < 4u; j++) {
    if (c + j < params.N) {
      var v = params.alpha * left[j];
      if (params.beta != 0.0) { v += params.beta * C[base + c + j]; }
      C[base + c + j] = v;
    }
    if (c + 64u + j < params.N) {
      var v = params.alpha * right[j];
      if (params.beta != 0.0) { v += params.beta * C[base + c + 64u + j]; }
      C[base + c + 64u + j] = v;
    }
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
  var c0 = vec4f(0.0); var c1 = vec4f(0.0);
  var c2 = vec4f(0.0); var c3 = vec4f(0.0);
  var c4 = vec4f(0.0); var c5 = vec4f(0.0);
  var c6 = vec4f(0.0); var c7 = vec4f(0.0);
  var c8 = vec4f(0.0); var c9 = vec4f(0.0);
  var c10 = vec4f(0.0); var c11 = vec4f(0.0);
  var c12 = vec4f(0.0); var c13 = vec4f(0.0);
  var c14 = vec4f(0.0); var c15 = vec4f(0.0);

  let k_begin = wg.z * params.k_split;
  let k_end = min(params.K, k_begin + params.k_split);
  for (var k0 = k_begin; k0 < k_end; k0 += TILE_K) {
    // Each of the 256 invocations stores one vec4 of each tile (4 rows at one k).
    let kk = li / 32u;        // 0..7
    let r4 = (li % 32u) * 4u;  // first of 4 rows (or columns)
    if (a_along_k) {
      // Read 4 consecutive k of one row instead: invocations (r, 0..1) cover a row's 8 k.
      let r = li / 2u;
      let kc = (li % 2u) * 4u;
      for (var j = 0u; j < 4u; j++) {
        a_tile[(kc + j) * 32u + r / 4u][r % 4u] = load_a(row0 + r, k0 + kc + j, k_end);
      }
    } else {
      a_tile[kk * 32u + r4 / 4u] = vec4f(load_a(row0 + r4, k0 + kk, k_end), load_a(row0 + r4 + 1u, k0 + kk, k_end),
                                         load_a(row0 + r4 + 2u, k0 + kk, k_end), load_a(row0 + r4 + 3u, k0 + kk, k_end));
    }
    if (b_along_k) {
      let r = li / 2u;
      let kc = (li % 2u) * 4u;
      for (var j = 0u; j < 4u; j++) {
        b_tile[(kc + j) * 32u + r / 4u][r % 4u] = load_b(col0 + r, k0 + kc + j, k_end);
      }
    } else {
      b_tile[kk * 32u + r4 / 4u] = vec4f(load_b(col0 + r4, k0 + kk, k_end), load_b(col0 + r4 + 1u, k0 + kk, k_end),
                                         load_b(col0 + r4 + 2u, k0 + kk, k_end), load_b(col0 + r4 + 3u, k0 + kk, k_end));
    }
    workgroupBarrier();
    for (var k = 0u; k < TILE_K; k++) {
      let a0 = a_tile[k * 32u + ty];
      let a1 = a_tile[k * 32u + 16u + ty];
      let b0 = b_tile[k * 32u + tx];
      let b1 = b_tile[k * 32u + 16u + tx];
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
