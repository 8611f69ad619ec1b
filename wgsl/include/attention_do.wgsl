// attention_do: the vec4 load of a row of the output's gradient (binding `d_o`), masked as in
// attention_qk.

fn load_d_o(base: u32, d4: u32) -> vec4f {
  let d = d4 * 4u;
  if (d + 3u < params.D) { return vec4f(d_o[base + d], d_o[base + d + 1u], d_o[base + d + 2u], d_o[base + d + 3u]); }
  let m = lane_mask(d);
  return vec4f(d_o[base + min(d, params.D - 1u)] * m.x, d_o[base + min(d + 1u, params.D - 1u)] * m.y,
               d_o[base + min(d + 2u, params.D - 1u)] * m.z, d_o[base + min(d + 3u, params.D - 1u)] * m.w);
}
