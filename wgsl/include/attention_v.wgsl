// attention_v: the vec4 load of a v row (binding `v`), masked as in attention_qk.

fn load_v(base: u32, d4: u32) -> vec4f {
  let d = d4 * 4u;
  if (d + 3u < params.D) { return vec4f(v[base + d], v[base + d + 1u], v[base + d + 2u], v[base + d + 3u]); }
  let m = lane_mask(d);
  return vec4f(v[base + min(d, params.D - 1u)] * m.x, v[base + min(d + 1u, params.D - 1u)] * m.y,
               v[base + min(d + 2u, params.D - 1u)] * m.z, v[base + min(d + 3u, params.D - 1u)] * m.w);
}
