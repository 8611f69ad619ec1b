// attention_backward_dq_lanes: attention_backward_dq_tiled.wgsl (same bindings and maths) for GPUs
// with subgroups, head sizes a multiple of 16: keys staged through workgroup memory in tiles of
// KEYS rows, a query row spread over LANES = D/16 adjacent invocations (lane l holds the row's
// vec4s l, l + LANES, l + 2·LANES, l + 3·LANES of q_i, do_i and dq_i in named registers), dot
// products summed across the row with subgroup shuffles, four keys at a time.
//   delta_i = do_i · o_i,  p_ij = exp(scale · q_i·k_j − lse_i),
//   dq_i = scale · Σ_j≤i p_ij (do_i·v_j − delta_i) k_j.  delta is written for the dk/dv pass.

enable subgroups;

struct Params {
  B: u32,
  S: u32,
  Hq: u32,
  Hkv: u32,
  D: u32,
  scale: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> q: array<vec4f>;             // [B·S, Hq·D]
@group(0) @binding(2) var<storage, read> k: array<vec4f>;             // [B·S, Hkv·D]
@group(0) @binding(3) var<storage, read> v: array<vec4f>;             // [B·S, Hkv·D]
@group(0) @binding(4) var<storage, read> o: array<vec4f>;             // [B·S, Hq·D]
@group(0) @binding(5) var<storage, read> d_o: array<vec4f>;           // [B·S, Hq·D]
@group(0) @binding(6) var<storage, read> lse: array<f32>;             // [B, Hq, S]
@group(0) @binding(7) var<storage, read_write> dq: array<vec4f>;      // [B·S, Hq·D]
@group(0) @binding(8) var<storage, read_write> delta: array<f32>;     // [B, Hq, S]

override LANES: u32 = 4u;       // invocations per row: D / 16
override KEYS: u32 = 32u;       // keys per tile, a multiple of 4 with KEYS · D/4 ≤ TILE
const TILE = 512u;
override WG: u32 = 256u;  // invocations per workgroup: 64 rows of LANES (at most 256)

var<workgroup> kt: array<vec4f, TILE>;
var<workgroup> vt: array<vec4f, TILE>;

//! include lanes_sum

// x · the four keys (values) at tile rows t … t+3 (vec4 `at` of each row).
//! include lanes_keys

fn dot_values(x: vec4f, t: u32, at: u32) -> vec4f {
  let d4 = 4u * LANES;
  let e = t * d4 + at;
  return vec4f(dot(x, vt[e]), dot(x, vt[e + d4]), dot(x, vt[e + 2u * d4]), dot(x, vt[e + 3u * d4]));
}

// Σ f_n · key row t + n (vec4 `at` of each row).
fn mix_keys(f: vec4f, t: u32, at: u32) -> vec4f {
  let d4 = 4u * LANES;
  let e = t * d4 + at;
  return f.x * kt[e] + f.y * kt[e + d4] + f.z * kt[e + 2u * d4] + f.w * kt[e + 3u * d4];
}

@compute @workgroup_size(WG)
fn attention_backward_dq_lanes(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u,
                               @builtin(local_invocation_index) li: u32) {
  let p = params;
  let d4 = 4u * LANES;
  let rows = WG / LANES;
  let blocks = (p.S + rows - 1u) / rows;
  let w = wg.x + wg.y * nwg.x;
  if (w >= p.B * p.Hq * blocks) { return; }
  // The longest blocks first (the last queries meet the most keys), every head's at once:
  // the GPU's last workgroups are short ones, not a tail of long ones.
  let block = blocks - 1u - w / (p.B * p.Hq);
  let h = (w % (p.B * p.Hq)) % p.Hq;
  let b = (w % (p.B * p.Hq)) / p.Hq;
  let g = h / (p.Hq / p.Hkv);
  let lane = li % LANES;
  let i = block * rows + li / LANES;
  let ic = min(i, p.S - 1u);
  let q_row = ((b * p.S + ic) * p.Hq + h) * d4 + lane;
  let L = LANES;
  let q0 = q[q_row] * p.scale;
  let q1 = q[q_row + L] * p.scale;
  let q2 = q[q_row + 2u * L] * p.scale;
  let q3 = q[q_row + 3u * L] * p.scale;
  let do0 = d_o[q_row];
  let do1 = d_o[q_row + L];
  let do2 = d_o[q_row + 2u * L];
  let do3 = d_o[q_row + 3u * L];
  let part = dot(do0, o[q_row]) + dot(do1, o[q_row + L]) + dot(do2, o[q_row + 2u * L]) + dot(do3, o[q_row + 3u * L]);
  let dl = row_sum(vec4f(part)).x;
  let row = (b * p.Hq + h) * p.S + ic;
  let lse_i = lse[row];
  var acc0 = vec4f(0.0);
  var acc1 = vec4f(0.0);
  var acc2 = vec4f(0.0);
  var acc3 = vec4f(0.0);
  let j_end = min(p.S, (block + 1u) * rows);
  let kv_stride = p.Hkv * d4;
  let kv0 = b * p.S * kv_stride + g * d4;
  for (var j0 = 0u; j0 < j_end; j0 += KEYS) {
    workgroupBarrier();
    for (var t = li; t < KEYS * d4; t += WG) {
      let src = kv0 + min(j0 + t / d4, p.S - 1u) * kv_stride + t % d4;
      kt[t] = k[src];
      vt[t] = v[src];
    }
    workgroupBarrier();
    for (var jj = 0u; jj < KEYS; jj += 4u) {
      let s = row_sum(dot_keys(q0, jj, lane) + dot_keys(q1, jj, lane + L)
                      + dot_keys(q2, jj, lane + 2u * L) + dot_keys(q3, jj, lane + 3u * L));
      let dp = row_sum(dot_values(do0, jj, lane) + dot_values(do1, jj, lane + L)
                       + dot_values(do2, jj, lane + 2u * L) + dot_values(do3, jj, lane + 3u * L));
      let j = j0 + jj;
      let ok = vec4<bool>(j <= i, j + 1u <= i, j + 2u <= i, j + 3u <= i);
      let f = select(vec4f(0.0), exp(s - vec4f(lse_i)) * (dp - vec4f(dl)) * p.scale, ok);
      acc0 += mix_keys(f, jj, lane);
      acc1 += mix_keys(f, jj, lane + L);
      acc2 += mix_keys(f, jj, lane + 2u * L);
      acc3 += mix_keys(f, jj, lane + 3u * L);
    }
  }
  if (i < p.S) {
    dq[q_row] = acc0;
    dq[q_row + L] = acc1;
    dq[q_row + 2u * L] = acc2;
    dq[q_row + 3u * L] = acc3;
    if (lane == 0u) { delta[row] = dl; }
  }
}
