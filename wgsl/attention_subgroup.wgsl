// attention_subgroup: attention.wgsl's forward pass for GPUs with subgroups of at least D/4 lanes.
// Same inputs, outputs and maths; only the work split differs:
//   a row (one query of one head) is spread over LANES = D/4 adjacent invocations, each holding
//   one vec4 of the query and of the output; q·k is summed across the row with subgroup
//   shuffles. 64 / LANES queries per workgroup walk the keys together, so every key row is read
//   once, coalesced, for all of them, and no invocation needs more than a few registers.
// Used when the adapter has `subgroups` with a minimum subgroup size ≥ LANES (a power of two).

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
@group(0) @binding(1) var<storage, read> q: array<f32>;          // [B·S, Hq·D]
@group(0) @binding(2) var<storage, read> k: array<f32>;          // [B·S, Hkv·D]
@group(0) @binding(3) var<storage, read> v: array<f32>;          // [B·S, Hkv·D]
@group(0) @binding(4) var<storage, read_write> o: array<f32>;    // [B·S, Hq·D]
@group(0) @binding(5) var<storage, read_write> lse: array<f32>;  // [B, Hq, S]

override LANES: u32 = 16u;  // D / 4: one vec4 of the head per lane
const WG = 64u;

fn row_sum(x: f32) -> f32 {  // sum over the LANES lanes of one row (they are adjacent in the subgroup)
  var s = x;
  for (var m = LANES / 2u; m > 0u; m >>= 1u) { s += subgroupShuffleXor(s, m); }
  return s;
}

fn load4(which: u32, base: u32) -> vec4f {
  if (which == 0u) { return vec4f(q[base], q[base + 1u], q[base + 2u], q[base + 3u]); }
  if (which == 1u) { return vec4f(k[base], k[base + 1u], k[base + 2u], k[base + 3u]); }
  return vec4f(v[base], v[base + 1u], v[base + 2u], v[base + 3u]);
}

@compute @workgroup_size(WG)
fn attention_subgroup(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u,
                      @builtin(local_invocation_index) li: u32) {
  let p = params;
  let rows = WG / LANES;
  let blocks = (p.S + rows - 1u) / rows;
  let w = wg.x + wg.y * nwg.x;  // (b · Hq + h) · blocks + block
  if (w >= p.B * p.Hq * blocks) { return; }
  let block = w % blocks;
  let h = (w / blocks) % p.Hq;
  let b = w / (blocks * p.Hq);
  let g = h / (p.Hq / p.Hkv);
  let lane = li % LANES;
  let i = block * rows + li / LANES;
  let ic = min(i, p.S - 1u);
  let q_base = (b * p.S + ic) * p.Hq * p.D + h * p.D + lane * 4u;
  let qv = load4(0u, q_base) * p.scale;
  var acc = vec4f(0.0);
  var m = -3.4e38;
  var l = 0.0;
  let j_end = min(p.S, (block + 1u) * rows);
  let stride = p.Hkv * p.D;
  let kv0 = b * p.S * stride + g * p.D + lane * 4u;
  var j = 0u;
  // Four keys at a time: their dot products and shuffles are independent, so they overlap;
  // the running max and sum take one correction per four keys. Keys past the row's query are
  // masked out (weight 0).
  for (; j + 4u <= j_end; j += 4u) {
    let base = kv0 + j * stride;
    let s0 = row_sum(dot(qv, load4(1u, base)));
    let s1 = row_sum(dot(qv, load4(1u, base + stride)));
    let s2 = row_sum(dot(qv, load4(1u, base + 2u * stride)));
    let s3 = row_sum(dot(qv, load4(1u, base + 3u * stride)));
    let ok = vec4<bool>(j <= i, j + 1u <= i, j + 2u <= i, j + 3u <= i);
    let sv = select(vec4f(-3.4e38), vec4f(s0, s1, s2, s3), ok);
    let m_new = max(m, max(max(sv.x, sv.y), max(sv.z, sv.w)));
    let correction = exp(m - m_new);
    let wv = select(vec4f(0.0), exp(sv - vec4f(m_new)), ok);
    l = l * correction + wv.x + wv.y + wv.z + wv.w;
    acc = acc * correction + wv.x * load4(2u, base) + wv.y * load4(2u, base + stride)
        + wv.z * load4(2u, base + 2u * stride) + wv.w * load4(2u, base + 3u * stride);
    m = m_new;
  }
  for (; j < j_end; j++) {
    let kv_base = (b * p.S + j) * p.Hkv * p.D + g * p.D + lane * 4u;
    let s = row_sum(dot(qv, load4(1u, kv_base)));
    if (j <= i) {
      let m_new = max(m, s);
      let correction = exp(m - m_new);
      let wj = exp(s - m_new);
      l = l * correction + wj;
      acc = acc * correction + wj * load4(2u, kv_base);
      m = m_new;
    }
  }
  if (i < p.S) {
    let out = acc / l;
    o[q_base] = out.x; o[q_base + 1u] = out.y; o[q_base + 2u] = out.z; o[q_base + 3u] = out.w;
    if (lane == 0u) { lse[(b * p.Hq + h) * p.S + i] = m + log(l); }
  }
}
