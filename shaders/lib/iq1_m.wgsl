// IQ1_M (56-byte blocks of 256): qs[32] grid index low bytes (one per 8
// elements), qh[16] (per 8: 3 high index bits and the delta's sign, two
// groups a byte), scales u16[4]: 3-bit scales (two per sub-block of 32, 6
// bits a sub-block) and, in the top nibbles of the four, the f16 d.
// x = d * (2s + 1) * (grid ± 0.125).
//#include iq1_common
const QK = 256u;
const QB = 56u;
const NP = 32u;
const TAIL = false;

fn xoff(p: u32) -> vec2u {
  return xoff_iq(p);
}

fn deq(b: u32, p: u32) -> Piece {
  let ib = p >> 2u;
  let l = p & 3u;
  let sc = vec4u(ld16(b + 48u), ld16(b + 50u), ld16(b + 52u), ld16(b + 54u));
  let dbits = (sc.x >> 12u) | ((sc.y >> 8u) & 0xf0u) | ((sc.z >> 4u) & 0xf00u) | (sc.w & 0xf000u);
  let d = unpack2x16float(dbits).x;
  let s = (sc[ib >> 1u] >> (6u * (ib & 1u) + 3u * (l >> 1u))) & 7u;
  let dl = d * f32(2u * s + 1u);
  let qh = ld8(b + 32u + 2u * ib + (l >> 1u)) >> (4u * (l & 1u));
  let delta = select(IQ1_DELTA, -IQ1_DELTA, (qh & 8u) != 0u);
  let g = ld8(b + p) | ((qh & 7u) << 8u);
  return Piece(dl * iq1_grid4(g, 0u, delta), dl * iq1_grid4(g, 1u, delta));
}
