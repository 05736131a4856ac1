// IQ1_S (50-byte blocks of 256): d f16, qs[32] grid index low bytes (one per
// 8 elements), qh u16[8] per sub-block of 32: 3 high index bits per 8 (bits
// 3l..3l+2), a 3-bit scale s at bit 12, the delta's sign at bit 15.
// x = d * (2s + 1) * (grid ± 0.125).
//#include iq1_common
const QK = 256u;
const QB = 50u;
const NP = 32u;
const TAIL = false;

fn xoff(p: u32) -> vec2u {
  return xoff_iq(p);
}

fn deq(b: u32, p: u32) -> Piece {
  let qh = ld16(b + 34u + 2u * (p >> 2u));
  let dl = ldh(b) * f32(2u * ((qh >> 12u) & 7u) + 1u);
  let delta = select(IQ1_DELTA, -IQ1_DELTA, (qh & 0x8000u) != 0u);
  let g = ld8(b + 2u + p) | (((qh >> (3u * (p & 3u))) & 7u) << 8u);
  return Piece(dl * iq1_grid4(g, 0u, delta), dl * iq1_grid4(g, 1u, delta));
}
