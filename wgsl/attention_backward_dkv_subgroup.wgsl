// attention_backward_dkv_subgroup: each query head's share of dk and dv (as
// attention_backward_dk.wgsl and attention_backward_dv.wgsl compute them; head_sum.wgsl adds a
// kv group's shares) for GPUs with subgroups of at least D/4 lanes. A key row is spread over
// LANES = D/4 adjacent invocations holding one vec4 each of k_j, v_j, dk_j and dv_j; dot products
// are summed across the row with subgroup shuffles; 64 / LANES keys walk the queries together.

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
@group(0) @binding(1) var<storage, read> q: array<f32>;                // [B·S, Hq·D]
@group(0) @binding(2) var<storage, read> k: array<f32>;                // [B·S, Hkv·D]
@group(0) @binding(3) var<storage, read> v: array<f32>;                // [B·S, Hkv·D]
@group(0) @binding(4) var<storage, read> d_o: array<f32>;              // [B·S, Hq·D]
@group(0) @binding(5) var<storage, read> lse: array<f32>;              // [B, Hq, S]
@group(0) @binding(6) var<storage, read> delta: array<f32>;            // [B, Hq, S]
@group(0) @binding(7) var<storage, read_write> dk_heads: array<f32>;   // [B·S, Hq·D]
@group(0) @binding(8) var<storage, read_write> dv_heads: array<f32>;   // [B·S, Hq·D]

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
  return vec4f(d_o[base], d_o[base + 1u], d_o[base + 2u], d_o[base + 3u]);
}

@compute @workgroup_size(WG)
fn attention_backward_dkv_subgroup(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u,
                                   @builtin(local_invocation_index) li: u32) {
  let p = params;
  let rows = WG / LANES;
  let blocks = (p.S + rows - 1u) / rows;
  let w = wg.x + wg.y * nwg.x;  // (b · Hq + h) · blocks + block of keys
  if (w >= p.B * p.Hq * blocks) { return; }
  let block = w % blocks;
  let h = (w / blocks) % p.Hq;
  let b = w / (blocks * p.Hq);
  let g = h / (p.Hq / p.Hkv);
  let lane = li % LANES;
  let j = block * rows + li / LANES;
  let jc = min(j, p.S - 1u);
  let kv_base = (b * p.S + jc) * p.Hkv * p.D + g * p.D + lane * 4u;
  let kv = load4(1u, kv_base) * p.scale;
  let vv = load4(2u, kv_base);
  var dk = vec4f(0.0);
  var dv = vec4f(0.0);
  let q_stride = p.Hq * p.D;
  var i = block * rows;
  for (; i + 4u <= p.S; i += 4u) {  // four queries at a time: independent shuffles overlap
    let base = (b * p.S + i) * q_stride + h * p.D + lane * 4u;
    let row = (b * p.Hq + h) * p.S + i;
    let q0 = load4(0u, base);
    let q1 = load4(0u, base + q_stride);
    let q2 = load4(0u, base + 2u * q_stride);
    let q3 = load4(0u, base + 3u * q_stride);
    let do0 = load4(3u, base);
    let do1 = load4(3u, base + q_stride);
    let do2 = load4(3u, base + 2u * q_stride);
    let do3 = load4(3u, base + 3u * q_stride);
    let s = vec4f(row_sum(dot(q0, kv)), row_sum(dot(q1, kv)), row_sum(dot(q2, kv)), row_sum(dot(q3, kv)));
    let dp = vec4f(row_sum(dot(do0, vv)), row_sum(dot(do1, vv)), row_sum(dot(do2, vv)), row_sum(dot(do3, vv)));
    let ok = vec4<bool>(i >= j, i + 1u >= j, i + 2u >= j, i + 3u >= j);
    let pij = select(vec4f(0.0), exp(s - vec4f(lse[row], lse[row + 1u], lse[row + 2u], lse[row + 3u])), ok);
    let f = pij * (dp - vec4f(delta[row], delta[row + 1u], delta[row + 2u], delta[row + 3u])) * p.scale;
    dv += pij.x * do0 + pij.y * do1 + pij.z * do2 + pij.w * do3;
    dk += f.x * q0 + f.y * q1 + f.z * q2 + f.w * q3;
  }
  for (; i < p.S; i++) {
    let q_base = (b * p.S + i) * p.Hq * p.D + h * p.D + lane * 4u;
    let row = (b * p.Hq + h) * p.S + i;
    let qv = load4(0u, q_base);
    let dov = load4(3u, q_base);
    let s = row_sum(dot(qv, kv));
    let dp = row_sum(dot(dov, vv));
    if (i >= j) {
      let pij = exp(s - lse[row]);
      dv += pij * dov;
      dk += pij * (dp - delta[row]) * p.scale * qv;
    }
  }
  if (j < p.S) {
    let out = (b * p.S + j) * p.Hq * p.D + h * p.D + lane * 4u;
    dk_heads[out] = dk.x; dk_heads[out + 1u] = dk.y; dk_heads[out + 2u] = dk.z; dk_heads[out + 3u] = dk.w;
    dv_heads[out] = dv.x; dv_heads[out + 1u] = dv.y; dv_heads[out + 2u] = dv.z; dv_heads[out + 3u] = dv.w;
  }
}
