// attention_tiled: attention.wgsl's forward pass (same inputs, outputs and maths) for head sizes
// that are a multiple of 4, with the keys staged through workgroup memory.
//   One invocation per query row, 64 consecutive queries of one head per workgroup; the query
//   and the output accumulator live in HEAD_DIM4 vec4 registers. The workgroup walks the keys
//   its last query sees in tiles of KEYS rows: the tile's k and v rows are loaded once,
//   coalesced, into workgroup memory, and every invocation reads them from there (the same
//   address for all, a broadcast). Scores are taken four keys at a time, so the running max and
//   sum take one correction per four keys.

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

override HEAD_DIM4: u32 = 16u;  // D / 4
override KEYS: u32 = 32u;       // keys per tile, a multiple of 4 with KEYS · HEAD_DIM4 ≤ TILE
const TILE = 512u;
const MAX_D4 = 32u;
const WG = 64u;
const ROWS = 64u;  // queries per workgroup (= WG)

var<workgroup> kt: array<vec4f, TILE>;
var<workgroup> vt: array<vec4f, TILE>;

@compute @workgroup_size(WG)
fn attention_tiled(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u,
                   @builtin(local_invocation_index) li: u32) {
  let p = params;
  let blocks = (p.S + WG - 1u) / WG;
  let w = wg.x + wg.y * nwg.x;
  if (w >= p.B * p.Hq * blocks) { return; }
  // The longest blocks first (the last queries meet the most keys), every head's at once:
  // the GPU's last workgroups are short ones, not a tail of long ones.
  let block = blocks - 1u - w / (p.B * p.Hq);
  let h = (w % (p.B * p.Hq)) % p.Hq;
  let b = (w % (p.B * p.Hq)) / p.Hq;
  let g = h / (p.Hq / p.Hkv);
  let i = block * WG + li;
  let q_row = ((b * p.S + min(i, p.S - 1u)) * p.Hq + h) * HEAD_DIM4;
  var qr: array<vec4f, MAX_D4>;
  var acc: array<vec4f, MAX_D4>;
  for (var d4 = 0u; d4 < HEAD_DIM4; d4++) { qr[d4] = q[q_row + d4] * p.scale; acc[d4] = vec4f(0.0); }
  var m = -3.4e38;
  var l = 0.0;
  let j_end = min(p.S, (block + 1u) * WG);
  let kv_stride = p.Hkv * HEAD_DIM4;
  let kv0 = b * p.S * kv_stride + g * HEAD_DIM4;
  for (var j0 = 0u; j0 < j_end; j0 += KEYS) {
    workgroupBarrier();
    for (var t = li; t < KEYS * HEAD_DIM4; t += WG) {
      let src = kv0 + min(j0 + t / HEAD_DIM4, p.S - 1u) * kv_stride + t % HEAD_DIM4;
      kt[t] = k[src];
      vt[t] = v[src];
    }
    workgroupBarrier();
    for (var jj = 0u; jj < KEYS; jj += 4u) {
      let r0 = jj * HEAD_DIM4;
      var s = vec4f(0.0);
      for (var d4 = 0u; d4 < HEAD_DIM4; d4++) {
        let x = qr[d4];
        s += vec4f(dot(x, kt[r0 + d4]), dot(x, kt[r0 + HEAD_DIM4 + d4]),
                   dot(x, kt[r0 + 2u * HEAD_DIM4 + d4]), dot(x, kt[r0 + 3u * HEAD_DIM4 + d4]));
      }
      let j = j0 + jj;
      let ok = vec4<bool>(j <= i, j + 1u <= i, j + 2u <= i, j + 3u <= i);
      let sv = select(vec4f(-3.4e38), s, ok);
      let m_new = max(m, max(max(sv.x, sv.y), max(sv.z, sv.w)));
      let correction = exp(m - m_new);
      let wv = select(vec4f(0.0), exp(sv - vec4f(m_new)), ok);
      l = l * correction + wv.x + wv.y + wv.z + wv.w;
      for (var d4 = 0u; d4 < HEAD_DIM4; d4++) {
        acc[d4] = acc[d4] * correction + wv.x * vt[r0 + d4] + wv.y * vt[r0 + HEAD_DIM4 + d4]
                + wv.z * vt[r0 + 2u * HEAD_DIM4 + d4] + wv.w * vt[r0 + 3u * HEAD_DIM4 + d4];
      }
      m = m_new;
    }
  }
  if (i < p.S) {
    let inv = 1.0 / l;
    for (var d4 = 0u; d4 < HEAD_DIM4; d4++) { o[q_row + d4] = acc[d4] * inv; }
    lse[(b * p.Hq + h) * p.S + i] = m + log(l);
  }
}
