// IQ2_XS (74-byte blocks of 256): d f16, qs u16[32] (a 9-bit grid index and
// 7 sign bits << 9 per 8 elements), scales[8] (a 4-bit scale per 16).
// x = d * (0.5 + s) * 0.25 * grid * sign.
//#include iq_common
const QK = 256u;
const QB = 74u;
const NP = 32u;
const TAIL = false;

fn xoff(p: u32) -> vec2u {
  return xoff_iq(p);
}

fn deq(b: u32, p: u32) -> Piece {
  let q = ld16(b + 2u + 2u * p);
  let s = (ld8(b + 66u + (p >> 2u)) >> (4u * ((p >> 1u) & 1u))) & 0xfu;
  let db = ldh(b) * (0.5 + f32(s)) * 0.25;
  let g = 2u * (q & 511u);
  let sg = ksigns(q >> 9u);
  return Piece(
    db * vec4f(bytes4(QT[QT_IQ2XS + g])) * signs4(sg, 0u),
    db * vec4f(bytes4(QT[QT_IQ2XS + g + 1u])) * signs4(sg, 4u),
  );
}
