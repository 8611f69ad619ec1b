// glu: h = act(gate) · up, the gated MLP's activation (in f32):
//   act = 0: SiLU, g · sigmoid(g) (Llama, Qwen);
//   act = 1: GELU, tanh approximation, 0.5 · g · (1 + tanh(u)), u = √(2/π) · (g + 0.044715 · g³)
//            (Gemma), computed as g · σ(2u), the same function without tanh's cancellation near −1.
// Without `gated` (GPT-2's MLP), h = act(gate): `up` is not read.
//   gate, up: [N] → h: [N]   (N = tokens × intermediate size)
// Work split: one invocation per element, 256 per workgroup, 2-D grid for large N.

struct Params {
  N: u32,
  act: u32,
  gated: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> gate: array<f32>;   // [N]
@group(0) @binding(2) var<storage, read> up: array<f32>;     // [N]
@group(0) @binding(3) var<storage, read_write> h: array<f32>;  // [N]

const WG = 256u;
const GELU_K = 0.7978845608028654;  // √(2/π)

@compute @workgroup_size(WG)
fn glu(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * nwg.x * WG;
  if (i >= params.N) { return; }
  let g = gate[i];
  var a: f32;
  if (params.act == 1u) {
    a = g / (1.0 + exp(-2.0 * GELU_K * (g + 0.044715 * g * g * g)));
  } else {
    a = g / (1.0 + exp(-g));
  }
  if (params.gated != 0u) { a *= up[i]; }
  h[i] = a;
}
