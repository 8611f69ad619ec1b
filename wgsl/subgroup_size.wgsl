// subgroup_size: every invocation of one 64-invocation workgroup writes the subgroup size it
// runs with, so the engine learns the real width where the adapter's reported range is only a
// bound (wgpu-native reports 4…128 everywhere). Used once at start-up.
//   out: [64] u32 (N = 64 always; Params keeps the binding layout conventional)

enable subgroups;

struct Params {
  N: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> out: array<u32>;  // [64]

@compute @workgroup_size(64)
fn subgroup_size(@builtin(local_invocation_index) li: u32, @builtin(subgroup_size) size: u32) {
  if (li < params.N) { out[li] = size; }
}
