// quantize_nbits: a float32 matrix as onnxruntime's MatMulNBits weights (4 bits, blocks of 32
// along K), for the ONNX export's model_q4.onnx.
//   W: [N, K] f32, row-major; each row in blocks of 32 (values past K read as 0).
//   Per block: lo = min(0, min w), hi = max(0, max w), scale = (hi − lo) / 15,
//   zp = clamp(round(−lo / scale), 0, 15), q = clamp(round(w / scale) + zp, 0, 15), so
//   w ≈ (q − zp) · scale; an all-zero block gets scale 0, zp 0, q 0. round: half to even.
//   Q:      [N, blocks, 16] bytes: byte j of a block = q[2j] | q[2j + 1] << 4 (as u32 words)
//   scales: [N · blocks] f32
//   zp:     [N, ceil(blocks / 2)] bytes, block b's in byte b / 2 (low nibble for even b), here
//           one byte per u32 word (the caller keeps every word's low byte).
// Work split: one invocation per row and pair of blocks (it owns that pair's zero-point byte),
// 64 per workgroup, 2-D grid for large matrices. Export-time only.

struct Params {
  N: u32,
  K: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> W: array<f32>;            // [N, K]
@group(0) @binding(2) var<storage, read_write> Q: array<u32>;      // [N, blocks, 4] words
@group(0) @binding(3) var<storage, read_write> scales: array<f32>; // [N · blocks]
@group(0) @binding(4) var<storage, read_write> zp: array<u32>;     // [N · ceil(blocks / 2)]

const WG = 64u;

fn value(n: u32, k: u32) -> f32 {
  if (k >= params.K) { return 0.0; }
  return W[n * params.K + k];
}

// Block b of row n quantized and stored; its zero point returned.
fn block(n: u32, b: u32, blocks: u32) -> u32 {
  var lo = 0.0;
  var hi = 0.0;
  for (var i = 0u; i < 32u; i++) {
    let w = value(n, b * 32u + i);
    lo = min(lo, w);
    hi = max(hi, w);
  }
  let scale = (hi - lo) / 15.0;
  var z = 0.0;
  if (scale > 0.0) { z = clamp(round(-lo / scale), 0.0, 15.0); }
  let at = n * blocks + b;
  scales[at] = scale;
  for (var j = 0u; j < 4u; j++) {
    var word = 0u;
    for (var i = 0u; i < 8u; i++) {
      var q = 0.0;
      if (scale > 0.0) { q = clamp(round(value(n, b * 32u + j * 8u + i) / scale) + z, 0.0, 15.0); }
      word |= u32(q) << (4u * i);
    }
    Q[at * 4u + j] = word;
  }
  return u32(z);
}

@compute @workgroup_size(WG)
fn quantize_nbits(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let blocks = (params.K + 31u) / 32u;
  let pairs = (blocks + 1u) / 2u;
  let i = gid.x + gid.y * nwg.x * WG;
  if (i >= params.N * pairs) { return; }
  let n = i / pairs;
  let b = (i % pairs) * 2u;
  var z = block(n, b, blocks);
  if (b + 1u < blocks) { z |= block(n, b + 1u, blocks) << 4u; }
  zp[i] = z;
}
