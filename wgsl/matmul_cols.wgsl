// matmul_cols: C = alpha · Uᵀ · Y + beta · C over a long K of rows, at most 16 rows of output:
// LoRA's weight gradients dA = duᵀ · x and dB = (uᵀ · dy)ᵀ, where K is the token count.
//   U: [K, R ≤ 16], element (t, j) at U[t · u_st + j · u_sj]
//   Y: [K, N] f32, row t at Y[t · y_st …] (y_st and N multiples of 4: rows are read as vec4s)
//   C: element (j, n) at C[z · c_sz + j · c_sj + n · c_sn] (dB's transpose by the strides).
// Split K: workgroup z sums t in [z·k_split, (z+1)·k_split) and writes (alpha, beta applied) at
// C + z·c_sz: scratch for matmul_reduce, or a gradient's own slice (see matmul.wgsl).
// Work split: a workgroup takes 64 columns (16 vec4s) of one split, 256 invocations: 16 vec4s
// × 16 phases; phase p reads rows t ≡ p (mod 16), so a subgroup's loads are two rows' 256
// contiguous bytes each, and keeps 4·RV vec4 sums (one per j, over its 4 columns). The 16 phases'
// sums are added in workgroup memory, four j at a time, in a fixed order.
// RV (a pipeline constant: ⌈R / 4⌉) sizes the registers.

struct Params {
  K: u32,
  R: u32,
  N: u32,
  u_st: u32,
  u_sj: u32,
  y_st: u32,
  c_sj: u32,
  c_sn: u32,
  alpha: f32,
  beta: f32,
  k_split: u32,
  c_sz: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> U: array<f32>;         // [K, R] (strided)
@group(0) @binding(2) var<storage, read> Y: array<vec4f>;       // [K, y_st / 4]
@group(0) @binding(3) var<storage, read_write> C: array<f32>;   // [R, N] (strided)

override RV: u32 = 4u;  // vec4s of j: ⌈R / 4⌉, 1 … 4

const COLS4 = 16u;  // vec4s of columns per workgroup
const PHASES = 16u;
const WG = 256u;

var<workgroup> sums: array<vec4f, 1024>;  // [4 j][PHASES][COLS4]

fn u_at(t: u32, j: u32) -> f32 {
  if (j >= params.R) { return 0.0; }
  return U[t * params.u_st + j * params.u_sj];
}

@compute @workgroup_size(WG)
fn matmul_cols(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) li: u32) {
  let p = params;
  let c4 = li % COLS4;
  let phase = li / COLS4;
  let n4 = wg.x * COLS4 + c4;  // this invocation's vec4 of columns
  let live = n4 * 4u < p.N;
  let t_begin = wg.z * p.k_split;
  let t_end = min(p.K, t_begin + p.k_split);
  var a0 = vec4f(0.0); var a1 = vec4f(0.0); var a2 = vec4f(0.0); var a3 = vec4f(0.0);
  var a4 = vec4f(0.0); var a5 = vec4f(0.0); var a6 = vec4f(0.0); var a7 = vec4f(0.0);
  var a8 = vec4f(0.0); var a9 = vec4f(0.0); var a10 = vec4f(0.0); var a11 = vec4f(0.0);
  var a12 = vec4f(0.0); var a13 = vec4f(0.0); var a14 = vec4f(0.0); var a15 = vec4f(0.0);
  for (var t = t_begin + phase; t < t_end; t += PHASES) {
    let y = select(vec4f(0.0), Y[select(0u, t * (p.y_st / 4u) + n4, live)], live);
    a0 += u_at(t, 0u) * y; a1 += u_at(t, 1u) * y; a2 += u_at(t, 2u) * y; a3 += u_at(t, 3u) * y;
    if (RV > 1u) { a4 += u_at(t, 4u) * y; a5 += u_at(t, 5u) * y; a6 += u_at(t, 6u) * y; a7 += u_at(t, 7u) * y; }
    if (RV > 2u) { a8 += u_at(t, 8u) * y; a9 += u_at(t, 9u) * y; a10 += u_at(t, 10u) * y; a11 += u_at(t, 11u) * y; }
    if (RV > 3u) { a12 += u_at(t, 12u) * y; a13 += u_at(t, 13u) * y; a14 += u_at(t, 14u) * y; a15 += u_at(t, 15u) * y; }
  }
  // Four j at a time: every invocation stores its four sums, then 64 invocations (one per
  // column of the workgroup and j) add the 16 phases.
  let mine = phase * COLS4 + c4;
  let col = li % (COLS4 * 4u);  // the column (of 64) this invocation writes
  let jj = li / (COLS4 * 4u);   // which of the four j (invocations 0 … 255 cover 64 × 4)
  for (var q = 0u; q < RV; q++) {
    var s0 = a0; var s1 = a1; var s2 = a2; var s3 = a3;
    if (q == 1u) { s0 = a4; s1 = a5; s2 = a6; s3 = a7; }
    if (q == 2u) { s0 = a8; s1 = a9; s2 = a10; s3 = a11; }
    if (q == 3u) { s0 = a12; s1 = a13; s2 = a14; s3 = a15; }
    sums[mine] = s0;
    sums[256u + mine] = s1;
    sums[512u + mine] = s2;
    sums[768u + mine] = s3;
    workgroupBarrier();
    let j = q * 4u + jj;
    let n = wg.x * COLS4 * 4u + col;
    if (j < p.R && n < p.N) {
      var total = 0.0;
      for (var g = 0u; g < PHASES; g++) { total += sums[jj * 256u + g * COLS4 + col / 4u][col % 4u]; }
      let at = wg.z * p.c_sz + j * p.c_sj + n * p.c_sn;
      var v = p.alpha * total;
      if (p.beta != 0.0) { v += p.beta * C[at]; }
      C[at] = v;
    }
    workgroupBarrier();
  }
}
