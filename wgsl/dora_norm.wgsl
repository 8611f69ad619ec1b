// dora_norm: DoRA's weight norm, one per output row, as PEFT computes it (the norm of the
// adapted weight along its input dimension):
//   norms[j] = ‖W[j, :] + s · B[j, :] · A‖₂ for j < N
//   W: [N, K] float32 (or float16 pairs with W_F16), A: [r, K], B: [N, r] (views of the adapter),
//   norms: [N]. s = 0 gives the rows' norms of W alone (DoRA's initial magnitude, and the norms of a
//   merged matrix); A and B are then not read.
// Work split: one workgroup of 64 invocations per row; each sums the squares of every 64th
// column (each value W + s · Σ_k B[j, k] · A[k, i], r products), then a tree sum in workgroup
// memory. Once per optimizer step per DoRA module; the product with A reads A's columns,
// neighbouring invocations neighbouring addresses.

struct Params {
  N: u32,
  K: u32,
  r: u32,
  s: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> W: array<u32>;        // [N, K]: f32 bits, or f16 pairs
@group(0) @binding(2) var<storage, read> A: array<f32>;        // [r, K]
@group(0) @binding(3) var<storage, read> B: array<f32>;        // [N, r]
@group(0) @binding(4) var<storage, read_write> norms: array<f32>;  // [N]

const WG = 64u;

override W_F16: bool = false;

var<workgroup> partial: array<f32, 64>;

fn w_at(e: u32) -> f32 {
  if (W_F16) { return unpack2x16float(W[e / 2u])[e % 2u]; }
  return bitcast<f32>(W[e]);
}

@compute @workgroup_size(WG)
fn dora_norm(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) li: u32) {
  let j = wg.x + wg.y * 65535u;
  let K = params.K;
  var acc = 0.0;
  if (j < params.N) {
    for (var i = li; i < K; i += WG) {
      var v = w_at(j * K + i);
      if (params.s != 0.0) {
        var d = 0.0;
        for (var k = 0u; k < params.r; k++) {
          d += B[j * params.r + k] * A[k * K + i];
        }
        v += params.s * d;
      }
      acc += v * v;
    }
  }
  partial[li] = acc;
  workgroupBarrier();
  for (var half = WG / 2u; half > 0u; half /= 2u) {
    if (li < half) { partial[li] += partial[li + half]; }
    workgroupBarrier();
  }
  if (li == 0u && j < params.N) { norms[j] = sqrt(partial[0]); }
}
