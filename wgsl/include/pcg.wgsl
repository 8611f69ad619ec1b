// pcg: the PCG-RXS-M-XS 32-bit hash (O'Neill), a counter-based random source: the same input
// always gives the same word, so random streams need no state between dispatches.
fn pcg(v: u32) -> u32 {
  let state = v * 747796405u + 2891336453u;
  let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
  return (word >> 22u) ^ word;
}
