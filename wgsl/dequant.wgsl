// dequant: GGUF block-quantized weights → float32, on the GPU at load time.
//   src: the tensor's raw bytes (as u32 words, little-endian); out: [rows, cols] f32
//   Q8_0 block (32 values, 34 bytes): f16 d, 32 × i8 q          → d · q
//   Q4_0 block (32 values, 18 bytes): f16 d, 16 bytes of nibbles → d · (q − 8)
//   Q4_1 block (32 values, 20 bytes): f16 d, f16 m, 16 bytes      → d · q + m
//   (low nibbles are values 0–15 of a block, high nibbles 16–31, as ggml stores them)
//   head_dim > 0 undoes llama.cpp's RoPE row permutation of q/k weights: Hugging Face row
//   h·D + s·D/2 + j is GGUF row h·D + 2j + s.
// Work split: one invocation per (output row, block), 256 per workgroup, 2-D grid.

struct Params {
  rows: u32,
  cols: u32,
  head_dim: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> src: array<u32>;        // raw blocks
@group(0) @binding(2) var<storage, read_write> out: array<f32>;  // [rows, cols]

const WG = 256u;

fn byte_at(i: u32) -> u32 {
  return (src[i >> 2u] >> ((i & 3u) * 8u)) & 0xffu;
}

fn f16_at(i: u32) -> f32 {
  return unpack2x16float(byte_at(i) | (byte_at(i + 1u) << 8u)).x;
}

// (source block byte offset, first output index) of this invocation's block, or false.
fn locate(gid: vec3u, nwg: vec3u, block_bytes: u32) -> vec3u {
  let blocks = params.cols / 32u;
  let idx = gid.x + gid.y * nwg.x * WG;
  if (idx >= params.rows * blocks) { return vec3u(0u, 0u, 0u); }
  let r = idx / blocks;
  let b = idx % blocks;
  var src_row = r;
  let D = params.head_dim;
  if (D > 0u) {
    let rem = r % D;
    src_row = (r / D) * D + 2u * (rem % (D / 2u)) + rem / (D / 2u);
  }
  return vec3u((src_row * blocks + b) * block_bytes, r * params.cols + b * 32u, 1u);
}

@compute @workgroup_size(WG)
fn dequant_q8_0(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let at = locate(gid, nwg, 34u);
  if (at.z == 0u) { return; }
  let d = f16_at(at.x);
  for (var j = 0u; j < 32u; j++) {
    let q = i32(byte_at(at.x + 2u + j) << 24u) >> 24u;  // sign-extend the byte
    out[at.y + j] = d * f32(q);
  }
}

@compute @workgroup_size(WG)
fn dequant_q4_0(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let at = locate(gid, nwg, 18u);
  if (at.z == 0u) { return; }
  let d = f16_at(at.x);
  for (var j = 0u; j < 16u; j++) {
    let q = byte_at(at.x + 2u + j);
    out[at.y + j] = d * (f32(q & 15u) - 8.0);
    out[at.y + j + 16u] = d * (f32(q >> 4u) - 8.0);
  }
}

@compute @workgroup_size(WG)
fn dequant_q4_1(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let at = locate(gid, nwg, 20u);
  if (at.z == 0u) { return; }
  let d = f16_at(at.x);
  let m = f16_at(at.x + 2u);
  for (var j = 0u; j < 16u; j++) {
    let q = byte_at(at.x + 4u + j);
    out[at.y + j] = d * f32(q & 15u) + m;
    out[at.y + j + 16u] = d * f32(q >> 4u) + m;
  }
}
