// The tiled matmuls' operand reads and result writes (matmul.wgsl, matmul_f16.wgsl): Params,
// the bindings and TILE_* are the including kernel's. Needs include/qweight first.

// Which of three blocks [0, s1), [s1, s2), [s2, …) holds x, and where that block starts.
fn block_of(x: u32, s1: u32, s2: u32) -> u32 {
  return select(0u, 1u, x >= s1) + select(0u, 1u, x >= s2);
}

fn block_start(g: u32, s1: u32, s2: u32) -> u32 {
  return select(select(0u, s1, g == 1u), s2, g == 2u);
}

fn block_end(g: u32, s1: u32, s2: u32, end: u32) -> u32 {
  return select(select(s1, s2, g == 1u), end, g == 2u);
}

// BLOCKS: the pipeline for fused products (the seg_* and r2 parameters); without it those
// branches are compiled out of every other product's loads and stores.
override BLOCKS: bool = false;

fn load_a(m: u32, k: u32, k_end: u32, second: bool) -> f32 {
  if (m >= params.M || k >= k_end) { return 0.0; }
  if (second) {
    if (BLOCKS && params.r2 > 0u) {
      let g = k / params.r2;
      return params.rel2 * A2[g * params.a2_blk + m * params.a2_sm + (k % params.r2) * params.a2_sk];
    }
    return params.rel2 * A2[m * params.a2_sm + k * params.a2_sk];
  }
  if (BLOCKS && params.seg_k1 < params.K) {  // K in blocks: [M, width] each, read along K
    let g = block_of(k, params.seg_k1, params.seg_k2);
    let start = block_start(g, params.seg_k1, params.seg_k2);
    let width = block_end(g, params.seg_k1, params.seg_k2, params.K) - start;
    return A[params.M * start + m * width + (k - start)];
  }
  return A[m * params.a_sm + k * params.a_sk];
}

// B_F16: B holds float16 values, two per u32 (frozen weights stored at half the memory; read
// with unpack2x16float, which needs no shader-f16 feature). Otherwise B is float32 bits.
override B_F16: bool = false;

fn load_b(n: u32, k: u32, k_end: u32, second: bool) -> f32 {
  if (n >= params.N || k >= k_end) { return 0.0; }
  if (second) {
    if (BLOCKS && params.r2 > 0u) {
      let g = k / params.r2;
      var nn = n;
      if (params.b2_diag != 0u) {
        if (block_of(n, params.seg_n1, params.seg_n2) != g) { return 0.0; }
        nn = n - block_start(g, params.seg_n1, params.seg_n2);
      }
      let off = select(select(params.b2_off0, params.b2_off1, g == 1u), params.b2_off2, g == 2u);
      return B2[off + nn * params.b2_sn + (k % params.r2) * params.b2_sk];
    }
    return B2[n * params.b2_sn + k * params.b2_sk];
  }
  let e = n * params.b_sn + k * params.b_sk;
  if (Q_BITS > 0u) {
    let g = e / Q_GROUP;
    return q_value(B[q_word(e)], e, B[q_head(params.b_scales, g)],
                   B[q_super(params.b_scales, params.b_groups, g)]);
  }
  if (B_F16) { return unpack2x16float(B[e / 2u])[e % 2u]; }
  return bitcast<f32>(B[e]);
}

fn store_row(r: u32, c: u32, left: vec4f, right: vec4f, z: u32) {
  if (r >= params.M) { return; }
  for (var j = 0u; j < 4u; j++) {
    if (c + j < params.N) {
      let at = z * params.c_sz + c_index(r, c + j);
      var v = params.alpha * left[j];
      if (params.beta != 0.0) { v += params.beta * c_old(at); }
      C[at] = v;
    }
    if (c + 64u + j < params.N) {
      let at = z * params.c_sz + c_index(r, c + 64u + j);
      var v = params.alpha * right[j];
      if (params.beta != 0.0) { v += params.beta * c_old(at); }
      C[at] = v;
    }
  }
}

// Where C's (r, n) lives: row-major, or in its column block (a permutation of [0, M·N) either way).
fn c_index(r: u32, n: u32) -> u32 {
  if (!BLOCKS || params.seg_n1 >= params.N) { return r * params.N + n; }
  let g = block_of(n, params.seg_n1, params.seg_n2);
  let start = block_start(g, params.seg_n1, params.seg_n2);
  let width = block_end(g, params.seg_n1, params.seg_n2, params.N) - start;
  return params.M * start + r * width + (n - start);
}

fn c_old(i: u32) -> f32 {
  if (params.c_in != 0u) { return C_in[i]; }
  return C[i];
}

// Which 8 elements of a 128 × 16 tile invocation li loads (into two vec4 registers, then
// workgroup memory as two whole vec4s: a store into one component of a vec4 chosen at run time
// costs the GPU far more than a whole one):
//   along K: rows g·4 … +3 and 64 + g·4 … +3 (g = li/16) at k = li%16 (sixteen invocations read
//            a row's 16 consecutive values);
//   across K: rows (li%32)·4 … +3 at k li/32 and li/32 + 8.
// In workgroup memory a tile is [k][32 vec4s of 4 rows]; vec4 s of k sits at slot
// (s & 16) | ((s & 15) ^ k), so the sixteen k an along-K subgroup stores at once fall in
// different banks.
struct Part {
  lo: vec4f,
  hi: vec4f,
}

fn slot(s: u32, k: u32) -> u32 {
  return k * 32u + ((s & 16u) | ((s & 15u) ^ k));
}

fn tile_a(li: u32, row0: u32, k0: u32, k_end: u32, along_k: bool, second: bool) -> Part {
  if (along_k) {
    let r = row0 + (li / 16u) * 4u;
    let k = k0 + li % 16u;
    return Part(vec4f(load_a(r, k, k_end, second), load_a(r + 1u, k, k_end, second),
                      load_a(r + 2u, k, k_end, second), load_a(r + 3u, k, k_end, second)),
                vec4f(load_a(r + 64u, k, k_end, second), load_a(r + 65u, k, k_end, second),
                      load_a(r + 66u, k, k_end, second), load_a(r + 67u, k, k_end, second)));
  }
  let k = k0 + li / 32u;
  let r = row0 + (li % 32u) * 4u;
  return Part(vec4f(load_a(r, k, k_end, second), load_a(r + 1u, k, k_end, second),
                    load_a(r + 2u, k, k_end, second), load_a(r + 3u, k, k_end, second)),
              vec4f(load_a(r, k + 8u, k_end, second), load_a(r + 1u, k + 8u, k_end, second),
                    load_a(r + 2u, k + 8u, k_end, second), load_a(r + 3u, k + 8u, k_end, second)));
}

fn tile_b(li: u32, col0: u32, k0: u32, k_end: u32, along_k: bool, second: bool) -> Part {
  if (along_k) {
    let r = col0 + (li / 16u) * 4u;
    let k = k0 + li % 16u;
    return Part(vec4f(load_b(r, k, k_end, second), load_b(r + 1u, k, k_end, second),
                      load_b(r + 2u, k, k_end, second), load_b(r + 3u, k, k_end, second)),
                vec4f(load_b(r + 64u, k, k_end, second), load_b(r + 65u, k, k_end, second),
                      load_b(r + 66u, k, k_end, second), load_b(r + 67u, k, k_end, second)));
  }
  let k = k0 + li / 32u;
  let r = col0 + (li % 32u) * 4u;
  return Part(vec4f(load_b(r, k, k_end, second), load_b(r + 1u, k, k_end, second),
                    load_b(r + 2u, k, k_end, second), load_b(r + 3u, k, k_end, second)),
              vec4f(load_b(r, k + 8u, k_end, second), load_b(r + 1u, k + 8u, k_end, second),
                    load_b(r + 2u, k + 8u, k_end, second), load_b(r + 3u, k + 8u, k_end, second)));
}
