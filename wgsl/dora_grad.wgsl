// dora_grad: the gradient of DoRA's magnitude (the weight norm n held constant, as PEFT detaches
// it): dm[j] = beta · dm[j] + Σ_t dy[t, j] · p[t, j] / norms[j]
//   dy: [T, N] the output's gradient, p: [T, N] the projection before the magnitude (x · Wᵀ +
//   s · u · Bᵀ, kept by the forward pass), n: [N], dm: [N] (beta 1 accumulates micro-batches).
// Work split: workgroups of 64 columns × 4 row groups; each invocation sums every 4th row of
// its column (neighbouring invocations read neighbouring addresses), then the 4 partial sums
// are added in workgroup memory.

struct Params {
  T: u32,
  N: u32,
  beta: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> dy: array<f32>;        // [T, N]
@group(0) @binding(2) var<storage, read> p: array<f32>;         // [T, N]
@group(0) @binding(3) var<storage, read> norms: array<f32>;         // [N]
@group(0) @binding(4) var<storage, read_write> dm: array<f32>;  // [N]

const COLS = 64u;
const GROUPS = 4u;

var<workgroup> partial: array<f32, 256>;

@compute @workgroup_size(64, 4)
fn dora_grad(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let j = (wg.x + wg.y * 65535u) * COLS + lid.x;
  var acc = 0.0;
  if (j < params.N) {
    for (var t = lid.y; t < params.T; t += GROUPS) {
      acc += dy[t * params.N + j] * p[t * params.N + j];
    }
  }
  partial[lid.y * COLS + lid.x] = acc;
  workgroupBarrier();
  if (lid.y == 0u && j < params.N) {
    let total = partial[lid.x] + partial[COLS + lid.x] + partial[2u * COLS + lid.x] + partial[3u * COLS + lid.x];
    var v = total / norms[j];
    if (params.beta != 0.0) { v += params.beta * dm[j]; }
    dm[j] = v;
  }
}
