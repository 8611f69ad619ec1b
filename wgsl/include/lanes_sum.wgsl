// lanes_sum: a sum over the LANES adjacent lanes of a subgroup that share one row (a butterfly of
// subgroupShuffleXor; LANES a power of two), for the subgroup attention kernels.

fn row_sum(x: vec4f) -> vec4f {  // over the LANES lanes of a row (adjacent in the subgroup)
  var s = x;
  for (var m = LANES / 2u; m > 0u; m >>= 1u) { s += subgroupShuffleXor(s, m); }
  return s;
}
