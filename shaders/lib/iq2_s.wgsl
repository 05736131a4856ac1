// IQ2_S (82-byte blocks of 256): d f16, qs[32] grid index low bytes (one per
// 8 elements), signs[32] (8 sign bits per 8), qh[8] (2 high index bits per
// 8, 4 groups a byte), scales[8] (a 4-bit scale per 16).
// x = d * (0.5 + s) * 0.25 * grid * sign.
//#include iq_common
const QK = 256u;
const QB = 82u;
const NP = 32u;
const TAIL = false;

fn xoff(p: u32) -> vec2u {
  return xoff_iq(p);
}

fn deq(b: u32, p: u32) -> Piece {
  let ib = p >> 2u;
  let l = p & 3u;
  let s = (ld8(b + 74u + ib) >> (4u * (l >> 1u))) & 0xfu;
  let db = ldh(b) * (0.5 + f32(s)) * 0.25;
  let g = 2u * (ld8(b + 2u + p) | ((ld8(b + 66u + ib) << (8u - 2u * l)) & 0x300u));
  let sg = ld8(b + 34u + p);
  return Piece(
    db * vec4f(bytes4(QT[QT_IQ2S + g])) * signs4(sg, 0u),
    db * vec4f(bytes4(QT[QT_IQ2S + g + 1u])) * signs4(sg, 4u),
  );
}
