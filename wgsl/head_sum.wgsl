// head_sum: out[t, g·D + d] = Σ over the query heads h of kv group g of x[t, h·D + d]
// (grouped-query attention: the query heads that share a key/value head add their gradients).
//   x: [T, Hq·D] → out: [T, Hkv·D], and x2 → out2 in the same dispatch (keys' and values' gradients)
// Work split: one invocation per output element of out, then of out2, 256 per workgroup, 2-D grid.

struct Params {
  T: u32,
  Hq: u32,
  Hkv: u32,
  D: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;           // [T, Hq·D]
@group(0) @binding(2) var<storage, read> x2: array<f32>;          // [T, Hq·D]
@group(0) @binding(3) var<storage, read_write> out: array<f32>;   // [T, Hkv·D]
@group(0) @binding(4) var<storage, read_write> out2: array<f32>;  // [T, Hkv·D]

const WG = 256u;

@compute @workgroup_size(WG)
fn head_sum(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let p = params;
  var i = gid.x + gid.y * nwg.x * WG;
  let n = p.T * p.Hkv * p.D;
  let second = i >= n;
  if (second) { i -= n; }
  if (i >= n) { return; }
  let d = i % p.D;
  let g = (i / p.D) % p.Hkv;
  let t = i / (p.Hkv * p.D);
  let group = p.Hq / p.Hkv;
  var s = 0.0;
  for (var h = g * group; h < (g + 1u) * group; h++) {
    let at = (t * p.Hq + h) * p.D + d;
    s += select(x[at], x2[at], second);
  }
  if (second) { out2[i] = s; } else { out[i] = s; }
}
