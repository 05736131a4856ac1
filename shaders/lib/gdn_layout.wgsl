// gdn_layout: where a value head's beta and alpha sit in a token's row of
// the beta/alpha projections (see shaders/gdn_gates.wgsl).

// Element index of head h's beta within a token's row; alpha is alphaDelta further.
fn betaAt(h: u32, grouped: u32, ratio: u32) -> u32 {
  if (grouped != 0u) {
    return (h / ratio) * 2u * ratio + h % ratio;
  }
  return h;
}

fn alphaDelta(nHeads: u32, grouped: u32, ratio: u32) -> u32 {
  return select(nHeads, ratio, grouped != 0u);
}
