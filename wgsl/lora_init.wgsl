// lora_init: PEFT's initialisation of a LoRA A matrix, seeded and reproducible on any GPU.
//   A[i] ~ U(−bound, bound), bound = 1/sqrt(fan_in): kaiming_uniform_(a = √5) as in
//   nn.Linear.reset_parameters (He et al. 2015; PEFT's LoraLayer.reset_lora_parameters).
//   B is zero-filled by the host. With sigma > 0 instead A[i] ~ N(0, sigma²) (AdaLoRA's A and B, PEFT's
//   AdaLoraLayer.reset_lora_parameters), by Box-Muller from two draws of the stream. The random stream is a PCG hash of (seed, offset + i), so a
//   tensor's values depend only on the seed and their place in the flat LoRA buffer, never on
//   the driver or the dispatch order.
// Work split: one invocation per element, 256 per workgroup, 2-D grid for large N.

struct Params {
  N: u32,
  offset: u32,
  seed: u32,
  bound: f32,
  sigma: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> A: array<f32>;  // the flat LoRA buffer; writes [offset, offset + N)

const WG = 256u;

//! include pcg

@compute @workgroup_size(WG)
fn lora_init(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * nwg.x * WG;
  if (i >= params.N) { return; }
  let r = pcg(pcg(params.seed) ^ (params.offset + i));
  let u = f32(r >> 8u) / 16777216.0;  // 24 random bits → [0, 1)
  if (params.sigma > 0.0) {
    let u1 = (f32(pcg(r) >> 8u) + 1.0) / 16777216.0;  // (0, 1]
    A[params.offset + i] = sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u) * params.sigma;
    return;
  }
  A[params.offset + i] = (2.0 * u - 1.0) * params.bound;
}
