// quantize: frozen weights into the quantized layout the matmuls read (include/qweight.wgsl), on
// the GPU at load time, and back to float32 (merged exports, tests).
//   repack:        GGUF blocks → codes + per-group scale and offset, keeping every value exact
//                  (kind: 0 Q8_0, 1 Q4_0, 2 Q4_1, 3 Q5_0, 4 Q5_1, 5 Q4_K, 6 Q5_K, 7 Q6_K).
//                  head_dim > 0 undoes llama.cpp's RoPE row permutation of q/k weights (as dequant.wgsl).
//   quantize_nf4:  float32 → bitsandbytes NF4: blocks of 64 consecutive values (row-major), an
//                  f32 absmax each, each value x · (1 / absmax) to the nearest NF4 level (ties to
//                  the lower level, as bitsandbytes' strict comparisons against the midpoints).
//   quantize_q8_0: float32 → Q8_0 as ggml's reference quantizer: blocks of 32, d = amax / 127,
//                  q = roundf(x / d) (half away from zero), d stored as f16.
//   dequantize:    the quantized layout → float32 (pipeline constants Q_BITS, Q_GROUP, Q_TABLE).
//   random_layout: random weights in the quantized layout, for benchmarks (`kind` is the seed).
// Codes: 4 bits for Q4_0, Q4_1, Q4_K and NF4; 8 bits for Q8_0, Q5_0, Q5_1, Q5_K, Q6_K. Groups:
// 16 values for Q6_K, 64 for NF4, 32 otherwise. Offsets: none for NF4 (a table type).
// Work split: repack and quantize_q8_0, one invocation per 32 values of a row; quantize_nf4, one
// per 64-value block; dequantize, one per value. 64 per workgroup, 2-D grids for large tensors.

struct Params {
  rows: u32,
  cols: u32,
  kind: u32,
  head_dim: u32,
  scales: u32,  // word of `out` (or `src`, for dequantize) where the scales start
  groups: u32,  // scales (and offsets) in all
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
fn k_scale_min(at: u32, j: u32) -> vec2f {
  if (j < 4u) {
    return vec2f(f32(byte_at(at + j) & 63u), f32(byte_at(at + j + 4u) & 63u));
  }
  let low = byte_at(at + j + 4u);
  let sc = (low & 15u) | ((byte_at(at + j - 4u) >> 2u) & 48u);
  let m = (low >> 4u) | ((byte_at(at + j) >> 2u) & 48u);
  return vec2f(f32(sc), f32(m));
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

@compute @workgroup_size(WG)
fn repack(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let chunks = params.cols / 32u;
  let idx = index(gid, nwg);
  if (idx >= params.rows * chunks) { return; }
  let r = idx / chunks;
  let ch = idx % chunks;
  let row = source_row(r);
  let e0 = r * params.cols + ch * 32u;
  var codes: array<u32, 32>;
  var scale = 0.0;
  var offset = 0.0;
  var scale2 = 0.0;  // Q6_K: the second group of 16
  let kind = params.kind;
  if (kind <= 4u) {  // blocks of 32
    var sizes = array<u32, 5>(34u, 18u, 20u, 22u, 24u);
    let base = (row * chunks + ch) * sizes[kind];
    let d = f16_at(base);
    scale = d;
    if (kind == 0u) {  // Q8_0: d · q, q signed: code q + 128
      for (var i = 0u; i < 32u; i++) { codes[i] = byte_at(base + 2u + i) ^ 0x80u; }
      offset = 128.0 * d;
    } else if (kind == 1u || kind == 2u) {  // Q4_0: d · (q − 8); Q4_1: d · q + m
      let qs = base + select(2u, 4u, kind == 2u);
      for (var i = 0u; i < 16u; i++) {
        let b = byte_at(qs + i);
        codes[i] = b & 15u;
        codes[i + 16u] = b >> 4u;
      }
      offset = select(8.0 * d, -f16_at(base + 2u), kind == 2u);
    } else {  // Q5_0: d · (q − 16); Q5_1: d · q + m; the fifth bits in a u32
      let qh = u32_at(base + select(2u, 4u, kind == 4u));
      let qs = base + select(6u, 8u, kind == 4u);
      for (var i = 0u; i < 16u; i++) {
        let b = byte_at(qs + i);
        codes[i] = (b & 15u) | (((qh >> i) & 1u) << 4u);
        codes[i + 16u] = (b >> 4u) | (((qh >> (i + 16u)) & 1u) << 4u);
      }
      offset = select(16.0 * d, -f16_at(base + 2u), kind == 4u);
    }
  } else {  // super-blocks of 256: this chunk is sub-block `sub` of block `block`
    var sizes = array<u32, 3>(144u, 176u, 210u);
    let block = ch / 8u;
    let sub = ch % 8u;
    let base = (row * (params.cols / 256u) + block) * sizes[kind - 5u];
    if (kind == 7u) {  // Q6_K: d · scale_k · (q − 32), 16 values per scale
      let h = sub / 4u;
      let r4 = sub % 4u;
      for (var i = 0u; i < 32u; i++) {
        let low = (byte_at(base + h * 64u + (r4 % 2u) * 32u + i) >> ((r4 / 2u) * 4u)) & 15u;
        let high = (byte_at(base + 128u + h * 32u + i) >> (2u * r4)) & 3u;
        codes[i] = low | (high << 4u);
      }
      let d = f16_at(base + 208u);
      scale = d * i8_at(base + 192u + 2u * sub);
      scale2 = d * i8_at(base + 193u + 2u * sub);
    } else {  // Q4_K, Q5_K: d · sc · q − dmin · m
      let sm = k_scale_min(base + 4u, sub);
      scale = f16_at(base) * sm.x;
      offset = f16_at(base + 2u) * sm.y;
      let qs = base + select(16u, 48u, kind == 6u);
      for (var i = 0u; i < 32u; i++) {
        var q = (byte_at(qs + (sub / 2u) * 32u + i) >> ((sub % 2u) * 4u)) & 15u;
        if (kind == 6u) { q |= ((byte_at(base + 16u + i) >> sub) & 1u) << 4u; }
        codes[i] = q;
      }
    }
  }
  let bits = select(8u, 4u, kind == 1u || kind == 2u || kind == 5u);
  write_codes(e0, &codes, bits);
  if (kind == 7u) {
    let g = e0 / 16u;
    out[params.scales + g] = bitcast<u32>(scale);
    out[params.scales + g + 1u] = bitcast<u32>(scale2);
    out[params.scales + params.groups + g] = bitcast<u32>(32.0 * scale);
    out[params.scales + params.groups + g + 1u] = bitcast<u32>(32.0 * scale2);
  } else {
    let g = e0 / 32u;
    out[params.scales + g] = bitcast<u32>(scale);
    out[params.scales + params.groups + g] = bitcast<u32>(offset);
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
  let stored = unpack2x16float(pack2x16float(vec2f(d, 0.0))).x;
  out[params.scales + blk] = bitcast<u32>(stored);
  out[params.scales + params.groups + blk] = bitcast<u32>(128.0 * stored);
}

@compute @workgroup_size(WG)
fn dequantize(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let e = index(gid, nwg);
  if (e >= params.rows * params.cols) { return; }
  let g = e / Q_GROUP;
  var offset = 0.0;
  if (!Q_TABLE) { offset = bitcast<f32>(src[params.scales + params.groups + g]); }
  out[e] = bitcast<u32>(q_value(src[q_word(e)], e, bitcast<f32>(src[params.scales + g]), offset));
}

//! include pcg

// random_layout: benchmark weights straight in the quantized layout (random codes; each group's scale
// about 2 / (√cols · 2^Q_BITS) and its offset half the code range, so values spread around 0
// like a trained matrix's); `kind` seeds the hash, and src's words (zeros will do) are mixed in.
@compute @workgroup_size(WG)
fn random_layout(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = index(gid, nwg);
  let total = params.scales + params.groups * select(2u, 1u, Q_TABLE);
  if (i >= total) { return; }
  let h = pcg(pcg(params.kind) ^ i) ^ src[i % arrayLength(&src)];  // (src: more entropy, or zeros)
  if (i < params.scales) { out[i] = h; return; }
  let levels = f32(1u << max(Q_BITS, 4u));
  var spread = levels;  // codes span the levels (NF4's already span ±1)
  if (Q_TABLE) { spread = 1.0; }
  let g = (i - params.scales) % params.groups;
  let s = (0.5 + f32(pcg(pcg(params.kind) ^ (params.scales + g)) >> 8u) / 16777216.0) * 2.0
          / (sqrt(f32(params.cols)) * spread);
  if (i < params.scales + params.groups) { out[i] = bitcast<u32>(s); return; }
  out[i] = bitcast<u32>(s * levels / 2.0);
}
