// iq1_common: the IQ1_S / IQ1_M grid lookup. The grid (2048 entries of 8
// values in -1, 0, 1) is packed 2 bits a value, value + 1, two entries a word.
//#include iq_common

const IQ1_DELTA = 0.125;

// Values 4h .. 4h + 3 of grid entry i plus delta.
fn iq1_grid4(i: u32, h: u32, delta: f32) -> vec4f {
  let bits = QT[QT_IQ1S + (i >> 1u)] >> (16u * (i & 1u) + 8u * h);
  return vec4f((vec4u(bits) >> vec4u(0u, 2u, 4u, 6u)) & vec4u(3u)) - 1.0 + delta;
}
