// attention_backward_dkv_tiled: each query head's share of dk and dv (the maths of
// attention_backward_dk.wgsl and attention_backward_dv.wgsl; head_sum.wgsl adds a kv group's
// shares) for head sizes that are a multiple of 4, with the queries staged through workgroup
// memory. A workgroup takes 64 keys of one query head with two invocations per key: the first
// 64 invocations accumulate dk_j (holding k_j, v_j and dk_j in vec4 registers), the other 64
// dv_j (k_j and dv_j). Together they walk the queries i ≥ the block's first key in tiles of
// QUERIES rows of q and do (with their lse and delta), loaded once into workgroup memory and
// read from there by every invocation.
//   p_ij = exp(scale · q_i·k_j − lse_i),  dv_j = Σ_i≥j p_ij do_i,
//   dk_j = scale · Σ_i≥j p_ij (do_i·v_j − delta_i) q_i.

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
override QUERIES: u32 = 28u;    // queries per tile, a multiple of 4, ≤ 64, QUERIES · HEAD_DIM4 ≤ TILE
const TILE = 496u;
const MAX_D4 = 32u;
const ROWS = 64u;  // keys per workgroup
const WG = 128u;

var<workgroup> qt: array<vec4f, TILE>;
var<workgroup> dt: array<vec4f, TILE>;
var<workgroup> lse_t: array<f32, 64>;
var<workgroup> delta_t: array<f32, 64>;

@compute @workgroup_size(WG)
fn attention_backward_dkv_tiled(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u,
                                @builtin(local_invocation_index) li: u32) {
  let p = params;
  let blocks = (p.S + ROWS - 1u) / ROWS;
  let w = wg.x + wg.y * nwg.x;
  if (w >= p.B * p.Hq * blocks) { return; }
  // The longest blocks first (the first keys meet the most queries), every head's at once:
  // the GPU's last workgroups are short ones, not a tail of long ones.
  let block = w / (p.B * p.Hq);
  let h = (w % (p.B * p.Hq)) % p.Hq;
  let b = (w % (p.B * p.Hq)) / p.Hq;
  let g = h / (p.Hq / p.Hkv);
  let for_dk = li < ROWS;
  let j = block * ROWS + li % ROWS;
  let kv_row = ((b * p.S + min(j, p.S - 1u)) * p.Hkv + g) * HEAD_DIM4;
  var kr: array<vec4f, MAX_D4>;
  var vr: array<vec4f, MAX_D4>;
  var acc: array<vec4f, MAX_D4>;
  for (var d4 = 0u; d4 < HEAD_DIM4; d4++) {
    kr[d4] = k[kv_row + d4] * p.scale;
    vr[d4] = v[kv_row + d4];
    acc[d4] = vec4f(0.0);
  }
  let q_stride = p.Hq * HEAD_DIM4;
  let q0 = b * p.S * q_stride + h * HEAD_DIM4;
  let rows0 = (b * p.Hq + h) * p.S;
  for (var i0 = block * ROWS; i0 < p.S; i0 += QUERIES) {
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
      let r0 = ii * HEAD_DIM4;
      var s = vec4f(0.0);
      for (var d4 = 0u; d4 < HEAD_DIM4; d4++) {
        let x = kr[d4];
        s += vec4f(dot(x, qt[r0 + d4]), dot(x, qt[r0 + HEAD_DIM4 + d4]),
                   dot(x, qt[r0 + 2u * HEAD_DIM4 + d4]), dot(x, qt[r0 + 3u * HEAD_DIM4 + d4]));
      }
      let i = i0 + ii;
      let ok = vec4<bool>(i >= j, i + 1u >= j, i + 2u >= j, i + 3u >= j) & (vec4u(i) + vec4u(0u, 1u, 2u, 3u) < vec4u(p.S));
      let pr = select(vec4f(0.0), exp(s - vec4f(lse_t[ii], lse_t[ii + 1u], lse_t[ii + 2u], lse_t[ii + 3u])), ok);
      if (for_dk) {
        var dp = vec4f(0.0);
        for (var d4 = 0u; d4 < HEAD_DIM4; d4++) {
          let y = vr[d4];
          dp += vec4f(dot(y, dt[r0 + d4]), dot(y, dt[r0 + HEAD_DIM4 + d4]),
                      dot(y, dt[r0 + 2u * HEAD_DIM4 + d4]), dot(y, dt[r0 + 3u * HEAD_DIM4 + d4]));
        }
        let dl = vec4f(delta_t[ii], delta_t[ii + 1u], delta_t[ii + 2u], delta_t[ii + 3u]);
        let f = pr * (dp - dl) * p.scale;
        for (var d4 = 0u; d4 < HEAD_DIM4; d4++) {
          acc[d4] += f.x * qt[r0 + d4] + f.y * qt[r0 + HEAD_DIM4 + d4]
                   + f.z * qt[r0 + 2u * HEAD_DIM4 + d4] + f.w * qt[r0 + 3u * HEAD_DIM4 + d4];
        }
      } else {
        for (var d4 = 0u; d4 < HEAD_DIM4; d4++) {
          acc[d4] += pr.x * dt[r0 + d4] + pr.y * dt[r0 + HEAD_DIM4 + d4]
                   + pr.z * dt[r0 + 2u * HEAD_DIM4 + d4] + pr.w * dt[r0 + 3u * HEAD_DIM4 + d4];
        }
      }
    }
  }
  if (j < p.S) {
    let out = ((b * p.S + j) * p.Hq + h) * HEAD_DIM4;
    for (var d4 = 0u; d4 < HEAD_DIM4; d4++) {
      if (for_dk) { dk_heads[out + d4] = acc[d4]; } else { dv_heads[out + d4] = acc[d4]; }
    }
  }
}
