// attention_backward_dq_subgroup: attention_backward_dq.wgsl for GPUs with subgroups of at least
// D/4 lanes (same bindings and maths). A query row is spread over LANES = D/4 adjacent
// invocations holding one vec4 each of q_i, do_i and dq_i; dot products are summed across the row
// with subgroup shuffles, and 64 / LANES queries walk the keys together (each key row is read
// once, coalesced, for all of them).

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
@group(0) @binding(1) var<storage, read> q: array<f32>;             // [B·S, Hq·D]
@group(0) @binding(2) var<storage, read> k: array<f32>;             // [B·S, Hkv·D]
@group(0) @binding(3) var<storage, read> v: array<f32>;             // [B·S, Hkv·D]
@group(0) @binding(4) var<storage, read> o: array<f32>;             // [B·S, Hq·D]
@group(0) @binding(5) var<storage, read> d_o: array<f32>;           // [B·S, Hq·D]
@group(0) @binding(6) var<storage, read> lse: array<f32>;           // [B, Hq, S]
@group(0) @binding(7) var<storage, read_write> dq: array<f32>;      // [B·S, Hq·D]
@group(0) @binding(8) var<storage, read_write> delta: array<f32>;   // [B, Hq, S]

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
  if (which == 2u) { return vec4f(v[base], v[base + 1u], v[base + 2u], v[base + 3u]); }
  if (which == 3u) { return vec4f(o[base], o[base + 1u], o[base + 2u], o[base + 3u]); }
  return vec4f(d_o[base], d_o[base + 1u], d_o[base + 2u], d_o[base + 3u]);
}

@compute @workgroup_size(WG)
fn attention_backward_dq_subgroup(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u,
                                  @builtin(local_invocation_index) li: u32) {
  let p = params;
  let rows = WG / LANES;
  let blocks = (p.S + rows - 1u) / rows;
  let w = wg.x + wg.y * nwg.x;
  if (w >= p.B * p.Hq * blocks) { return; }
  let block = w % blocks;
  let h = (w / blocks) % p.Hq;
  let b = w / (blocks * p.Hq);
  let g = h / (p.Hq / p.Hkv);
  let lane = li % LANES;
  let i = block * rows + li / LANES;
  let ic = min(i, p.S - 1u);
  let q_base = (b * p.S + ic) * p.Hq * p.D + h * p.D + lane * 4u;
  let row = (b * p.Hq + h) * p.S + ic;
  let qv = load4(0u, q_base) * p.scale;
  let dov = load4(4u, q_base);
  let di = row_sum(dot(dov, load4(3u, q_base)));
  let li_row = lse[row];
  var acc = vec4f(0.0);
  let j_end = min(p.S, (block + 1u) * rows);
  let stride = p.Hkv * p.D;
  let kv0 = b * p.S * stride + g * p.D + lane * 4u;
  var j = 0u;
  for (; j + 4u <= j_end; j += 4u) {  // four keys at a time: independent shuffles overlap
    let base = kv0 + j * stride;
    let k0 = load4(1u, base);
    let k1 = load4(1u, base + stride);
    let k2 = load4(1u, base + 2u * stride);
    let k3 = load4(1u, base + 3u * stride);
    let s = vec4f(row_sum(dot(qv, k0)), row_sum(dot(qv, k1)), row_sum(dot(qv, k2)), row_sum(dot(qv, k3)));
    let dp = vec4f(row_sum(dot(dov, load4(2u, base))), row_sum(dot(dov, load4(2u, base + stride))),
                   row_sum(dot(dov, load4(2u, base + 2u * stride))), row_sum(dot(dov, load4(2u, base + 3u * stride))));
    let ok = vec4<bool>(j <= i, j + 1u <= i, j + 2u <= i, j + 3u <= i);
    let f = select(vec4f(0.0), exp(s - vec4f(li_row)) * (dp - vec4f(di)) * p.scale, ok);
    acc += f.x * k0 + f.y * k1 + f.z * k2 + f.w * k3;
  }
  for (; j < j_end; j++) {
    let kv_base = (b * p.S + j) * p.Hkv * p.D + g * p.D + lane * 4u;
    let kv = load4(1u, kv_base);
    let s = row_sum(dot(qv, kv));
    let dp = row_sum(dot(dov, load4(2u, kv_base)));
    if (j <= i) { acc += exp(s - li_row) * (dp - di) * p.scale * kv; }
  }
  if (i < p.S) {
    dq[q_base] = acc.x; dq[q_base + 1u] = acc.y; dq[q_base + 2u] = acc.z; dq[q_base + 3u] = acc.w;
    if (lane == 0u) { delta[row] = di; }
  }
}
