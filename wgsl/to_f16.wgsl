// to_f16: packs float32 values into float16 pairs (round to nearest), for frozen weights kept at
// half the memory. Works without the shader-f16 feature (pack2x16float).
//   x: [N] f32 → y: [ceil(N / 2)] u32, y[i] = (f16(x[2i + 1]) << 16) | f16(x[2i])
// Work split: one invocation per output word, 256 per workgroup, 2-D grid for large N.

struct Params {
  N: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;         // [N]
@group(0) @binding(2) var<storage, read_write> y: array<u32>;   // [ceil(N / 2)]

const WG = 256u;

@compute @workgroup_size(WG)
fn to_f16(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * nwg.x * WG;
  if (2u * i >= params.N) { return; }
  var hi = 0.0;
  if (2u * i + 1u < params.N) { hi = x[2u * i + 1u]; }
  y[i] = pack2x16float(vec2f(x[2u * i], hi));
}
