// TQ1_0 (54-byte blocks of 256, 1.69 bits): qs[48] and qh[4] hold base-3
// digits (5 a byte in qs, 4 in qh) as fixed-point fractions of 256, d f16
// at byte 52. Elements 32n + m (m < 32) are digit n of qs[m]; 160 + 16n + m
// (m < 16) digit n of qs[32 + m]; 240 + 4n + j digit n of qh[j].
// x = (digit - 1) * d.
const QK = 256u;
const QB = 54u;
const NP = 32u;
const TAIL = false;

const TQ1_POW3 = array<u32, 6>(1u, 3u, 9u, 27u, 81u, 243u);

fn xoff(p: u32) -> vec2u {
  return vec2u(8u * p, 8u * p + 4u);
}

// Digit n of each byte of q (times 3^n it is the top digit), minus 1.
fn tq1_digits(q: u32, n: u32) -> vec4f {
  let x = (bytes4(q) * TQ1_POW3[n]) & vec4u(0xffu);
  return vec4f((x * 3u) >> vec4u(8u)) - 1.0;
}

fn deq(b: u32, p: u32) -> Piece {
  let d = ldh(b + 52u);
  var oa = b + 48u;
  var ob = oa;
  var na = 2u * (p - 30u);
  var nb = na + 1u;
  if (p < 20u) {
    oa = b + 8u * (p & 3u);
    ob = oa + 4u;
    na = p >> 2u;
    nb = na;
  } else if (p < 30u) {
    oa = b + 32u + 8u * ((p - 20u) & 1u);
    ob = oa + 4u;
    na = (p - 20u) >> 1u;
    nb = na;
  }
  return Piece(tq1_digits(ld32(oa), na) * d, tq1_digits(ld32(ob), nb) * d);
}
