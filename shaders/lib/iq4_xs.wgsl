// IQ4_XS (136-byte blocks of 256): d f16, scales_h u16 (2 high scale bits per
// sub-block of 32), scales_l[4] (4 low bits per 32), qs[128]: per sub-block
// 16 bytes, element j in the low nibble of byte j and j + 16 in the high one,
// indices into the non-linear table. x = d * (ls - 32) * kvalue.
//#include kvalues4
const QK = 256u;
const QB = 136u;
const NP = 32u;
const TAIL = false;

fn xoff(p: u32) -> vec2u {
  let a = 32u * (p >> 2u) + 4u * (p & 3u);
  return vec2u(a, a + 16u);
}

fn deq(b: u32, p: u32) -> Piece {
  let i = b >> 2u;
  let ib = p >> 2u;
  let w0 = W[i];
  let d = unpack2x16float(w0).x;
  let lo = (W[i + 1u] >> (4u * ib)) & 0xfu;
  let hi = ((w0 >> 16u) >> (2u * ib)) & 3u;
  let dl = d * f32(i32(lo | (hi << 4u)) - 32);
  let q = W[i + 2u + p];
  return Piece(kv4(nib_lo(q)) * dl, kv4(nib_hi(q)) * dl);
}
