// attention_lanes: attention.wgsl's forward pass (same inputs, outputs and maths) for GPUs with
// subgroups, head sizes a multiple of 4. As attention_tiled.wgsl, the keys are staged through
// workgroup memory in tiles of KEYS rows; a query row is spread over LANES adjacent invocations
// (a power of two no wider than the subgroup), lane l holding the row's vec4s l, l + LANES, …
// (PER of them) of the query and of the output, so a workgroup has WG / LANES rows, each
// invocation needs few registers and the GPU has LANES times as many invocations to switch
// between. Four keys' partial dot products are summed across the row's lanes at once with
// subgroup shuffles.

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

override HEAD_DIM4: u32 = 16u;  // D / 4
override LANES: u32 = 4u;       // invocations per row
override PER: u32 = 4u;         // HEAD_DIM4 / LANES
override KEYS: u32 = 32u;       // keys per tile, a multiple of 4 with KEYS · HEAD_DIM4 ≤ TILE
const TILE = 512u;
const MAX_PER = 32u;
const WG = 256u;

var<workgroup> kt: array<vec4f, TILE>;
var<workgroup> vt: array<vec4f, TILE>;

fn row_sum(x: vec4f) -> vec4f {  // over the LANES lanes of a row (adjacent in the subgroup)
  var s = x;
  for (var m = LANES / 2u; m > 0u; m >>= 1u) { s += subgroupShuffleXor(s, m); }
  return s;
}

@compute @workgroup_size(WG)
fn attention_lanes(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u,
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
  let q_row = ((b * p.S + min(i, p.S - 1u)) * p.Hq + h) * HEAD_DIM4 + lane;
  var qr: array<vec4f, MAX_PER>;
  var acc: array<vec4f, MAX_PER>;
  for (var c = 0u; c < PER; c++) { qr[c] = q[q_row + c * LANES] * p.scale; acc[c] = vec4f(0.0); }
  var m = -3.4e38;
  var l = 0.0;
  let j_end = min(p.S, (block + 1u) * rows);
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
      let r0 = jj * HEAD_DIM4 + lane;
      var part = vec4f(0.0);
      for (var c = 0u; c < PER; c++) {
        let x = qr[c];
        let d = r0 + c * LANES;
        part += vec4f(dot(x, kt[d]), dot(x, kt[d + HEAD_DIM4]), dot(x, kt[d + 2u * HEAD_DIM4]), dot(x, kt[d + 3u * HEAD_DIM4]));
      }
      let s = row_sum(part);
      let j = j0 + jj;
      let ok = vec4<bool>(j <= i, j + 1u <= i, j + 2u <= i, j + 3u <= i);
      let sv = select(vec4f(-3.4e38), s, ok);
      let m_new = max(m, max(max(sv.x, sv.y), max(sv.z, sv.w)));
      let correction = exp(m - m_new);
      let wv = select(vec4f(0.0), exp(sv - vec4f(m_new)), ok);
      l = l * correction + wv.x + wv.y + wv.z + wv.w;
      for (var c = 0u; c < PER; c++) {
        let d = r0 + c * LANES;
        acc[c] = acc[c] * correction + wv.x * vt[d] + wv.y * vt[d + HEAD_DIM4]
               + wv.z * vt[d + 2u * HEAD_DIM4] + wv.w * vt[d + 3u * HEAD_DIM4];
      }
      m = m_new;
    }
  }
  if (i < p.S) {
    let inv = 1.0 / l;
    for (var c = 0u; c < PER; c++) { o[q_row + c * LANES] = acc[c] * inv; }
    if (lane == 0u) { lse[(b * p.Hq + h) * p.S + i] = m + log(l); }
  }
}
