// attention_qk: vec4 loads of q and k rows for the attention kernels (bindings `q`, `k` and
// params.D, the head size): four elements at a time, masked past the end of the row.

fn lane_mask(d: u32) -> vec4f {
  return vec4f(vec4<bool>(d < params.D, d + 1u < params.D, d + 2u < params.D, d + 3u < params.D));
}

fn load_q(base: u32, d4: u32) -> vec4f {
  let d = d4 * 4u;
  if (d + 3u < params.D) { return vec4f(q[base + d], q[base + d + 1u], q[base + d + 2u], q[base + d + 3u]); }
  let m = lane_mask(d);
  return vec4f(q[base + min(d, params.D - 1u)] * m.x, q[base + min(d + 1u, params.D - 1u)] * m.y,
               q[base + min(d + 2u, params.D - 1u)] * m.z, q[base + min(d + 3u, params.D - 1u)] * m.w);
}

fn load_k(base: u32, d4: u32) -> vec4f {
  let d = d4 * 4u;
  if (d + 3u < params.D) { return vec4f(k[base + d], k[base + d + 1u], k[base + d + 2u], k[base + d + 3u]); }
  let m = lane_mask(d);
  return vec4f(k[base + min(d, params.D - 1u)] * m.x, k[base + min(d + 1u, params.D - 1u)] * m.y,
               k[base + min(d + 2u, params.D - 1u)] * m.z, k[base + min(d + 3u, params.D - 1u)] * m.w);
}
