// AdaLoRA's module table (lora.LoraState.adalora_table): per adapted module, TABLE u32 words
//   [a_off, e_off, r, in_f, b_off0, rows0, b_off1, rows1, b_off2, rows2, t_base, rows]
// offsets in floats into the flat LoRA buffers. A module's B may lie in up to three parts (a fused
// module: Phi-3's qkv_proj, GPT-2's c_attn), each [rows_p, r]; `rows` is their sum. t_base: the
// module's first triplet in the per-triplet arrays (scores, mask).
const TABLE = 12u;

// Row `o` (0 ≤ o < rows) of module `d`'s B as a float offset of its first element.
fn b_row(table_d: u32, o: u32, r: u32) -> u32 {
  var row = o;
  for (var p = 0u; p < 3u; p++) {
    let rows_p = adalora_table[table_d + 5u + 2u * p];
    if (row < rows_p) { return adalora_table[table_d + 4u + 2u * p] + row * r; }
    row -= rows_p;
  }
  return 0u;
}
