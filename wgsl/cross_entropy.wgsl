// cross_entropy: per-row loss and, in place, the gradient of the mean loss w.r.t. the logits.
//   logits: [R, V] (one chunk of rows, so the whole T×V block never has to exist at once)
//   targets: [R] i32, −100 (or any negative) = ignored
//   loss[r] = logsumexp(logits[r]) − logits[r, target]            (0 for ignored rows)
//   logits[r] ← scale · (softmax(logits[r]) − onehot(target))      (0 for ignored rows)
//   scale = 1 / (number of non-ignored targets in the batch), so summing `loss` · scale gives
//   Hugging Face's causal-LM loss and the gradient is that loss's gradient.
// Work split: one workgroup of 256 invocations per row: one pass for the max and the sum of exp
// (each invocation keeps its running max and rescales its sum when the max grows), then the
// write: the row is read twice.

struct Params {
  R: u32,
  V: u32,
  scale: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> targets: array<i32>;       // [R]
@group(0) @binding(2) var<storage, read_write> logits: array<f32>;  // [R, V] → dlogits
@group(0) @binding(3) var<storage, read_write> loss: array<f32>;    // [R]

const WG = 256u;
var<workgroup> red: array<f32, WG>;

fn reduce_max(li: u32) -> f32 {
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (li < s) { red[li] = max(red[li], red[li + s]); }
    workgroupBarrier();
  }
  let v = red[0];
  workgroupBarrier();
  return v;
}

fn reduce_sum(li: u32) -> f32 {
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (li < s) { red[li] += red[li + s]; }
    workgroupBarrier();
  }
  let v = red[0];
  workgroupBarrier();
  return v;
}

@compute @workgroup_size(WG)
fn cross_entropy(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) li: u32) {
  let r = wg.x + wg.y * 65535u;
  if (r >= params.R) { return; }
  let V = params.V;
  let base = r * V;
  let label = targets[r];
  if (label < 0 || u32(label) >= V) {
    for (var v = li; v < V; v += WG) { logits[base + v] = 0.0; }
    if (li == 0u) { loss[r] = 0.0; }
    return;
  }
  var m = -3.4e38;
  var s = 0.0;
  for (var v = li; v < V; v += WG) {
    let x = logits[base + v];
    if (x > m) {
      s = s * exp(m - x) + 1.0;
      m = x;
    } else {
      s += exp(x - m);
    }
  }
  red[li] = m;
  let row_max = reduce_max(li);
  red[li] = s * exp(m - row_max);  // this invocation's sum against the row's max (0 if it had none)
  s = reduce_sum(li);
  m = row_max;
  let lse = m + log(s);
  let t = u32(label);
  if (li == 0u) { loss[r] = lse - logits[base + t]; }
  workgroupBarrier();  // every read of logits[base + t] happens before it is overwritten
  for (var v = li; v < V; v += WG) {
    var g = exp(logits[base + v] - lse);
    if (v == t) { g -= 1.0; }
    logits[base + v] = g * params.scale;
  }
}
