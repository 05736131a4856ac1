// IQ3_XXS (98-byte blocks of 256): d f16, qs[64] grid indices (one per 4
// elements), then per sub-block of 32 a u32 of 4 × 7 sign bits and a 4-bit
// scale s on top. x = d * (0.5 + s) * 0.5 * grid * sign.
//#include iq_common
const QK = 256u;
const QB = 98u;
const NP = 32u;
const TAIL = false;

fn xoff(p: u32) -> vec2u {
  return xoff_iq(p);
}

fn deq(b: u32, p: u32) -> Piece {
  let aux = ld32(b + 66u + 4u * (p >> 2u));
  let db = ldh(b) * (0.5 + f32(aux >> 28u)) * 0.5;
  let sg = ksigns((aux >> (7u * (p & 3u))) & 127u);
  let o = b + 2u + 2u * p;
  return Piece(
    db * vec4f(bytes4(QT[QT_IQ3XXS + ld8(o)])) * signs4(sg, 0u),
    db * vec4f(bytes4(QT[QT_IQ3XXS + ld8(o + 1u)])) * signs4(sg, 4u),
  );
}
