// matmul: C = alpha · op(A) · op(B)ᵀ + beta · C, every product of the training step.
//   op(A): [M, K], element (m, k) at A[m * a_sm + k * a_sk]
//   op(B): [N, K], element (n, k) at B[n * b_sn + k * b_sk]
//   C:     [M, N] f32, row-major; beta = 0 overwrites (C is not read), beta = 1 accumulates.
// Strides express the three products of a linear layer without copies:
//   forward  y  = x · Wᵀ   A = x [M,K] (K, 1),   B = W [N,K] (K, 1)
//   backward dx = dy · W   A = dy [M,N'] (N', 1), B = W [N',K] read as (1, K)
//   weights  dW = dyᵀ · x  A = dy read as (1, N), B = x read as (1, K)
// Work split: one workgroup per 64×64 tile of C, 16×16 invocations, each owning a 4×4 block.
// K is walked 16 at a time through workgroup memory (8 KiB). Out-of-range loads read 0 and
// out-of-range stores are skipped, so no size needs to be a multiple of the tile.

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
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> A: array<f32>;        // op(A) [M, K]
@group(0) @binding(2) var<storage, read> B: array<f32>;        // op(B) [N, K]
@group(0) @binding(3) var<storage, read_write> C: array<f32>;  // [M, N]

const TILE_M = 64u;
const TILE_N = 64u;
const TILE_K = 16u;
const WG = 16u;

var<workgroup> a_tile: array<f32, 1024>;  // [TILE_K][TILE_M]
var<workgroup> b_tile: array<f32, 1024>;  // [TILE_K][TILE_N]

@compute @workgroup_size(WG, WG)
fn matmul(@builtin(workgroup_id) wg: vec3u,
          @builtin(local_invocation_id) lid: vec3u,
          @builtin(local_invocation_index) li: u32) {
  let p = params;
  let row0 = wg.y * TILE_M;
  let col0 = wg.x * TILE_N;
  var acc: array<f32, 16>;

  for (var k0 = 0u; k0 < p.K; k0 += TILE_K) {
    // 256 invocations load 4 × 256 = 1024 elements of each tile.
    for (var i = 0u; i < 4u; i++) {
      let e = li + i * WG * WG;
      let r = e / TILE_K;
      let kk = e % TILE_K;
      let gk = k0 + kk;
      var a = 0.0;
      if (row0 + r < p.M && gk < p.K) { a = A[(row0 + r) * p.a_sm + gk * p.a_sk]; }
      a_tile[kk * TILE_M + r] = a;
      var b = 0.0;
      if (col0 + r < p.N && gk < p.K) { b = B[(col0 + r) * p.b_sn + gk * p.b_sk]; }
      b_tile[kk * TILE_N + r] = b;
    }
    workgroupBarrier();
    for (var kk = 0u; kk < TILE_K; kk++) {
      let ai = kk * TILE_M + lid.y * 4u;
      let bi = kk * TILE_N + lid.x * 4u;
      let a4 = vec4f(a_tile[ai], a_tile[ai + 1u], a_tile[ai + 2u], a_tile[ai + 3u]);
      let b4 = vec4f(b_tile[bi], b_tile[bi + 1u], b_tile[bi + 2u], b_tile[bi + 3u]);
      for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) {
          acc[i * 4u + j] = fma(a4[i], b4[j], acc[i * 4u + j]);
        }
      }
    }
    workgroupBarrier();
  }

  for (var i = 0u; i < 4u; i++) {
    let r = row0 + lid.y * 4u + i;
    if (r >= p.M) { break; }
    for (var j = 0u; j < 4u; j++) {
      let c = col0 + lid.x * 4u + j;
      if (c < p.N) {
        var v = p.alpha * acc[i * 4u + j];
        if (p.beta != 0.0) { v += p.beta * C[r * p.N + c]; }
        C[r * p.N + c] = v;
      }
    }
  }
}
