// attention_lanes: attention.wgsl's forward pass (same inputs, outputs and maths) for GPUs with
// subgroups, head sizes a multiple of 16. As attention_tiled.wgsl, the keys are staged through
// workgroup memory in tiles of KEYS rows; a query row is spread over LANES = D/16 adjacent
// invocations (no wider than the subgroup), lane l holding the row's vec4s l, l + LANES,
// l + 2·LANES and l + 3·LANES of the query and of the output in named registers, so each
// invocation needs few registers and the GPU has LANES times as many invocations to switch
// between. Four keys' partial dot products are summed across the row's lanes at once with
// subgroup shuffles; the running max and sum take one correction per four keys.

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
@group(0) @binding(1) var<storage, read> q: array<vec4f>;          // [B·S, Hq·D]
@group(0) @binding(2) var<storage, read> k: array<vec4f>;          // [B·S, Hkv·D]
@group(0) @binding(3) var<storage, read> v: array<vec4f>;          // [B·S, Hkv·D]
@group(0) @binding(4) var<storage, read_write> o: array<vec4f>;    // [B·S, Hq·D]
@group(0) @binding(5) var<storage, read_write> lse: array<f32>;    // [B, Hq, S]

override LANES: u32 = 4u;       // invocations per row: D / 16
override KEYS: u32 = 32u;       // keys per tile, a multiple of 4 with KEYS · D/4 ≤ TILE
const TILE = 512u;
override WG: u32 = 256u;  // invocations per workgroup: 64 rows of LANES (at most 256)

var<workgroup> kt: array<vec4f, TILE>;
var<workgroup> vt: array<vec4f, TILE>;

//! include lanes_sum

// x · the four keys at tile rows t … t+3 (vec4 `at` of each row).
//! include lanes_keys

// Σ w_n · value row t + n (vec4 `at` of each row).
fn mix_values(w: vec4f, t: u32, at: u32) -> vec4f {
  let d4 = 4u * LANES;
  let e = t * d4 + at;
  return w.x * vt[e] + w.y * vt[e + d4] + w.z * vt[e + 2u * d4] + w.w * vt[e + 3u * d4];
}

@compute @workgroup_size(WG)
fn attention_lanes(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u,
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
  let q_row = ((b * p.S + min(i, p.S - 1u)) * p.Hq + h) * d4 + lane;
  let q0 = q[q_row] * p.scale;
  let q1 = q[q_row + LANES] * p.scale;
  let q2 = q[q_row + 2u * LANES] * p.scale;
  let q3 = q[q_row + 3u * LANES] * p.scale;
  var acc0 = vec4f(0.0);
  var acc1 = vec4f(0.0);
  var acc2 = vec4f(0.0);
  var acc3 = vec4f(0.0);
  var m = -3.4e38;
  var l = 0.0;
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
      let s = row_sum(dot_keys(q0, jj, lane) + dot_keys(q1, jj, lane + LANES)
                      + dot_keys(q2, jj, lane + 2u * LANES) + dot_keys(q3, jj, lane + 3u * LANES));
      let j = j0 + jj;
      let ok = vec4<bool>(j <= i, j + 1u <= i, j + 2u <= i, j + 3u <= i);
      let sv = select(vec4f(-3.4e38), s, ok);
      let m_new = max(m, max(max(sv.x, sv.y), max(sv.z, sv.w)));
      let correction = exp(m - m_new);
      let wv = select(vec4f(0.0), exp(sv - vec4f(m_new)), ok);
      l = l * correction + wv.x + wv.y + wv.z + wv.w;
      acc0 = acc0 * correction + mix_values(wv, jj, lane);
      acc1 = acc1 * correction + mix_values(wv, jj, lane + LANES);
      acc2 = acc2 * correction + mix_values(wv, jj, lane + 2u * LANES);
      acc3 = acc3 * correction + mix_values(wv, jj, lane + 3u * LANES);
      m = m_new;
    }
  }
  if (i < p.S) {
    let inv = 1.0 / l;
    o[q_row] = acc0 * inv;
    o[q_row + LANES] = acc1 * inv;
    o[q_row + 2u * LANES] = acc2 * inv;
    o[q_row + 3u * LANES] = acc3 * inv;
    if (lane == 0u) { lse[(b * p.Hq + h) * p.S + i] = m + log(l); }
  }
}
