// IQ3_S (110-byte blocks of 256): d f16, qs[64] grid index low bytes (one per
// 4 elements), qh[8] (the ninth index bits of a sub-block of 32), signs[32]
// (8 sign bits per 8), scales[4] (a 4-bit scale per 32).
// x = d * (1 + 2s) * grid * sign.
//#include iq_common
const QK = 256u;
const QB = 110u;
const NP = 32u;
const TAIL = false;

fn xoff(p: u32) -> vec2u {
  return xoff_iq(p);
}

fn deq(b: u32, p: u32) -> Piece {
  let ib = p >> 2u;
  let l = p & 3u;
  let s = (ld8(b + 106u + (ib >> 1u)) >> (4u * (ib & 1u))) & 0xfu;
  let db = ldh(b) * f32(1u + 2u * s);
  let qh = ld8(b + 66u + ib);
  let o = b + 2u + 2u * p;
  let g1 = ld8(o) | ((qh << (8u - 2u * l)) & 256u);
  let g2 = ld8(o + 1u) | ((qh << (7u - 2u * l)) & 256u);
  let sg = ld8(b + 74u + p);
  return Piece(
    db * vec4f(bytes4(QT[QT_IQ3S + g1])) * signs4(sg, 0u),
    db * vec4f(bytes4(QT[QT_IQ3S + g2])) * signs4(sg, 4u),
  );
}
