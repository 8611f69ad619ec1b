// qweight: reading a frozen weight kept quantized on the GPU (QLoRA). The layout (ops.QUANT_DTYPES;
// written by quantize.wgsl at load), in u32 words:
//   codes:   Q_BITS (4 or 8) per value, row-major over the [rows, cols] matrix, packed little-end
//            first (value e in word e / (32 / Q_BITS) at bit (e % (32 / Q_BITS)) · Q_BITS)
//   heads:   one per group of Q_GROUP consecutive values, from word `scales` (q_head_bits() each,
//            packed little-end first)
//   supers:  K formats only, one word per super-block of 256 values, after the heads
// Q_FORMAT says what a head holds and how a value is made from its code q:
//   0 NF4:      an f32 absmax s;               NF4[q] · s (bitsandbytes' NF4)
//   1 blocks:   f16 d and f16 m;               d · (q − Q_ZERO) + m (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1)
//   2 K affine: u8 sc and u8 m; super f16 d and f16 dmin;  (d · sc) · q − dmin · m (Q4_K, Q5_K)
//   3 K signed: i8 sc; super f16 d;            (d · sc) · (q − 32) (Q6_K)
// These are gguf-py's own formulas (the GGUF blocks' scales kept as they are in the file), so every
// value equals its dequantize bit for bit. Q_BITS = 0 means the weight is not quantized.
override Q_BITS: u32 = 0u;
override Q_GROUP: u32 = 32u;
override Q_FORMAT: u32 = 0u;
override Q_ZERO: f32 = 0.0;

// bitsandbytes' NF4 levels (the normal-float code of QLoRA), as float32.
var<private> NF4: array<f32, 16> = array<f32, 16>(
  -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
  -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
  0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
  0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0);

fn q_per_word() -> u32 {
  return 32u / max(Q_BITS, 4u);
}

// The word of the codes that holds value e.
fn q_word(e: u32) -> u32 {
  return e / q_per_word();
}

fn q_head_bits() -> u32 {
  return select(select(32u, 16u, Q_FORMAT == 2u), 8u, Q_FORMAT == 3u);
}

// The word (from the codes' start) of group g's head, given where the heads start.
fn q_head(scales: u32, g: u32) -> u32 {
  return scales + g / (32u / q_head_bits());
}

// The word of group g's super-block (K formats; other formats: its head word, never read).
fn q_super(scales: u32, groups: u32, g: u32) -> u32 {
  if (Q_FORMAT < 2u) { return q_head(scales, g); }
  return scales + (groups * q_head_bits() + 31u) / 32u + g / (256u / Q_GROUP);
}

// Value e (of group g) from the words holding its code, its group's head and its super-block.
fn q_value(word: u32, e: u32, head: u32, sup: u32) -> f32 {
  let bits = max(Q_BITS, 4u);
  let q = f32((word >> ((e % q_per_word()) * bits)) & ((1u << bits) - 1u));
  let g = e / Q_GROUP;
  let hb = q_head_bits();
  let h = (head >> ((g % (32u / hb)) * hb)) & select(0xffffffffu, (1u << (hb & 31u)) - 1u, hb < 32u);
  if (Q_FORMAT == 0u) { return NF4[u32(q)] * bitcast<f32>(h); }
  if (Q_FORMAT == 1u) {
    let dm = unpack2x16float(h);
    return dm.x * (q - Q_ZERO) + dm.y;
  }
  let dd = unpack2x16float(sup);
  if (Q_FORMAT == 2u) { return (dd.x * f32(h & 0xffu)) * q - dd.y * f32(h >> 8u); }
  return (dd.x * f32(bitcast<i32>(h << 24u) >> 24u)) * (q - 32.0);
}
