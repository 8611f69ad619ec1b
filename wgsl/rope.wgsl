// rope: rotary position embedding in place, Hugging Face's rotate_half convention.
//   x: [T, H, D] (a q or k projection), pos: [T] token positions, inv_freq: [D/2]
//   (1/theta^(2i/D), with Llama-3 scaling applied by the host).
//   For i < D/2, angle a = pos · inv_freq[i], c = cos a, s = sign · sin a:
//     x[i] ← x[i]·c − x[i+D/2]·s,   x[i+D/2] ← x[i+D/2]·c + x[i]·s
//   sign = +1 rotates (forward); sign = −1 undoes the rotation, which is the backward pass.
//   y: [T, H2, D], rotated in the same dispatch (queries and keys together; H2 = 0: none).
// Work split: one invocation per (t, h, i) of x, then of y, 256 per workgroup, 2-D grid.

struct Params {
  T: u32,
  H: u32,
  H2: u32,
  D: u32,
  sign: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> pos: array<u32>;        // [T]
@group(0) @binding(2) var<storage, read> inv_freq: array<f32>;   // [D/2]
@group(0) @binding(3) var<storage, read_write> x: array<f32>;    // [T, H, D]
@group(0) @binding(4) var<storage, read_write> y: array<f32>;    // [T, H2, D]

const WG = 256u;

@compute @workgroup_size(WG)
fn rope(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let half = params.D / 2u;
  var idx = gid.x + gid.y * nwg.x * WG;
  let in_x = params.T * params.H * half;
  let second = idx >= in_x;
  if (second) { idx -= in_x; }
  let H = select(params.H, params.H2, second);
  if (idx >= params.T * H * half) { return; }
  let i = idx % half;
  let row = idx / half;          // t * H + h
  let t = row / H;
  let a = f32(pos[t]) * inv_freq[i];
  let c = cos(a);
  let s = params.sign * sin(a);
  let base = row * params.D;
  if (second) {
    let y1 = y[base + i];
    let y2 = y[base + i + half];
    y[base + i] = y1 * c - y2 * s;
    y[base + i + half] = y2 * c + y1 * s;
    return;
  }
  let x1 = x[base + i];
  let x2 = x[base + i + half];
  x[base + i] = x1 * c - x2 * s;
  x[base + i + half] = x2 * c + x1 * s;
}
