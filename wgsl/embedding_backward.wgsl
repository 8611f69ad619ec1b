// embedding_backward: d_table[ids[t], :] += d_out[t, :] for every token t (the gradient of the
// embedding lookup, for when the embedding itself is trained).
//   ids: [T] u32, d_out: [T, C] → d_table: [V, C] (accumulated; zero it first for a fresh gradient)
// Work split: one invocation per column c, walking the tokens in order: a column is owned by one
// invocation, so repeated ids need no atomics and the sum order is fixed (deterministic).

struct Params {
  T: u32,
  C: u32,
  V: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;            // [T]
@group(0) @binding(2) var<storage, read> d_out: array<f32>;          // [T, C]
@group(0) @binding(3) var<storage, read_write> d_table: array<f32>;  // [V, C]

const WG = 64u;

@compute @workgroup_size(WG)
fn embedding_backward(@builtin(global_invocation_id) gid: vec3u) {
  let c = gid.x;
  if (c >= params.C) { return; }
  for (var t = 0u; t < params.T; t++) {
    let id = ids[t];
    if (id < params.V) { d_table[id * params.C + c] += d_out[t * params.C + c]; }
  }
}
