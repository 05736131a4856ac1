// IQ2_XXS (66-byte blocks of 256): d f16, then per sub-block of 32 eight
// bytes: 4 grid indices (one per 8 elements) and a u32 holding 4 × 7 sign
// bits and a 4-bit scale s on top. x = d * (0.5 + s) * 0.25 * grid * sign.
//#include iq_common
const QK = 256u;
const QB = 66u;
const NP = 32u;
const TAIL = false;

fn xoff(p: u32) -> vec2u {
  return xoff_iq(p);
}

fn deq(b: u32, p: u32) -> Piece {
  let l = p & 3u;
  let o = b + 2u + 8u * (p >> 2u);
  let aux = ld32(o + 4u);
  let db = ldh(b) * (0.5 + f32(aux >> 28u)) * 0.25;
  let g = 2u * ld8(o + l);
  let s = ksigns((aux >> (7u * l)) & 127u);
  return Piece(
    db * vec4f(bytes4(QT[QT_IQ2XXS + g])) * signs4(s, 0u),
    db * vec4f(bytes4(QT[QT_IQ2XXS + g + 1u])) * signs4(s, 4u),
  );
}
