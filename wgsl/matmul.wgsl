// matmul: C = A · Bᵀ, the product of a linear layer (y = x · Wᵀ).
//   A: [M, K] f32, row-major (activations: M = tokens)
//   B: [N, K] f32, row-major (weights in PyTorch's nn.Linear layout: N = out, K = in)
//   C: [M, N] f32, row-major
// Work split: one workgroup per 64×64 tile of C, 16×16 invocations, each owning a 4×4 block.
// K is walked 16 at a time through workgroup memory (8 KiB), loads coalesced along K.
// Shapes need not be multiples of the tile: out-of-range loads read 0, stores are skipped.

struct Params {
  M: u32,
  N: u32,
  K: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> A: array<f32>;        // [M, K]
@group(0) @binding(2) var<storage, read> B: array<f32>;        // [N, K]
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
  let M = params.M;
  let N = params.N;
  let K = params.K;
  let row0 = wg.y * TILE_M;
  let col0 = wg.x * TILE_N;
  var acc: array<f32, 16>;

  for (var k0 = 0u; k0 < K; k0 += TILE_K) {
    // 256 invocations load 4 × 256 = 1024 elements of each tile.
    for (var i = 0u; i < 4u; i++) {
      let e = li + i * WG * WG;
      let r = e / TILE_K;
      let kk = e % TILE_K;
      let gk = k0 + kk;
      var a = 0.0;
      if (row0 + r < M && gk < K) { a = A[(row0 + r) * K + gk]; }
      a_tile[kk * TILE_M + r] = a;
      var b = 0.0;
      if (col0 + r < N && gk < K) { b = B[(col0 + r) * K + gk]; }
      b_tile[kk * TILE_N + r] = b;
    }
    workgroupBarrier();
    for (var kk = 0u; kk < TILE_K; kk++) {
      let a4 = vec4f(a_tile[kk * TILE_M + lid.y * 4u], a_tile[kk * TILE_M + lid.y * 4u + 1u],
                     a_tile[kk * TILE_M + lid.y * 4u + 2u], a_tile[kk * TILE_M + lid.y * 4u + 3u]);
      let b4 = vec4f(b_tile[kk * TILE_N + lid.x * 4u], b_tile[kk * TILE_N + lid.x * 4u + 1u],
                     b_tile[kk * TILE_N + lid.x * 4u + 2u], b_tile[kk * TILE_N + lid.x * 4u + 3u]);
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
    if (r >= M) { break; }
    for (var j = 0u; j < 4u; j++) {
      let c = col0 + lid.x * 4u + j;
      if (c < N) { C[r * N + c] = acc[i * 4u + j]; }
    }
  }
}
