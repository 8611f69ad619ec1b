// lanes_keys: four query-key dot products against keys staged transposed in workgroup memory
// (`kt`, LANES vec4 columns per key row), for the subgroup attention kernels.

fn dot_keys(x: vec4f, t: u32, at: u32) -> vec4f {
  let d4 = 4u * LANES;
  let e = t * d4 + at;
  return vec4f(dot(x, kt[e]), dot(x, kt[e + d4]), dot(x, kt[e + 2u * d4]), dot(x, kt[e + 3u * d4]));
}
