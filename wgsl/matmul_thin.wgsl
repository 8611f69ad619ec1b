// matmul_thin: C = alpha · op(A) · op(B)ᵀ + beta · C for products with at most 16 rows: LoRA's
// rank-sized products (x·Aᵀ as (A·xᵀ)ᵀ, dA = duᵀ·x, dB = (u ᵀ·dy)ᵀ), where matmul.wgsl's
// 128-row tiles would compute 8× more than they keep.
//   op(A): [M ≤ 16, K], element (m, k) at A[m * a_sm + k * a_sk]
//   op(B): [N, K], element (n, k) at B[n * b_sn + k * b_sk]
//   C: element (m, n) at C[m * c_sm + n * c_sn] (c_sm = 1, c_sn = M writes the transpose)
// Work split: one workgroup per 16 × 32 tile of C, 256 invocations: 32 columns × 8 slices of
// each 64-long stretch of K. A's 16 × 64 block goes through workgroup memory; each invocation
// reads its column's 8 values of B and keeps 16 sums in registers; at the end the 8 slices are
// added in workgroup memory, so a long K needs no second pass. Which invocation takes which
// column and k follows B's layout, so that a subgroup's loads cover whole stretches of memory:
// with B's columns adjacent (b_sn = 1) neighbouring invocations take neighbouring columns and a
// slice is 8 consecutive k; with each column's K adjacent (b_sk = 1: x·Aᵀ computed as A·xᵀ, or
// dy·B) eight neighbouring invocations share a column and take k ≡ slice (mod 8), reading its
// row 8 values at a time. A pass's values are loaded into registers during the previous pass,
// without branches (out-of-range reads are masked to 0), and A's block is stored as whole vec4s
// (a store into a vec4 component chosen at run time is slow on some GPUs). Split K as in
// matmul.wgsl is still possible: workgroup z sums k in [z·k_split, …) into C + z·c_sz (in C's
// layout): scratch for matmul_reduce, or a gradient's slice (see matmul.wgsl).

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
  c_sz: u32,  // floats between the splits' outputs
  b_scales: u32,  // a quantized B (Q_BITS > 0, include/qweight.wgsl): the word where its group heads
  b_groups: u32,  //   start, and how many groups it has
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> A: array<u32>;        // op(A) [M, K]: f32 bits or f16 pairs
@group(0) @binding(2) var<storage, read> B: array<u32>;        // op(B) [N, K]: f32 bits or f16 pairs
@group(0) @binding(3) var<storage, read_write> C: array<f32>;  // [M, N] (strided)

// A_F16 / B_F16: the operand holds float16 pairs (frozen weights), read with unpack2x16float;
// Q_BITS > 0: B is quantized (include/qweight.wgsl).
override A_F16: bool = false;
override B_F16: bool = false;

//! include qweight

fn read_a(e: u32) -> f32 {
  if (A_F16) { return unpack2x16float(A[e / 2u])[e % 2u]; }
  return bitcast<f32>(A[e]);
}

fn read_b(e: u32) -> f32 {
  if (Q_BITS > 0u) {
    let g = e / Q_GROUP;
    return q_value(B[q_word(e)], e, B[q_head(params.b_scales, g)],
                   B[q_super(params.b_scales, params.b_groups, g)]);
  }
  if (B_F16) { return unpack2x16float(B[e / 2u])[e % 2u]; }
  return bitcast<f32>(B[e]);
}

const TILE_M = 16u;
const TILE_N = 32u;
const TILE_K = 64u;  // K per pass: 8 slices of 8

// A's block during the passes ([64 k][16 m] as 4 vec4 per k, rows A_ROW vec4 apart so that the
// eight k an along-K subgroup reads at once fall in different banks), then the slices' sums
// ([8 slices][32 columns][16 m] as 4 vec4 each).
const A_ROW = 5u;
var<workgroup> shared4: array<vec4f, 1024>;

// A's value at (m, k) (0 outside).
fn value_a(m: u32, k: u32, k_end: u32) -> f32 {
  let ok = m < params.M && k < k_end;
  return select(0.0, read_a(select(0u, m * params.a_sm + k * params.a_sk, ok)), ok);
}

// B's value at (n, k) (0 outside): every load is issued without a branch, so a pass's eight
// are in flight together.
fn value_b(n: u32, k: u32, k_end: u32) -> f32 {
  let ok = n < params.N && k < k_end;
  return select(0.0, read_b(select(0u, n * params.b_sn + k * params.b_sk, ok)), ok);
}

struct Pass {
  a: vec4f,   // this invocation's vec4 of A's block: rows (li%4)·4 … +3 at k0 + li/4
  b0: vec4f,  // its column's eight values of B
  b1: vec4f,
}

fn load_pass(li: u32, n: u32, k0: u32, k_end: u32, kt: vec2u) -> Pass {
  let k = k0 + kt.x;
  let s = kt.y;
  let ka = k0 + li / 4u;
  let m = (li % 4u) * 4u;
  return Pass(vec4f(value_a(m, ka, k_end), value_a(m + 1u, ka, k_end), value_a(m + 2u, ka, k_end), value_a(m + 3u, ka, k_end)),
              vec4f(value_b(n, k, k_end), value_b(n, k + s, k_end), value_b(n, k + 2u * s, k_end), value_b(n, k + 3u * s, k_end)),
              vec4f(value_b(n, k + 4u * s, k_end), value_b(n, k + 5u * s, k_end), value_b(n, k + 6u * s, k_end), value_b(n, k + 7u * s, k_end)));
}

@compute @workgroup_size(256)
fn matmul_thin(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) li: u32) {
  let p = params;
  let along_k = p.b_sk == 1u && p.b_sn != 1u;
  let lane = select(li % 32u, li / 8u, along_k);  // column col0 + lane
  let slice = select(li / 32u, li % 8u, along_k);  // k = k0 + slice·8 + t, or k0 + slice + 8·t
  let kt = select(vec2u(slice * 8u, 1u), vec2u(slice, 8u), along_k);  // (first k, step) in a pass
  let n = wg.x * TILE_N + lane;
  let k_begin = wg.z * p.k_split;
  let k_end = min(p.K, k_begin + p.k_split);
  var acc0 = vec4f(0.0);
  var acc1 = vec4f(0.0);
  var acc2 = vec4f(0.0);
  var acc3 = vec4f(0.0);
  // Each pass's values are loaded into registers during the previous pass's arithmetic.
  var next = load_pass(li, n, k_begin, k_end, kt);
  for (var k0 = k_begin; k0 < k_end; k0 += TILE_K) {
    let cur = next;
    shared4[(li / 4u) * A_ROW + li % 4u] = cur.a;
    workgroupBarrier();
    if (k0 + TILE_K < k_end) { next = load_pass(li, n, k0 + TILE_K, k_end, kt); }
    for (var t = 0u; t < 8u; t++) {
      let e = (kt.x + t * kt.y) * A_ROW;
      let b = select(cur.b1[t % 4u], cur.b0[t % 4u], t < 4u);
      acc0 += shared4[e] * b;
      acc1 += shared4[e + 1u] * b;
      acc2 += shared4[e + 2u] * b;
      acc3 += shared4[e + 3u] * b;
    }
    workgroupBarrier();
  }
  let mine = (slice * 32u + lane) * 4u;
  shared4[mine] = acc0;
  shared4[mine + 1u] = acc1;
  shared4[mine + 2u] = acc2;
  shared4[mine + 3u] = acc3;
  workgroupBarrier();
  // 512 outputs (32 columns × 16 rows), two per invocation: rows 2·slice and 2·slice + 1.
  for (var r = 0u; r < 2u; r++) {
    let m = slice * 2u + r;
    if (m >= p.M || n >= p.N) { continue; }
    var total = 0.0;
    for (var g = 0u; g < 8u; g++) { total += shared4[(g * 32u + lane) * 4u + m / 4u][m % 4u]; }
    let at = wg.z * p.c_sz + m * p.c_sm + n * p.c_sn;  // C's layout is a permutation of [0, M·N)
    var v = p.alpha * total;
    if (p.beta != 0.0) { v += p.beta * C[at]; }
    C[at] = v;
  }
}
