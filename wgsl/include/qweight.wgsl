// qweight: reading a frozen weight kept quantized on the GPU (QLoRA). The layout (ops.QuantFormat;
// written by quantize.wgsl at load):
//   codes:   Q_BITS (4 or 8) per value, row-major over the [rows, cols] matrix, packed little-end
//            first into u32 words (value e in word e / (32 / Q_BITS) at bit (e % (32 / Q_BITS)) · Q_BITS)
//   scales:  one f32 per group of Q_GROUP consecutive values, from word `scales`
//   offsets: one f32 per group, from word scales + groups (affine types only)
// A value is scale · code − offset (every GGUF type: the products are exact in f32, so the value
// equals gguf-py's dequantize bit for bit), or, with Q_TABLE, NF4[code] · scale (bitsandbytes'
// NF4 with its absmax). Q_BITS = 0 means the weight is not quantized.
override Q_BITS: u32 = 0u;
override Q_GROUP: u32 = 32u;
override Q_TABLE: bool = false;

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

// Value e from the word that holds its code and its group's scale and offset.
fn q_value(word: u32, e: u32, scale: f32, offset: f32) -> f32 {
  let bits = max(Q_BITS, 4u);
  let code = (word >> ((e % q_per_word()) * bits)) & ((1u << bits) - 1u);
  if (Q_TABLE) { return NF4[code] * scale; }
  return scale * f32(code) - offset;
}
