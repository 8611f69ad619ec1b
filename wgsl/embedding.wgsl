// embedding: out[t, :] = table[ids[t], :] · scale (token embedding lookup; ids outside [0, V)
// give 0; Gemma scales by √hidden, everything else by 1). With accumulate, out += that (GPT-2's
// position embeddings, ids the positions).
//   ids: [T] u32, table: [V, C] (f32, f16 pairs or quantized) → out: [T, C]
// Work split: one invocation per output element, 256 per workgroup, 2-D grid for large T·C.

struct Params {
  T: u32,
  C: u32,
  V: u32,
  scales: u32,  // a quantized table (Q_BITS > 0, include/qweight.wgsl): where its group heads start,
  groups: u32,  //   and how many groups it has
  scale: f32,
  accumulate: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;      // [T]
@group(0) @binding(2) var<storage, read> table: array<u32>;    // [V, C]: f32 bits, or f16 pairs (TABLE_F16)
@group(0) @binding(3) var<storage, read_write> out: array<f32>;  // [T, C]

const WG = 256u;
override TABLE_F16: bool = false;  // the table holds float16 pairs (frozen weights at half the memory)

//! include qweight

@compute @workgroup_size(WG)
fn embedding(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * nwg.x * WG;
  if (i >= params.T * params.C) { return; }
  let t = i / params.C;
  let c = i % params.C;
  let id = ids[t];
  var v = 0.0;
  if (id < params.V) {
    let e = id * params.C + c;
    if (Q_BITS > 0u) {
      let g = e / Q_GROUP;
      v = q_value(table[q_word(e)], e, table[q_head(params.scales, g)], table[q_super(params.scales, params.groups, g)]);
    } else if (TABLE_F16) {
      v = unpack2x16float(table[e / 2u])[e % 2u];
    } else {
      v = bitcast<f32>(table[e]);
    }
  }
  if (params.accumulate != 0u) { out[i] += v * params.scale; } else { out[i] = v * params.scale; }
}
