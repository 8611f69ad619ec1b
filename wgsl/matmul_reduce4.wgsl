// matmul_reduce4: matmul_reduce.wgsl for large products with M·N a multiple of 4, four elements
// per invocation as vec4s (fewer, wider loads: the split-K partials of the model's [T, C]
// products and LoRA's gradient slices).
//   partial: [splits, MN4] vec4s, C: [MN4] vec4s; C = alpha · Σ_z partial[z] + beta · (C_in or C)
// Work split: one invocation per vec4 of C, 256 per workgroup, 2-D grid; the splits are added
// in order, so results are deterministic.

struct Params {
  MN4: u32,
  splits: u32,
  alpha: f32,
  beta: f32,
  c_in: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> partial: array<vec4f>;  // [splits, MN4]
@group(0) @binding(2) var<storage, read> C_in: array<vec4f>;     // [MN4] (c_in = 1)
@group(0) @binding(3) var<storage, read_write> C: array<vec4f>;  // [MN4]

const WG = 256u;

@compute @workgroup_size(WG)
fn matmul_reduce4(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let p = params;
  let i = gid.x + gid.y * nwg.x * WG;
  if (i >= p.MN4) { return; }
  var s = vec4f(0.0);
  for (var z = 0u; z < p.splits; z++) { s += partial[z * p.MN4 + i]; }
  var v = p.alpha * s;
  if (p.beta != 0.0) {
    if (p.c_in != 0u) { v += p.beta * C_in[i]; } else { v += p.beta * C[i]; }
  }
  C[i] = v;
}
