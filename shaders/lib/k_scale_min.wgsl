// k_scale_min: the 6-bit scales and mins of Q4_K and Q5_K.

// Scale (.x) and min (.y) of sub-block s (0..7) from the 12 bytes in s0, s1, s2.
fn scale_min_k4(s0: u32, s1: u32, s2: u32, s: u32) -> vec2f {
  let t = (s & 3u) << 3u;
  let b0 = (s0 >> t) & 0xffu;
  let b1 = (s1 >> t) & 0xffu;
  let b2 = (s2 >> t) & 0xffu;
  let lo = vec2u(b0 & 63u, b1 & 63u);
  let hi = vec2u((b2 & 0xfu) | ((b0 >> 6u) << 4u), (b2 >> 4u) | ((b1 >> 6u) << 4u));
  return vec2f(select(hi, lo, s < 4u));
}

// d·scale and dmin·min of sub-blocks 2j (.xy) and 2j + 1 (.zw) of the Q4_K or
// Q5_K super-block at word i of W (d, dmin f16 at word i, scales at i + 1..3).
fn k_sub_scales(i: u32, j: u32) -> vec4f {
  let dm = unpack2x16float(W[i]);
  let s0 = W[i + 1u];
  let s1 = W[i + 2u];
  let s2 = W[i + 3u];
  return vec4f(scale_min_k4(s0, s1, s2, 2u * j) * dm, scale_min_k4(s0, s1, s2, 2u * j + 1u) * dm);
}

// k_sub_scales from the block's first 16 bytes as a vec4u (d, dmin | scales).
fn k_scales_words(h: vec4u, j: u32) -> vec4f {
  let dm = unpack2x16float(h.x);
  return vec4f(
    scale_min_k4(h.y, h.z, h.w, 2u * j) * dm,
    scale_min_k4(h.y, h.z, h.w, 2u * j + 1u) * dm,
  );
}
