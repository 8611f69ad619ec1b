// attention_backward_dkv_lanes: each query head's share of dk and dv (the maths of
// attention_backward_dkv_tiled.wgsl; head_sum.wgsl adds a kv group's shares) for GPUs with
// subgroups. A key row is spread over LANES adjacent invocations (lane l holds the row's vec4s
// l, l + LANES, … of k_j, v_j, dk_j and dv_j); the workgroup's WG / LANES keys walk the queries
// i ≥ its first key in tiles of QUERIES rows of q and do (with their lse and delta) staged in
// workgroup memory; dot products are summed across the row with subgroup shuffles.
//   p_ij = exp(scale · q_i·k_j − lse_i),  dv_j = Σ_i≥j p_ij do_i,
//   dk_j = scale · Σ_i≥j p_ij (do_i·v_j − delta_i) q_i.

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
@group(0) @binding(1) var<storage, read> q: array<vec4f>;                // [B·S, Hq·D]
@group(0) @binding(2) var<storage, read> k: array<vec4f>;                // [B·S, Hkv·D]
@group(0) @binding(3) var<storage, read> v: array<vec4f>;                // [B·S, Hkv·D]
@group(0) @binding(4) var<storage, read> d_o: array<vec4f>;              // [B·S, Hq·D]
@group(0) @binding(5) var<storage, read> lse: array<f32>;                // [B, Hq, S]
@group(0) @binding(6) var<storage, read> delta: array<f32>;              // [B, Hq, S]
@group(0) @binding(7) var<storage, read_write> dk_heads: array<vec4f>;   // [B·S, Hq·D]
@group(0) @binding(8) var<storage, read_write> dv_heads: array<vec4f>;   // [B·S, Hq·D]

override HEAD_DIM4: u32 = 16u;  // D / 4
override LANES: u32 = 4u;       // invocations per row
override PER: u32 = 4u;         // HEAD_DIM4 / LANES
override QUERIES: u32 = 28u;    // queries per tile, a multiple of 4, ≤ 64, QUERIES · HEAD_DIM4 ≤ TILE
const TILE = 496u;
const MAX_PER = 32u;
const WG = 256u;

var<workgroup> qt: array<vec4f, TILE>;
var<workgroup> dt: array<vec4f, TILE>;
var<workgroup> lse_t: array<f32, 64>;
var<workgroup> delta_t: array<f32, 64>;

fn row_sum(x: vec4f) -> vec4f {  // over the LANES lanes of a row (adjacent in the subgroup)
  var s = x;
  for (var m = LANES / 2u; m > 0u; m >>= 1u) { s += subgroupShuffleXor(s, m); }
  return s;
}

@compute @workgroup_size(WG)
fn attention_backward_dkv_lanes(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u,
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
  let kv_row = ((b * p.S + min(j, p.S - 1u)) * p.Hkv + g) * HEAD_DIM4 + lane;
  var kr: array<vec4f, MAX_PER>;
  var vr: array<vec4f, MAX_PER>;
  var dk: array<vec4f, MAX_PER>;
  var dv: array<vec4f, MAX_PER>;
  for (var c = 0u; c < PER; c++) {
    kr[c] = k[kv_row + c * LANES] * p.scale;
    vr[c] = v[kv_row + c * LANES];
    dk[c] = vec4f(0.0);
    dv[c] = vec4f(0.0);
  }
  let q_stride = p.Hq * HEAD_DIM4;
  let q0 = b * p.S * q_stride + h * HEAD_DIM4;
  let rows0 = (b * p.Hq + h) * p.S;
  for (var i0 = block * rows; i0 < p.S; i0 += QUERIES) {
    workgroupBarrier();
    for (var t = li; t < QUERIES * HEAD_DIM4; t += WG) {
      let src = q0 + min(i0 + t / HEAD_DIM4, p.S - 1u) * q_stride + t % HEAD_DIM4;
      qt[t] = q[src];
      dt[t] = d_o[src];
    }
    if (li < QUERIES) {
      let row = rows0 + min(i0 + li, p.S - 1u);
      lse_t[li] = lse[row];
      delta_t[li] = delta[row];
    }
    workgroupBarrier();
    for (var ii = 0u; ii < QUERIES; ii += 4u) {
      let r0 = ii * HEAD_DIM4 + lane;
      var ps = vec4f(0.0);
      var pd = vec4f(0.0);
      for (var c = 0u; c < PER; c++) {
        let x = kr[c];
        let y = vr[c];
        let d = r0 + c * LANES;
        ps += vec4f(dot(x, qt[d]), dot(x, qt[d + HEAD_DIM4]), dot(x, qt[d + 2u * HEAD_DIM4]), dot(x, qt[d + 3u * HEAD_DIM4]));
        pd += vec4f(dot(y, dt[d]), dot(y, dt[d + HEAD_DIM4]), dot(y, dt[d + 2u * HEAD_DIM4]), dot(y, dt[d + 3u * HEAD_DIM4]));
      }
      let s = row_sum(ps);
      let dp = row_sum(pd);
      let i = i0 + ii;
      let ok = vec4<bool>(i >= j, i + 1u >= j, i + 2u >= j, i + 3u >= j) & (vec4u(i) + vec4u(0u, 1u, 2u, 3u) < vec4u(p.S));
      let pr = select(vec4f(0.0), exp(s - vec4f(lse_t[ii], lse_t[ii + 1u], lse_t[ii + 2u], lse_t[ii + 3u])), ok);
      let f = pr * (dp - vec4f(delta_t[ii], delta_t[ii + 1u], delta_t[ii + 2u], delta_t[ii + 3u])) * p.scale;
      for (var c = 0u; c < PER; c++) {
        let d = r0 + c * LANES;
        dv[c] += pr.x * dt[d] + pr.y * dt[d + HEAD_DIM4] + pr.z * dt[d + 2u * HEAD_DIM4] + pr.w * dt[d + 3u * HEAD_DIM4];
        dk[c] += f.x * qt[d] + f.y * qt[d + HEAD_DIM4] + f.z * qt[d + 2u * HEAD_DIM4] + f.w * qt[d + 3u * HEAD_DIM4];
      }
    }
  }
  if (j < p.S) {
    let out = ((b * p.S + j) * p.Hq + h) * HEAD_DIM4 + lane;
    for (var c = 0u; c < PER; c++) {
      dk_heads[out + c * LANES] = dk[c];
      dv_heads[out + c * LANES] = dv[c];
    }
  }
}
