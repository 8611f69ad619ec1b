// matmul_rows: C = alpha · X · op(W)ᵀ + beta · C for products with at most 16 columns and X's
// rows contiguous: LoRA's inner activation u = x · Aᵀ and its gradient du = dy · B, where each
// token's row (K = hidden or intermediate size) meets the whole of a small W.
//   X: [T, K] f32, row t at X[t · x_st …] (x_st and K multiples of 4: rows are read as vec4s)
//   op(W): [R ≤ 16, K], element (j, k) at W[j · w_sj + k · w_sk] (A: (K, 1); B read as (1, R))
//   C: [T, R] f32, element (t, j) at C[t · c_st + j]; beta = 0 overwrites (C is not read).
// Work split: one workgroup per 16 rows, 16 invocations per row. K is walked KC at a time: the
// chunk of W goes to workgroup memory as RV vec4s per k (j padded to a multiple of 4), then
// each invocation reads its row's vec4s lane, lane + 16, … (neighbouring invocations read
// neighbouring 16 bytes, so a row's 256 bytes come in one go) and keeps RV vec4 sums in
// registers. At the end the 16 lanes' sums are added in workgroup memory, in a fixed order.
// RV (a pipeline constant: ⌈R / 4⌉) sizes the registers and the workgroup-memory reads.

struct Params {
  T: u32,
  R: u32,
  K: u32,
  x_st: u32,
  w_sj: u32,
  w_sk: u32,
  c_st: u32,
  alpha: f32,
  beta: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> X: array<vec4f>;       // [T, x_st / 4]
@group(0) @binding(2) var<storage, read> W: array<f32>;         // op(W) [R, K] (strided)
@group(0) @binding(3) var<storage, read_write> C: array<f32>;   // [T, c_st]

override RV: u32 = 4u;  // vec4s of sums per row: ⌈R / 4⌉, 1 … 4

const ROWS = 16u;
const LANES = 16u;
const WG = 256u;
const KC = 256u;  // k per chunk: one per invocation when W is staged
const PER_LANE = 4u;  // vec4s of X per invocation per chunk (KC / 4 / LANES), in xa … xd

// The chunk of W (k's 4 vec4s of j at slot(k, ·)), then the lanes' sums ([ROWS][LANES][4 vec4s]).
var<workgroup> shared4: array<vec4f, 1088>;

// Where W's vec4 q of k sits: one vec4 of padding per 4 k, so the 16 lanes of a row, which read
// k 4 apart, fall 17 vec4s apart: in different banks.
fn slot(k: u32, q: u32) -> u32 {
  return k * 4u + q + k / 4u;
}

// X's vec4 at (t, k … k + 3) (0 past the row or for a row past T; K is a multiple of 4).
fn x_at(x0: u32, k: u32, live: bool) -> vec4f {
  let ok = live && k < params.K;
  return select(vec4f(0.0), X[select(0u, x0 + k / 4u, ok)], ok);
}

fn w_at(j: u32, k: u32) -> f32 {
  if (j >= params.R || k >= params.K) { return 0.0; }
  return W[j * params.w_sj + k * params.w_sk];
}

@compute @workgroup_size(WG)
fn matmul_rows(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) li: u32) {
  let p = params;
  let row = li / LANES;
  let lane = li % LANES;
  let t = (wg.x + wg.y * 65535u) * ROWS + row;
  let live = t < p.T;
  let x0 = select(0u, t * (p.x_st / 4u), live);
  var s0 = vec4f(0.0);
  var s1 = vec4f(0.0);
  var s2 = vec4f(0.0);
  var s3 = vec4f(0.0);
  for (var k0 = 0u; k0 < p.K; k0 += KC) {
    // This chunk's X first (its loads in flight while W is staged), then W.
    let xa = x_at(x0, k0 + lane * 4u, live);
    let xb = x_at(x0, k0 + (lane + LANES) * 4u, live);
    let xc = x_at(x0, k0 + (lane + 2u * LANES) * 4u, live);
    let xd = x_at(x0, k0 + (lane + 3u * LANES) * 4u, live);
    let kw = k0 + li;
    for (var q = 0u; q < RV; q++) {
      shared4[slot(li, q)] = vec4f(w_at(q * 4u, kw), w_at(q * 4u + 1u, kw), w_at(q * 4u + 2u, kw), w_at(q * 4u + 3u, kw));
    }
    workgroupBarrier();
    for (var i = 0u; i < PER_LANE; i++) {
      let kk = (lane + LANES * i) * 4u;
      var x = xa;
      if (i == 1u) { x = xb; } else if (i == 2u) { x = xc; } else if (i == 3u) { x = xd; }
      for (var e = 0u; e < 4u; e++) {
        let at = slot(kk + e, 0u);
        s0 += x[e] * shared4[at];
        if (RV > 1u) { s1 += x[e] * shared4[at + 1u]; }
        if (RV > 2u) { s2 += x[e] * shared4[at + 2u]; }
        if (RV > 3u) { s3 += x[e] * shared4[at + 3u]; }
      }
    }
    workgroupBarrier();
  }
  let mine = li * 4u;
  shared4[mine] = s0;
  shared4[mine + 1u] = s1;
  shared4[mine + 2u] = s2;
  shared4[mine + 3u] = s3;
  workgroupBarrier();
  // Invocation (row, j) adds the 16 lanes' sums of output j.
  let j = lane;
  if (!live || j >= p.R) { return; }
  var total = 0.0;
  for (var l = 0u; l < LANES; l++) { total += shared4[(row * LANES + l) * 4u + j / 4u][j % 4u]; }
  let at = t * p.c_st + j;
  var v = p.alpha * total;
  if (p.beta != 0.0) { v += p.beta * C[at]; }
  C[at] = v;
}
