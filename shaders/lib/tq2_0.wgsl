// TQ2_0 (66-byte blocks of 256, 2.06 bits): qs[64] of 2-bit codes, d f16 at
// byte 64. Element 128g + 32s + m is bits 2s..2s+1 of qs[32g + m].
// x = (q - 1) * d.
const QK = 256u;
const QB = 66u;
const NP = 32u;
const TAIL = false;

fn xoff(p: u32) -> vec2u {
  return vec2u(8u * p, 8u * p + 4u);
}

fn deq(b: u32, p: u32) -> Piece {
  let d = ldh(b + 64u);
  let o = b + 32u * (p >> 4u) + 8u * (p & 3u);
  let sh = vec4u(2u * ((p >> 2u) & 3u));
  return Piece(
    (vec4f((bytes4(ld32(o)) >> sh) & vec4u(3u)) - 1.0) * d,
    (vec4f((bytes4(ld32(o + 4u)) >> sh) & vec4u(3u)) - 1.0) * d,
  );
}
