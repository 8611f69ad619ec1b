// matmul_thin: C = alpha · op(A) · op(B)ᵀ + beta · C for products with at most 16 rows: LoRA's
// rank-sized products (x·Aᵀ as (A·xᵀ)ᵀ, dA = duᵀ·x, dB = (u ᵀ·dy)ᵀ), where matmul.wgsl's
// 128-row tiles would compute 8× more than they keep.
//   op(A): [M ≤ 16, K], element (m, k) at A[m * a_sm + k * a_sk]
//   op(B): [N, K], element (n, k) at B[n * b_sn + k * b_sk]
//   C: element (m, n) at C[m * c_sm + n * c_sn] (c_sm = 1, c_sn = M writes the transpose)
// Work split: one workgroup per 16×128 tile of C, 256 invocations, each owning 2 rows × 4
// columns; K is walked 16 at a time through workgroup memory (9 KiB). Split K as in matmul.wgsl:
// workgroup z sums k in [z·k_split, …) into C + z·M·N (in C's layout), matmul_reduce adds them.

struct Params {
  M: u32,
  N: u32,
  K: u32,
  a_sm: u32,
  a_sk: u32,
  b_sn: u32,
  b_sk: u32,
  c_sm: u32,
  c_sn: u32,
  alpha: f32,
  beta: f32,
  k_split: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> A: array<u32>;        // op(A) [M, K]: f32 bits or f16 pairs
@group(0) @binding(2) var<storage, read> B: array<u32>;        // op(B) [N, K]: f32 bits or f16 pairs
@group(0) @binding(3) var<storage, read_write> C: array<f32>;  // [M, N] (strided)

// A_F16 / B_F16: the operand holds float16 pairs (frozen weights), read with unpack2x16float.
override A_F16: bool = false;
override B_F16: bool = false;

fn read_a(e: u32) -> f32 {
  if (A_F16) { return unpack2x16float(A[e / 2u])[e % 2u]; }
  return bitcast<f32>(A[e]);
}

fn read_b(e: u32) -> f32 {
  if (B_F16) { return unpack2x16float(B[e / 2u])[e % 2u]; }
  return bitcast<f32>(B[e]);
}

const TILE_M = 16u;
const TILE_N = 128u;
const TILE_K = 16u;

var<workgroup> a_tile: array<f32, 256>;    // [TILE_K][TILE_M]
var<workgroup> b_tile: array<vec4f, 512>;  // [TILE_K][TILE_N / 4]

@compute @workgroup_size(256)
fn matmul_thin(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) li: u32) {
  let p = params;
  let col0 = wg.x * TILE_N;
  let tx = li % 32u;  // columns tx·4 … tx·4+3
  let ty = li / 32u;  // rows ty·2, ty·2+1
  let k_begin = wg.z * p.k_split;
  let k_end = min(p.K, k_begin + p.k_split);
  var acc0 = vec4f(0.0);
  var acc1 = vec4f(0.0);
  for (var k0 = k_begin; k0 < k_end; k0 += TILE_K) {
    // A: 16 × 16 values, one per invocation, read along whichever stride is 1.
    var am = li / TILE_K;
    var ak = li % TILE_K;
    if (p.a_sk != 1u) { am = li % TILE_M; ak = li / TILE_M; }
    var a = 0.0;
    if (am < p.M && k0 + ak < k_end) { a = read_a(am * p.a_sm + (k0 + ak) * p.a_sk); }
    a_tile[ak * TILE_M + am] = a;
    // B: 128 × 16 values, eight per invocation.
    for (var e = 0u; e < 8u; e++) {
      let idx = li + e * 256u;
      var n = idx / TILE_K;
      var kk = idx % TILE_K;
      if (p.b_sk != 1u) { n = idx % TILE_N; kk = idx / TILE_N; }
      var b = 0.0;
      if (col0 + n < p.N && k0 + kk < k_end) { b = read_b((col0 + n) * p.b_sn + (k0 + kk) * p.b_sk); }
      b_tile[kk * 32u + n / 4u][n % 4u] = b;
    }
    workgroupBarrier();
    for (var kk = 0u; kk < TILE_K; kk++) {
      let b4 = b_tile[kk * 32u + tx];
      acc0 += a_tile[kk * TILE_M + ty * 2u] * b4;
      acc1 += a_tile[kk * TILE_M + ty * 2u + 1u] * b4;
    }
    workgroupBarrier();
  }
  let split = p.k_split < p.K;
  for (var r = 0u; r < 2u; r++) {
    let m = ty * 2u + r;
    if (m >= p.M) { continue; }
    var row = acc0;
    if (r == 1u) { row = acc1; }
    for (var j = 0u; j < 4u; j++) {
      let n = col0 + tx * 4u + j;
      if (n >= p.N) { continue; }
      let at = m * p.c_sm + n * p.c_sn;  // a permutation of [0, M·N): partials use it too
      if (split) {
        C[wg.z * p.M * p.N + at] = row[j];
      } else {
        var v = p.alpha * row[j];
        if (p.beta != 0.0) { v += p.beta * C[at]; }
        C[at] = v;
      }
    }
  }
}
