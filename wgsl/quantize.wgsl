// quantize: frozen weights into the quantized layout the matmuls read (include/qweight.wgsl), on
// the GPU at load time, and back to float32 (merged exports, tests).
//   repack:        GGUF blocks → codes, group heads and super-blocks, the block's own scales kept
//                  (kind: 0 Q8_0, 1 Q4_0, 2 Q4_1, 3 Q5_0, 4 Q5_1, 5 Q4_K, 6 Q5_K, 7 Q6_K), so
//                  every value is exact. head_dim > 0 undoes llama.cpp's RoPE row permutation of
//                  q/k weights.
//   quantize_nf4:  float32 → bitsandbytes NF4: blocks of 64 consecutive values (row-major), an
//                  f32 absmax each, each value x · (1 / absmax) to the nearest NF4 level (ties to
//                  the lower level, as bitsandbytes' strict comparisons against the midpoints).
//   quantize_q8_0: float32 → Q8_0 as ggml's reference quantizer: blocks of 32, d = amax / 127,
//                  q = roundf(x / d) (half away from zero), d stored as f16.
//   to_ggml:       float32 [rows, cols] → ggml blocks as a GGUF file holds them (kind: 0 Q8_0,
//                  1 Q4_0; ggml's reference quantizers), rows in llama.cpp's order when head_dim
//                  > 0 (merged exports re-quantized).
//   dequantize:    the quantized layout → float32 (pipeline constants of include/qweight.wgsl).
//   random_layout: random weights in the quantized layout, for benchmarks (`kind` is the seed).
// Codes: 4 bits for Q4_0, Q4_1, Q4_K and NF4; 8 bits for Q8_0, Q5_0, Q5_1, Q5_K, Q6_K.
// Work split: repack, one invocation per block of 32 values (K types: per super-block of 256, whose
// heads fill whole words); quantize_q8_0, one per block of 32; to_ggml, one per two blocks (34-
// and 18-byte blocks fill whole words in pairs); quantize_nf4, one per 64-value block;
// dequantize, one per value. 64 per workgroup, 2-D grids for large tensors.

struct Params {
  rows: u32,
  cols: u32,
  kind: u32,
  head_dim: u32,
  scales: u32,  // word of `out` (or `src`, for dequantize) where the group heads start
  groups: u32,  // groups in all
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> src: array<u32>;        // GGUF blocks, f32 bits, or the layout
@group(0) @binding(2) var<storage, read_write> out: array<u32>;  // the layout, or f32 bits

const WG = 64u;

//! include qweight

fn byte_at(i: u32) -> u32 {
  return (src[i >> 2u] >> ((i & 3u) * 8u)) & 0xffu;
}

fn f16_at(i: u32) -> f32 {
  return unpack2x16float(byte_at(i) | (byte_at(i + 1u) << 8u)).x;
}

fn u32_at(i: u32) -> u32 {
  return byte_at(i) | (byte_at(i + 1u) << 8u) | (byte_at(i + 2u) << 16u) | (byte_at(i + 3u) << 24u);
}

fn i8_at(i: u32) -> f32 {
  return f32(bitcast<i32>(byte_at(i) << 24u) >> 24u);
}

fn index(gid: vec3u, nwg: vec3u) -> u32 {
  return gid.x + gid.y * nwg.x * WG;
}

// The GGUF row that holds output row r (llama.cpp permutes q/k rows for its RoPE layout).
fn source_row(r: u32) -> u32 {
  let D = params.head_dim;
  if (D == 0u) { return r; }
  let h = r / D;
  let within = r % D;
  let s = within / (D / 2u);
  let j = within % (D / 2u);
  return h * D + 2u * j + s;
}

// Q4_K / Q5_K: the 6-bit scale and min of sub-block j from the 12 packed bytes at `at`.
fn k_scale_min(at: u32, j: u32) -> vec2u {
  if (j < 4u) {
    return vec2u(byte_at(at + j) & 63u, byte_at(at + j + 4u) & 63u);
  }
  let low = byte_at(at + j + 4u);
  let sc = (low & 15u) | ((byte_at(at + j - 4u) >> 2u) & 48u);
  let m = (low >> 4u) | ((byte_at(at + j) >> 2u) & 48u);
  return vec2u(sc, m);
}

// Writes 32 codes of `bits` bits starting at value e0 (a multiple of 32).
fn write_codes(e0: u32, codes: ptr<function, array<u32, 32>>, bits: u32) {
  let per = 32u / bits;
  for (var w = 0u; w < 32u / per; w++) {
    var word = 0u;
    for (var i = 0u; i < per; i++) { word |= (*codes)[w * per + i] << (i * bits); }
    out[e0 / per + w] = word;
  }
}

// The heads start at word params.scales; the super-blocks after them (K types).
fn super_word(sb: u32) -> u32 {
  let head_bits = select(16u, 8u, params.kind == 7u);
  return params.scales + (params.groups * head_bits + 31u) / 32u + sb;
}

// Blocks of 32 (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1): block `ch` of output row r; the head is the
// block's f16 d and (Q4_1, Q5_1) f16 m, as in the file.
fn repack_block(r: u32, ch: u32) {
  let chunks = params.cols / 32u;
  let kind = params.kind;
  var sizes = array<u32, 5>(34u, 18u, 20u, 22u, 24u);
  let base = (source_row(r) * chunks + ch) * sizes[kind];
  var codes: array<u32, 32>;
  var head = byte_at(base) | (byte_at(base + 1u) << 8u);
  if (kind == 2u || kind == 4u) { head = u32_at(base); }
  if (kind == 0u) {  // Q8_0: q signed, code q + 128
    for (var i = 0u; i < 32u; i++) { codes[i] = byte_at(base + 2u + i) ^ 0x80u; }
  } else if (kind == 1u || kind == 2u) {
    let qs = base + select(2u, 4u, kind == 2u);
    for (var i = 0u; i < 16u; i++) {
      let b = byte_at(qs + i);
      codes[i] = b & 15u;
      codes[i + 16u] = b >> 4u;
    }
  } else {  // Q5_0, Q5_1: the fifth bits in a u32
    let qh = u32_at(base + select(2u, 4u, kind == 4u));
    let qs = base + select(6u, 8u, kind == 4u);
    for (var i = 0u; i < 16u; i++) {
      let b = byte_at(qs + i);
      codes[i] = (b & 15u) | (((qh >> i) & 1u) << 4u);
      codes[i + 16u] = (b >> 4u) | (((qh >> (i + 16u)) & 1u) << 4u);
    }
  }
  let e0 = r * params.cols + ch * 32u;
  write_codes(e0, &codes, select(8u, 4u, kind == 1u || kind == 2u));
  out[params.scales + e0 / 32u] = head;
}

// Super-blocks of 256 (Q4_K, Q5_K, Q6_K): super-block `sb` of output row r. Heads: Q4_K/Q5_K, the
// 6-bit sc and m of each sub-block of 32 (u8 each); Q6_K, the i8 scale of each 16. Super: the f16
// d (and dmin) as in the file.
fn repack_super(r: u32, sb: u32) {
  let kind = params.kind;
  var sizes = array<u32, 3>(144u, 176u, 210u);
  let per_row = params.cols / 256u;
  let base = (source_row(r) * per_row + sb) * sizes[kind - 5u];
  let e_sb = r * params.cols + sb * 256u;
  var codes: array<u32, 32>;
  var heads = array<u32, 4>(0u, 0u, 0u, 0u);
  for (var sub = 0u; sub < 8u; sub++) {
    if (kind == 7u) {  // Q6_K: low 4 bits in ql, high 2 in qh
      let h = sub / 4u;
      let r4 = sub % 4u;
      for (var i = 0u; i < 32u; i++) {
        let low = (byte_at(base + h * 64u + (r4 % 2u) * 32u + i) >> ((r4 / 2u) * 4u)) & 15u;
        let high = (byte_at(base + 128u + h * 32u + i) >> (2u * r4)) & 3u;
        codes[i] = low | (high << 4u);
      }
    } else {
      let sm = k_scale_min(base + 4u, sub);
      heads[sub / 2u] |= (sm.x | (sm.y << 8u)) << ((sub % 2u) * 16u);
      let qs = base + select(16u, 48u, kind == 6u);
      for (var i = 0u; i < 32u; i++) {
        var q = (byte_at(qs + (sub / 2u) * 32u + i) >> ((sub % 2u) * 4u)) & 15u;
        if (kind == 6u) { q |= ((byte_at(base + 16u + i) >> sub) & 1u) << 4u; }
        codes[i] = q;
      }
    }
    write_codes(e_sb + sub * 32u, &codes, select(8u, 4u, kind == 5u));
  }
  let g0 = e_sb / select(32u, 16u, kind == 7u);  // first group: its head starts a word (4 words a block)
  let head_bits = select(16u, 8u, kind == 7u);
  for (var w = 0u; w < 4u; w++) {
    if (kind == 7u) { heads[w] = u32_at(base + 192u + 4u * w); }
    out[params.scales + g0 * head_bits / 32u + w] = heads[w];
  }
  var sup = u32_at(base);  // Q4_K, Q5_K: d, dmin
  if (kind == 7u) { sup = byte_at(base + 208u) | (byte_at(base + 209u) << 8u); }
  out[super_word(e_sb / 256u)] = sup;
}

@compute @workgroup_size(WG)
fn repack(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let unit = select(32u, 256u, params.kind >= 5u);
  let per_row = params.cols / unit;
  let idx = index(gid, nwg);
  if (idx >= params.rows * per_row) { return; }
  if (params.kind >= 5u) {
    repack_super(idx / per_row, idx % per_row);
  } else {
    repack_block(idx / per_row, idx % per_row);
  }
}

// bitsandbytes' NF4 decision points: the midpoints between neighbouring levels.
var<private> NF4_MID: array<f32, 15> = array<f32, 15>(
  -0.8480963706970215, -0.6106328964233398, -0.4599952697753906, -0.33967941999435425,
  -0.23460739850997925, -0.13791173696517944, -0.045525018125772476, 0.03979014977812767,
  0.120255246758461, 0.2035212516784668, 0.2920137643814087, 0.3893125355243683,
  0.5016634464263916, 0.6427869200706482, 0.8614784479141235);

@compute @workgroup_size(WG)
fn quantize_nf4(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let n = params.rows * params.cols;
  let blk = index(gid, nwg);
  if (blk * 64u >= n) { return; }
  let e0 = blk * 64u;
  let end = min(e0 + 64u, n);
  var absmax = 0.0;
  for (var e = e0; e < end; e++) { absmax = max(absmax, abs(bitcast<f32>(src[e]))); }
  let inv = select(0.0, 1.0 / absmax, absmax > 0.0);
  for (var w = 0u; w < 8u; w++) {
    var word = 0u;
    for (var i = 0u; i < 8u; i++) {
      let e = e0 + w * 8u + i;
      var code = 7u;  // an all-zero block: every value 0
      if (e < end && absmax > 0.0) {
        let x = bitcast<f32>(src[e]) * inv;
        code = 0u;
        for (var t = 0u; t < 15u; t++) { code += select(0u, 1u, x > NF4_MID[t]); }
      }
      word |= code << (i * 4u);
    }
    if ((e0 + w * 8u) < n) { out[e0 / 8u + w] = word; }
  }
  out[params.scales + blk] = bitcast<u32>(absmax);
}

// ggml's roundf: half away from zero, exact for every float (as gguf-py's np_roundf).
fn roundf(v: f32) -> f32 {
  let a = abs(v);
  let fl = floor(a);
  return sign(v) * (fl + floor(2.0 * (a - fl)));
}

@compute @workgroup_size(WG)
fn quantize_q8_0(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let blk = index(gid, nwg);
  if (blk * 32u >= params.rows * params.cols) { return; }
  let e0 = blk * 32u;
  var amax = 0.0;
  for (var i = 0u; i < 32u; i++) { amax = max(amax, abs(bitcast<f32>(src[e0 + i]))); }
  let d = amax / 127.0;
  let id = select(0.0, 1.0 / d, d != 0.0);
  var codes: array<u32, 32>;
  for (var i = 0u; i < 32u; i++) {
    codes[i] = u32(i32(roundf(bitcast<f32>(src[e0 + i]) * id)) + 128);
  }
  write_codes(e0, &codes, 8u);
  out[params.scales + blk] = pack2x16float(vec2f(d, 0.0));  // m = 0; Q_ZERO = 128
}

// The row of the [rows, cols] float32 matrix that GGUF row ro holds (source_row's inverse).
fn hf_row(ro: u32) -> u32 {
  let D = params.head_dim;
  if (D == 0u) { return ro; }
  let within = ro % D;
  return (ro / D) * D + (within % 2u) * (D / 2u) + within / 2u;
}

// Block `ob` (in GGUF order) as ggml writes it, into bytes[at ...]: Q8_0, f16 d then 32 i8;
// Q4_0, f16 d then 16 bytes of two 4-bit codes (value j low, j + 16 high).
fn ggml_block(ob: u32, bytes: ptr<function, array<u32, 68>>, at: u32) {
  let per_row = params.cols / 32u;
  let e0 = hf_row(ob / per_row) * params.cols + (ob % per_row) * 32u;
  var x: array<f32, 32>;
  var amax = 0.0;
  var signed_max = 0.0;
  for (var i = 0u; i < 32u; i++) {
    x[i] = bitcast<f32>(src[e0 + i]);
    if (abs(x[i]) > amax) { amax = abs(x[i]); signed_max = x[i]; }
  }
  var d = amax / 127.0;
  if (params.kind == 1u) { d = signed_max / -8.0; }
  let id = select(0.0, 1.0 / d, d != 0.0);
  let half = pack2x16float(vec2f(d, 0.0));
  (*bytes)[at] = half & 0xffu;
  (*bytes)[at + 1u] = half >> 8u;
  if (params.kind == 0u) {
    for (var i = 0u; i < 32u; i++) { (*bytes)[at + 2u + i] = u32(i32(roundf(x[i] * id))) & 0xffu; }
  } else {
    for (var j = 0u; j < 16u; j++) {
      let lo = min(15u, u32(trunc(x[j] * id + 8.5)));
      let hi = min(15u, u32(trunc(x[j + 16u] * id + 8.5)));
      (*bytes)[at + 2u + j] = lo | (hi << 4u);
    }
  }
}

@compute @workgroup_size(WG)
fn to_ggml(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let pair = index(gid, nwg);
  let blocks = params.rows * params.cols / 32u;
  if (2u * pair >= blocks) { return; }
  let size = select(34u, 18u, params.kind == 1u);
  var bytes: array<u32, 68>;
  ggml_block(2u * pair, &bytes, 0u);
  if (2u * pair + 1u < blocks) { ggml_block(2u * pair + 1u, &bytes, size); }
  for (var w = 0u; w < size / 2u; w++) {
    let b = 4u * w;
    out[pair * (size / 2u) + w] = bytes[b] | (bytes[b + 1u] << 8u) | (bytes[b + 2u] << 16u) | (bytes[b + 3u] << 24u);
  }
}

@compute @workgroup_size(WG)
fn dequantize(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let e = index(gid, nwg);
  if (e >= params.rows * params.cols) { return; }
  let g = e / Q_GROUP;
  out[e] = bitcast<u32>(q_value(src[q_word(e)], e, src[q_head(params.scales, g)],
                                src[q_super(params.scales, params.groups, g)]));
}

//! include pcg

// random_layout: benchmark weights straight in the quantized layout, word by word: random codes,
// and scales that make each value about ±1/√cols around 0, like a trained matrix's (codes centred
// by Q_ZERO or by an offset of half their range). `kind` seeds the hash, and src's words (zeros
// will do) are mixed in.
@compute @workgroup_size(WG)
fn random_layout(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = index(gid, nwg);
  let hb = q_head_bits();
  let head_words = (params.groups * hb + 31u) / 32u;
  let supers = select(0u, (params.groups + 256u / Q_GROUP - 1u) / (256u / Q_GROUP), Q_FORMAT >= 2u);
  if (i >= params.scales + head_words + supers) { return; }
  let h = pcg(pcg(params.kind) ^ i) ^ src[i % arrayLength(&src)];  // (src: more entropy, or zeros)
  // The bits a code really has: 8 for Q8_0, 6 for Q6_K, 5 for the other 8-bit ones.
  var code_bits = select(5u, 8u, Q_ZERO == 128.0);
  if (Q_BITS == 4u) { code_bits = 4u; } else if (Q_FORMAT == 3u) { code_bits = 6u; }
  if (i < params.scales) { out[i] = h & (((1u << code_bits) - 1u) * select(0x11111111u, 0x01010101u, Q_BITS == 8u)); return; }
  let levels = f32(1u << code_bits);
  let unit = (0.5 + f32(pcg(pcg(params.kind) ^ (i / 8u)) >> 8u) / 16777216.0) * 2.0 / sqrt(f32(params.cols));
  if (Q_FORMAT == 0u) { out[i] = bitcast<u32>(unit); return; }  // NF4's levels already span ±1
  if (Q_FORMAT == 1u) {
    let d = unit / levels;
    out[i] = pack2x16float(vec2f(d, select(-0.5 * levels * d, 0.0, Q_ZERO > 0.0)));
    return;
  }
  if (i < params.scales + head_words) {  // sc and m (or Q6_K's i8 scales) in [32, 64)
    out[i] = (h & 0x1f1f1f1fu) | 0x20202020u;
    return;
  }
  let d = unit / (48.0 * levels);  // sc ≈ 48; Q4_K/Q5_K: dmin · m ≈ half the code range
  out[i] = pack2x16float(vec2f(d, 0.5 * levels * d));
}
