// attention_backward_dkv_lanes: each query head's share of dk and dv (the maths of
// attention_backward_dkv_tiled.wgsl; head_sum.wgsl adds a kv group's shares) for GPUs with
// subgroups, head sizes a multiple of 16. A key row is spread over LANES = D/16 adjacent
// invocations (lane l holds the row's vec4s l, l + LANES, l + 2·LANES, l + 3·LANES of k_j, v_j,
// dk_j and dv_j in named registers); the workgroup's keys walk the queries i ≥ its first key
// in tiles of QUERIES rows of q and do (with their lse and delta) staged in workgroup memory;
// dot products are summed across the row with subgroup shuffles, four queries at a time.
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

override LANES: u32 = 4u;       // invocations per row: D / 16
override QUERIES: u32 = 28u;    // queries per tile, a multiple of 4, ≤ 64, QUERIES · D/4 ≤ TILE
const TILE = 496u;
override WG: u32 = 256u;  // invocations per workgroup: 64 rows of LANES (at most 256)

var<workgroup> qt: array<vec4f, TILE>;
var<workgroup> dt: array<vec4f, TILE>;
var<workgroup> lse_t: array<f32, 64>;
var<workgroup> delta_t: array<f32, 64>;

//! include lanes_sum

// x · the four queries (their do) at tile rows t … t+3 (vec4 `at` of each row).
fn dot_queries(x: vec4f, t: u32, at: u32) -> vec4f {
  let d4 = 4u * LANES;
  let e = t * d4 + at;
  return vec4f(dot(x, qt[e]), dot(x, qt[e + d4]), dot(x, qt[e + 2u * d4]), dot(x, qt[e + 3u * d4]));
}

fn dot_grads(x: vec4f, t: u32, at: u32) -> vec4f {
  let d4 = 4u * LANES;
  let e = t * d4 + at;
  return vec4f(dot(x, dt[e]), dot(x, dt[e + d4]), dot(x, dt[e + 2u * d4]), dot(x, dt[e + 3u * d4]));
}

// Σ w_n · query row t + n, and Σ w_n · do row t + n (vec4 `at` of each row).
fn mix_queries(w: vec4f, t: u32, at: u32) -> vec4f {
  let d4 = 4u * LANES;
  let e = t * d4 + at;
  return w.x * qt[e] + w.y * qt[e + d4] + w.z * qt[e + 2u * d4] + w.w * qt[e + 3u * d4];
}

fn mix_grads(w: vec4f, t: u32, at: u32) -> vec4f {
  let d4 = 4u * LANES;
  let e = t * d4 + at;
  return w.x * dt[e] + w.y * dt[e + d4] + w.z * dt[e + 2u * d4] + w.w * dt[e + 3u * d4];
}

@compute @workgroup_size(WG)
fn attention_backward_dkv_lanes(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u,
                                @builtin(local_invocation_index) li: u32) {
  let p = params;
  let d4 = 4u * LANES;
  let rows = WG / LANES;
  let blocks = (p.S + rows - 1u) / rows;
  let w = wg.x + wg.y * nwg.x;
  if (w >= p.B * p.Hq * blocks) { return; }
  // The longest blocks first (the first keys meet the most queries), every head's at once:
  // the GPU's last workgroups are short ones, not a tail of long ones.
  let block = w / (p.B * p.Hq);
  let h = (w % (p.B * p.Hq)) % p.Hq;
  let b = (w % (p.B * p.Hq)) / p.Hq;
  let g = h / (p.Hq / p.Hkv);
  let lane = li % LANES;
  let L = LANES;
  let j = block * rows + li / LANES;
  let kv_row = ((b * p.S + min(j, p.S - 1u)) * p.Hkv + g) * d4 + lane;
  let k0 = k[kv_row] * p.scale;
  let k1 = k[kv_row + L] * p.scale;
  let k2 = k[kv_row + 2u * L] * p.scale;
  let k3 = k[kv_row + 3u * L] * p.scale;
  let v0 = v[kv_row];
  let v1 = v[kv_row + L];
  let v2 = v[kv_row + 2u * L];
  let v3 = v[kv_row + 3u * L];
  var dk0 = vec4f(0.0);
  var dk1 = vec4f(0.0);
  var dk2 = vec4f(0.0);
  var dk3 = vec4f(0.0);
  var dv0 = vec4f(0.0);
  var dv1 = vec4f(0.0);
  var dv2 = vec4f(0.0);
  var dv3 = vec4f(0.0);
  let q_stride = p.Hq * d4;
  let q_base = b * p.S * q_stride + h * d4;
  let rows0 = (b * p.Hq + h) * p.S;
  for (var i0 = block * rows; i0 < p.S; i0 += QUERIES) {
    workgroupBarrier();
    for (var t = li; t < QUERIES * d4; t += WG) {
      let src = q_base + min(i0 + t / d4, p.S - 1u) * q_stride + t % d4;
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
      let s = row_sum(dot_queries(k0, ii, lane) + dot_queries(k1, ii, lane + L)
                      + dot_queries(k2, ii, lane + 2u * L) + dot_queries(k3, ii, lane + 3u * L));
      let dp = row_sum(dot_grads(v0, ii, lane) + dot_grads(v1, ii, lane + L)
                       + dot_grads(v2, ii, lane + 2u * L) + dot_grads(v3, ii, lane + 3u * L));
      let i = i0 + ii;
      let ok = vec4<bool>(i >= j, i + 1u >= j, i + 2u >= j, i + 3u >= j) & (vec4u(i) + vec4u(0u, 1u, 2u, 3u) < vec4u(p.S));
      let pr = select(vec4f(0.0), exp(s - vec4f(lse_t[ii], lse_t[ii + 1u], lse_t[ii + 2u], lse_t[ii + 3u])), ok);
      let f = pr * (dp - vec4f(delta_t[ii], delta_t[ii + 1u], delta_t[ii + 2u], delta_t[ii + 3u])) * p.scale;
      dv0 += mix_grads(pr, ii, lane);
      dv1 += mix_grads(pr, ii, lane + L);
      dv2 += mix_grads(pr, ii, lane + 2u * L);
      dv3 += mix_grads(pr, ii, lane + 3u * L);
      dk0 += mix_queries(f, ii, lane);
      dk1 += mix_queries(f, ii, lane + L);
      dk2 += mix_queries(f, ii, lane + 2u * L);
      dk3 += mix_queries(f, ii, lane + 3u * L);
    }
  }
  if (j < p.S) {
    let out = ((b * p.S + j) * p.Hq + h) * d4 + lane;
    dk_heads[out] = dk0;
    dk_heads[out + L] = dk1;
    dk_heads[out + 2u * L] = dk2;
    dk_heads[out + 3u * L] = dk3;
    dv_heads[out] = dv0;
    dv_heads[out + L] = dv1;
    dv_heads[out + 2u * L] = dv2;
    dv_heads[out + 3u * L] = dv3;
  }
}
