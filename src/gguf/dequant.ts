/**
 * CPU reference dequantisers for ggml tensor types, bit-exact with ggml's
 * `to_float` (`dequantize_row_*` in ggml-quants.c).
 *
 * ggml computes in float32; these kernels compute in float64 with the same
 * operations in the same order, and the store into a Float32Array rounds.
 * That gives ggml's bits because every intermediate before the last
 * operation is exact in float32 (a half scale has 11 significant bits, and
 * the sub-block scales and quants it is multiplied by add at most 11 more),
 * and one float64 operation on float32 operands rounded to float32 equals the
 * float32 operation (53 ≥ 2·24 + 2). A kernel whose intermediate could be
 * inexact would need `Math.fround` there.
 *
 * NaNs keep ggml's payloads too (x86 passes on the first operand's NaN); the
 * one place this needs care is `q * d + m` with both d and m NaN (Q4_1, Q5_1).
 *
 * Blocks are read from a byte array in the little-endian layouts of
 * ggml-common.h.
 *
 * @example
 * ```ts
 * import { dequantize } from "./dequant.ts";
 * import { GgmlType } from "./types.ts";
 *
 * // One Q8_0 block: d = 0.5 (half 0x3800), quants 0, 1, 2, …
 * const block = new Uint8Array(34);
 * block[0] = 0x00;
 * block[1] = 0x38;
 * for (let i = 0; i < 32; i++) block[2 + i] = i;
 * const x = dequantize(GgmlType.Q8_0, block, 32);
 * console.assert(x[3] === 1.5);
 * ```
 *
 * @module
 */

import { F16_TO_F32 } from "./f16.ts";
import { IQ1S, IQ2S, IQ2XS, IQ2XXS, IQ3S, IQ3XXS, KSIGNS, KVALUES_IQ4 } from "./iq_grids.ts";
import { GgmlType, ggmlTypeName, requireGgmlType } from "./types.ts";

/**
 * Decodes `nBlocks` blocks starting at byte `so` of `src` into `out` from
 * index `oo`. Lengths are checked by the caller.
 */
type Kernel = (src: Uint8Array, so: number, nBlocks: number, out: Float32Array, oo: number) => void;

const H = F16_TO_F32;

function half(src: Uint8Array, o: number): number {
  return H[src[o]! | (src[o + 1]! << 8)]!;
}

function u32le(src: Uint8Array, o: number): number {
  return (src[o]! | (src[o + 1]! << 8) | (src[o + 2]! << 16) | (src[o + 3]! << 24)) >>> 0;
}

function i8(b: number): number {
  return (b << 24) >> 24;
}

// --- lookup tables (ggml-common.h) ---

/** IQ4_NL / IQ4_XS non-linear 4-bit values. */
const KVALUES_IQ4NL = KVALUES_IQ4;

/**
 * E2M1 values doubled, shared by MXFP4 and NVFP4 (the block scale is halved
 * to match); the WGSL kernels read this table too (src/gpu/ops/quant_wgsl.ts).
 */
export const KVALUES_FP4: Int8Array = Int8Array.of(
  0,
  1,
  2,
  3,
  4,
  6,
  8,
  12,
  0,
  -1,
  -2,
  -3,
  -4,
  -6,
  -8,
  -12,
);

// --- scale decoders ---

const f32Bits = new Float32Array(1);
const u32Bits = new Uint32Array(f32Bits.buffer);

/** E8M0 exponent byte to 2^(e-128), i.e. half the E8M0 value (ggml_e8m0_to_fp32_half). */
function e8m0Half(e: number): number {
  // e = 0 and 1 give float32 subnormals 2^-128 and 2^-127; e = 255 gives 2^127, not NaN.
  u32Bits[0] = e < 2 ? 0x00200000 << e : (e - 1) << 23;
  return f32Bits[0]!;
}

/** Unsigned E4M3 byte (bit 7 ignored) to half its value, as ggml_ue4m3_to_fp32. */
function ue4m3Half(x: number): number {
  if (x === 0 || x === 0x7f) return 0;
  const exp = (x >> 3) & 0xf;
  const man = x & 7;
  const raw = exp === 0 ? man * 2 ** -9 : (1 + man / 8) * 2 ** (exp - 7);
  return raw * 0.5;
}

/** The 6-bit scale and min `j` (0..7) of a Q4_K/Q5_K block's 12 packed scale bytes at `o`. */
function scaleK4(src: Uint8Array, o: number, j: number): number {
  return j < 4 ? src[o + j]! & 63 : (src[o + j + 4]! & 0xf) | ((src[o + j - 4]! >> 6) << 4);
}

function minK4(src: Uint8Array, o: number, j: number): number {
  return j < 4 ? src[o + j + 4]! & 63 : (src[o + j + 4]! >> 4) | ((src[o + j]! >> 6) << 4);
}

// --- kernels ---

const f32Kernel: Kernel = (src, so, n, out, oo) => {
  // A byte copy keeps every bit, NaN payloads included (little-endian host).
  new Uint8Array(out.buffer, out.byteOffset + oo * 4, n * 4).set(src.subarray(so, so + n * 4));
};

const f16Kernel: Kernel = (src, so, n, out, oo) => {
  if ((src.byteOffset + so) % 2 === 0) {
    const h = new Uint16Array(src.buffer, src.byteOffset + so, n);
    for (let i = 0; i < n; i++) out[oo + i] = H[h[i]!]!;
  } else {
    for (let i = 0; i < n; i++) out[oo + i] = half(src, so + 2 * i);
  }
};

const bf16Kernel: Kernel = (src, so, n, out, oo) => {
  const bits = new Uint32Array(out.buffer, out.byteOffset + oo * 4, n);
  if ((src.byteOffset + so) % 2 === 0) {
    const h = new Uint16Array(src.buffer, src.byteOffset + so, n);
    for (let i = 0; i < n; i++) bits[i] = h[i]! << 16;
  } else {
    for (let i = 0; i < n; i++) bits[i] = (src[so + 2 * i]! << 16) | (src[so + 2 * i + 1]! << 24);
  }
};

// Block: d f16, qs[16]. x = (q - 8) * d, q low nibbles first.
const q4_0: Kernel = (src, so, nb, out, oo) => {
  for (let b = 0; b < nb; b++, so += 18, oo += 32) {
    const d = half(src, so);
    for (let j = 0; j < 16; j++) {
      const q = src[so + 2 + j]!;
      out[oo + j] = ((q & 0xf) - 8) * d;
      out[oo + j + 16] = ((q >> 4) - 8) * d;
    }
  }
};

/**
 * `q * d + m` where d or m is NaN, with x86's NaN choice: ggml's `addss`
 * returns the product's NaN when both are NaN. V8 may swap the operands of a
 * float64 add, so the fast path cannot be trusted with two NaNs.
 */
function mulAddNaN(q: number, d: number, m: number): number {
  const p = q * d;
  return p !== p ? p : p + m;
}

// Block: d f16, m f16, qs[16]. x = q * d + m.
const q4_1: Kernel = (src, so, nb, out, oo) => {
  for (let b = 0; b < nb; b++, so += 20, oo += 32) {
    const d = half(src, so);
    const m = half(src, so + 2);
    if (d !== d || m !== m) {
      for (let j = 0; j < 16; j++) {
        const q = src[so + 4 + j]!;
        out[oo + j] = mulAddNaN(q & 0xf, d, m);
        out[oo + j + 16] = mulAddNaN(q >> 4, d, m);
      }
      continue;
    }
    for (let j = 0; j < 16; j++) {
      const q = src[so + 4 + j]!;
      out[oo + j] = (q & 0xf) * d + m;
      out[oo + j + 16] = (q >> 4) * d + m;
    }
  }
};

// Block: d f16, qh u32 (5th bits), qs[16]. x = (q - 16) * d.
const q5_0: Kernel = (src, so, nb, out, oo) => {
  for (let b = 0; b < nb; b++, so += 22, oo += 32) {
    const d = half(src, so);
    const qh = u32le(src, so + 2);
    for (let j = 0; j < 16; j++) {
      const q = src[so + 6 + j]!;
      const h0 = ((qh >>> j) << 4) & 0x10;
      const h1 = (qh >>> (j + 12)) & 0x10;
      out[oo + j] = (((q & 0xf) | h0) - 16) * d;
      out[oo + j + 16] = (((q >> 4) | h1) - 16) * d;
    }
  }
};

// Block: d f16, m f16, qh u32, qs[16]. x = q * d + m.
const q5_1: Kernel = (src, so, nb, out, oo) => {
  for (let b = 0; b < nb; b++, so += 24, oo += 32) {
    const d = half(src, so);
    const m = half(src, so + 2);
    const qh = u32le(src, so + 4);
    const nan = d !== d || m !== m;
    for (let j = 0; j < 16; j++) {
      const q = src[so + 8 + j]!;
      const q0 = (q & 0xf) | (((qh >>> j) << 4) & 0x10);
      const q1 = (q >> 4) | ((qh >>> (j + 12)) & 0x10);
      if (nan) {
        out[oo + j] = mulAddNaN(q0, d, m);
        out[oo + j + 16] = mulAddNaN(q1, d, m);
      } else {
        out[oo + j] = q0 * d + m;
        out[oo + j + 16] = q1 * d + m;
      }
    }
  }
};

// Block: d f16, qs int8[32]. x = q * d.
const q8_0: Kernel = (src, so, nb, out, oo) => {
  for (let b = 0; b < nb; b++, so += 34, oo += 32) {
    const d = half(src, so);
    for (let j = 0; j < 32; j++) out[oo + j] = i8(src[so + 2 + j]!) * d;
  }
};

// Block: d f16, s f16 (d * sum q, unused here), qs int8[32]. x = q * d.
// ggml has no to_float for Q8_1 (it is a dot-product operand); this follows Q8_0.
const q8_1: Kernel = (src, so, nb, out, oo) => {
  for (let b = 0; b < nb; b++, so += 36, oo += 32) {
    const d = half(src, so);
    for (let j = 0; j < 32; j++) out[oo + j] = i8(src[so + 4 + j]!) * d;
  }
};

// Block: e E8M0, qs[16] of E2M1 codes. x = kvalue * 2^(e-128).
const mxfp4: Kernel = (src, so, nb, out, oo) => {
  for (let b = 0; b < nb; b++, so += 17, oo += 32) {
    const d = e8m0Half(src[so]!);
    for (let j = 0; j < 16; j++) {
      const q = src[so + 1 + j]!;
      out[oo + j] = KVALUES_FP4[q & 0xf]! * d;
      out[oo + j + 16] = KVALUES_FP4[q >> 4]! * d;
    }
  }
};

// Block of 64: d[4] UE4M3 (one per 16), qs[32] of E2M1 codes.
const nvfp4: Kernel = (src, so, nb, out, oo) => {
  for (let b = 0; b < nb; b++, so += 36, oo += 64) {
    for (let s = 0; s < 4; s++) {
      const d = ue4m3Half(src[so + s]!);
      const qo = so + 4 + 8 * s;
      const yo = oo + 16 * s;
      for (let j = 0; j < 8; j++) {
        const q = src[qo + j]!;
        out[yo + j] = KVALUES_FP4[q & 0xf]! * d;
        out[yo + j + 8] = KVALUES_FP4[q >> 4]! * d;
      }
    }
  }
};

// Block of 128: d f16, qs[16] bits. x = bit ? d : -d.
const q1_0: Kernel = (src, so, nb, out, oo) => {
  for (let b = 0; b < nb; b++, so += 18, oo += 128) {
    const d = half(src, so);
    const nd = -d;
    for (let j = 0; j < 128; j++) out[oo + j] = (src[so + 2 + (j >> 3)]! >> (j & 7)) & 1 ? d : nd;
  }
};

// Block of 64: d f16, qs[16] of 2-bit codes. x = (q - 1) * d.
const q2_0: Kernel = (src, so, nb, out, oo) => {
  for (let b = 0; b < nb; b++, so += 18, oo += 64) {
    const d = half(src, so);
    for (let j = 0; j < 64; j++) {
      out[oo + j] = (((src[so + 2 + (j >> 2)]! >> ((j & 3) * 2)) & 3) - 1) * d;
    }
  }
};

// Super-block: scales[16] (4-bit scale | 4-bit min), qs[64], d f16, dmin f16.
// x = (d * sc) * q - dmin * m, both products exact in float32.
const q2_K: Kernel = (src, so, nb, out, oo) => {
  for (let b = 0; b < nb; b++, so += 84) {
    const d = half(src, so + 80);
    const min = half(src, so + 82);
    let is = 0;
    for (let n = 0; n < 2; n++) {
      const qo = so + 16 + 32 * n;
      for (let shift = 0; shift < 8; shift += 2) {
        for (let k = 0; k < 2; k++, oo += 16) {
          const sc = src[so + is++]!;
          const dl = d * (sc & 0xf);
          const ml = min * (sc >> 4);
          const q = qo + 16 * k;
          for (let l = 0; l < 16; l++) out[oo + l] = dl * ((src[q + l]! >> shift) & 3) - ml;
        }
      }
    }
  }
};

// Super-block: hmask[32], qs[64], scales[12] (16 six-bit scales), d f16.
// x = (d * (sc - 32)) * (q2 - (hbit ? 0 : 4)); every step exact in float32.
const q3_K: Kernel = (src, so, nb, out, oo) => {
  for (let b = 0; b < nb; b++, so += 110) {
    const d = half(src, so + 108);
    const sco = so + 96;
    let is = 0;
    let m = 1;
    for (let n = 0; n < 2; n++) {
      const qo = so + 32 + 32 * n;
      for (let shift = 0; shift < 8; shift += 2, m <<= 1) {
        for (let k = 0; k < 2; k++, is++, oo += 16) {
          const low = is < 8 ? src[sco + is]! & 0xf : src[sco + is - 8]! >> 4;
          const high = (src[sco + 8 + (is & 3)]! >> (2 * (is >> 2))) & 3;
          const dl = d * ((low | (high << 4)) - 32);
          const q = qo + 16 * k;
          const hm = so + 16 * k;
          for (let l = 0; l < 16; l++) {
            out[oo + l] = dl * (((src[q + l]! >> shift) & 3) - (src[hm + l]! & m ? 0 : 4));
          }
        }
      }
    }
  }
};

// Super-block: d f16, dmin f16, scales[12] (8 six-bit scales and mins), qs[128].
// x = (d * sc) * q - dmin * m.
const q4_K: Kernel = (src, so, nb, out, oo) => {
  for (let b = 0; b < nb; b++, so += 144) {
    const d = half(src, so);
    const min = half(src, so + 2);
    const sco = so + 4;
    for (let j = 0; j < 4; j++, oo += 64) {
      const d1 = d * scaleK4(src, sco, 2 * j);
      const m1 = min * minK4(src, sco, 2 * j);
      const d2 = d * scaleK4(src, sco, 2 * j + 1);
      const m2 = min * minK4(src, sco, 2 * j + 1);
      const qo = so + 16 + 32 * j;
      for (let l = 0; l < 32; l++) {
        const q = src[qo + l]!;
        out[oo + l] = d1 * (q & 0xf) - m1;
        out[oo + l + 32] = d2 * (q >> 4) - m2;
      }
    }
  }
};

// Super-block: d f16, dmin f16, scales[12], qh[32], qs[128].
// x = (d * sc) * (q4 + 16 * hbit) - dmin * m.
const q5_K: Kernel = (src, so, nb, out, oo) => {
  for (let b = 0; b < nb; b++, so += 176) {
    const d = half(src, so);
    const min = half(src, so + 2);
    const sco = so + 4;
    const qho = so + 16;
    for (let j = 0; j < 4; j++, oo += 64) {
      const d1 = d * scaleK4(src, sco, 2 * j);
      const m1 = min * minK4(src, sco, 2 * j);
      const d2 = d * scaleK4(src, sco, 2 * j + 1);
      const m2 = min * minK4(src, sco, 2 * j + 1);
      const u1 = 1 << (2 * j);
      const u2 = 2 << (2 * j);
      const qo = so + 48 + 32 * j;
      for (let l = 0; l < 32; l++) {
        const q = src[qo + l]!;
        const h = src[qho + l]!;
        out[oo + l] = d1 * ((q & 0xf) + (h & u1 ? 16 : 0)) - m1;
        out[oo + l + 32] = d2 * ((q >> 4) + (h & u2 ? 16 : 0)) - m2;
      }
    }
  }
};

// Super-block: ql[128], qh[64], scales int8[16], d f16. x = (d * sc) * (q6 - 32).
const q6_K: Kernel = (src, so, nb, out, oo) => {
  for (let b = 0; b < nb; b++, so += 210) {
    const d = half(src, so + 208);
    for (let n = 0; n < 2; n++, oo += 128) {
      const ql = so + 64 * n;
      const qh = so + 128 + 32 * n;
      const sc = so + 192 + 8 * n;
      for (let l = 0; l < 32; l++) {
        const is = l >> 4;
        const lo = src[ql + l]!;
        const hi = src[ql + l + 32]!;
        const h = src[qh + l]!;
        out[oo + l] = d * i8(src[sc + is]!) * (((lo & 0xf) | ((h & 3) << 4)) - 32);
        out[oo + l + 32] = d * i8(src[sc + is + 2]!) * (((hi & 0xf) | (((h >> 2) & 3) << 4)) - 32);
        out[oo + l + 64] = d * i8(src[sc + is + 4]!) * (((lo >> 4) | (((h >> 4) & 3) << 4)) - 32);
        out[oo + l + 96] = d * i8(src[sc + is + 6]!) * (((hi >> 4) | (((h >> 6) & 3) << 4)) - 32);
      }
    }
  }
};

// Super-block: d f32, qs int8[256], bsums int16[16] (unused). x = d * q.
const q8_K: Kernel = (src, so, nb, out, oo) => {
  for (let b = 0; b < nb; b++, so += 292, oo += 256) {
    u32Bits[0] = u32le(src, so);
    const d = f32Bits[0]!;
    for (let j = 0; j < 256; j++) out[oo + j] = d * i8(src[so + 4 + j]!);
  }
};

// Block: d f16, qs[16] indices into KVALUES_IQ4NL. x = d * kvalue.
const iq4_nl: Kernel = (src, so, nb, out, oo) => {
  for (let b = 0; b < nb; b++, so += 18, oo += 32) {
    const d = half(src, so);
    for (let j = 0; j < 16; j++) {
      const q = src[so + 2 + j]!;
      out[oo + j] = d * KVALUES_IQ4NL[q & 0xf]!;
      out[oo + j + 16] = d * KVALUES_IQ4NL[q >> 4]!;
    }
  }
};

// Super-block: d f16, scales_h u16, scales_l[4], qs[128].
// Eight blocks of 32 with 6-bit scales; x = (d * (ls - 32)) * kvalue.
const iq4_xs: Kernel = (src, so, nb, out, oo) => {
  for (let b = 0; b < nb; b++, so += 136) {
    const d = half(src, so);
    const scalesH = src[so + 2]! | (src[so + 3]! << 8);
    for (let ib = 0; ib < 8; ib++, oo += 32) {
      const ls = ((src[so + 4 + (ib >> 1)]! >> (4 * (ib & 1))) & 0xf) |
        (((scalesH >> (2 * ib)) & 3) << 4);
      const dl = d * (ls - 32);
      const qo = so + 8 + 16 * ib;
      for (let j = 0; j < 16; j++) {
        const q = src[qo + j]!;
        out[oo + j] = dl * KVALUES_IQ4NL[q & 0xf]!;
        out[oo + j + 16] = dl * KVALUES_IQ4NL[q >> 4]!;
      }
    }
  }
};

// --- I-quants: 8 (IQ3: 4) values at a time from a lattice grid (iq_grids.ts) ---
//
// Every product below is exact in float32 (a half scale times a sub-block
// scale of at most 5 bits, times a grid value of at most 6 bits), so float64
// arithmetic rounded at the store gives ggml's bits.

const G2XXS = IQ2XXS.bytes;
const G2XS = IQ2XS.bytes;
const G2S = IQ2S.bytes;
const G3XXS = IQ3XXS.bytes;
const G3S = IQ3S.bytes;
const G1S = new Int8Array(IQ1S.bytes.buffer, IQ1S.bytes.byteOffset, IQ1S.bytes.length);

/**
 * Eight values `dl * grid[g + j]`, negated where bit j of `signs` is set.
 * ggml's `* (sign ? -1.f : 1.f)` compiles to a sign flip, which flips a NaN's
 * sign too; so does unary minus here.
 */
function grid8(
  out: Float32Array,
  oo: number,
  dl: number,
  grid: Uint8Array,
  g: number,
  signs: number,
) {
  for (let j = 0; j < 8; j++) {
    const v = dl * grid[g + j]!;
    out[oo + j] = signs & (1 << j) ? -v : v;
  }
}

// Super-block: d f16, then per 32: 4 grid index bytes, a u32 of 4 × 7 sign
// bits and a 4-bit scale on top. x = d * (0.5 + s) * 0.25 * grid * sign.
const iq2_xxs: Kernel = (src, so, nb, out, oo) => {
  for (let b = 0; b < nb; b++, so += 66) {
    const d = half(src, so);
    for (let ib = 0; ib < 8; ib++) {
      const o = so + 2 + 8 * ib;
      const aux = u32le(src, o + 4);
      const db = d * (0.5 + (aux >>> 28)) * 0.25;
      for (let l = 0; l < 4; l++, oo += 8) {
        grid8(out, oo, db, G2XXS, 8 * src[o + l]!, KSIGNS[(aux >>> (7 * l)) & 127]!);
      }
    }
  }
};

// Super-block: d f16, qs u16[32] (9-bit grid index | 7 sign bits << 9), scales[8]
// (two 4-bit scales per 32). x = d * (0.5 + s) * 0.25 * grid * sign.
const iq2_xs: Kernel = (src, so, nb, out, oo) => {
  for (let b = 0; b < nb; b++, so += 74) {
    const d = half(src, so);
    for (let ib = 0; ib < 8; ib++) {
      const sc = src[so + 66 + ib]!;
      const db0 = d * (0.5 + (sc & 0xf)) * 0.25;
      const db1 = d * (0.5 + (sc >> 4)) * 0.25;
      for (let l = 0; l < 4; l++, oo += 8) {
        const o = so + 2 + 2 * (4 * ib + l);
        const q = src[o]! | (src[o + 1]! << 8);
        grid8(out, oo, l < 2 ? db0 : db1, G2XS, 8 * (q & 511), KSIGNS[q >> 9]!);
      }
    }
  }
};

// Super-block: d f16, qs[32] grid index low bytes, signs[32], qh[8] (2 high
// index bits per 8), scales[8]. x = d * (0.5 + s) * 0.25 * grid * sign.
const iq2_s: Kernel = (src, so, nb, out, oo) => {
  for (let b = 0; b < nb; b++, so += 82) {
    const d = half(src, so);
    for (let ib = 0; ib < 8; ib++) {
      const sc = src[so + 74 + ib]!;
      const qh = src[so + 66 + ib]!;
      const db0 = d * (0.5 + (sc & 0xf)) * 0.25;
      const db1 = d * (0.5 + (sc >> 4)) * 0.25;
      for (let l = 0; l < 4; l++, oo += 8) {
        const g = src[so + 2 + 4 * ib + l]! | ((qh << (8 - 2 * l)) & 0x300);
        grid8(out, oo, l < 2 ? db0 : db1, G2S, 8 * g, src[so + 34 + 4 * ib + l]!);
      }
    }
  }
};

// Super-block: d f16, qs[64] grid indices (4 values each), then per 32 a u32
// of 4 × 7 sign bits and a 4-bit scale. x = d * (0.5 + s) * 0.5 * grid * sign.
const iq3_xxs: Kernel = (src, so, nb, out, oo) => {
  for (let b = 0; b < nb; b++, so += 98) {
    const d = half(src, so);
    for (let ib = 0; ib < 8; ib++) {
      const aux = u32le(src, so + 66 + 4 * ib);
      const db = d * (0.5 + (aux >>> 28)) * 0.5;
      for (let l = 0; l < 4; l++, oo += 8) {
        const signs = KSIGNS[(aux >>> (7 * l)) & 127]!;
        const g1 = 4 * src[so + 2 + 8 * ib + 2 * l]!;
        const g2 = 4 * src[so + 2 + 8 * ib + 2 * l + 1]!;
        for (let j = 0; j < 4; j++) {
          const v1 = db * G3XXS[g1 + j]!;
          const v2 = db * G3XXS[g2 + j]!;
          out[oo + j] = signs & (1 << j) ? -v1 : v1;
          out[oo + j + 4] = signs & (16 << j) ? -v2 : v2;
        }
      }
    }
  }
};

// Super-block: d f16, qs[64] grid index low bytes, qh[8] (ninth bits),
// signs[32], scales[4] (4 bits per 32). x = d * (1 + 2s) * grid * sign.
const iq3_s: Kernel = (src, so, nb, out, oo) => {
  for (let b = 0; b < nb; b++, so += 110) {
    const d = half(src, so);
    for (let ib = 0; ib < 8; ib++) {
      const db = d * (1 + 2 * ((src[so + 106 + (ib >> 1)]! >> (4 * (ib & 1))) & 0xf));
      const qh = src[so + 66 + ib]!;
      for (let l = 0; l < 4; l++, oo += 8) {
        const signs = src[so + 74 + 4 * ib + l]!;
        const g1 = 4 * (src[so + 2 + 8 * ib + 2 * l]! | ((qh << (8 - 2 * l)) & 256));
        const g2 = 4 * (src[so + 2 + 8 * ib + 2 * l + 1]! | ((qh << (7 - 2 * l)) & 256));
        for (let j = 0; j < 4; j++) {
          const v1 = db * G3S[g1 + j]!;
          const v2 = db * G3S[g2 + j]!;
          out[oo + j] = signs & (1 << j) ? -v1 : v1;
          out[oo + j + 4] = signs & (16 << j) ? -v2 : v2;
        }
      }
    }
  }
};

const IQ1_DELTA = 0.125;

/** Eight values `dl * (grid[g + j] + delta)` of the signed IQ1 grid. */
function grid8iq1(out: Float32Array, oo: number, dl: number, g: number, delta: number) {
  for (let j = 0; j < 8; j++) out[oo + j] = dl * (G1S[g + j]! + delta);
}

// Super-block: d f16, qs[32] grid index low bytes, qh u16[8] per 32: three
// high index bits per 8, a 3-bit scale at bit 12, the delta's sign at bit 15.
// x = d * (2s + 1) * (grid ± 0.125).
const iq1_s: Kernel = (src, so, nb, out, oo) => {
  for (let b = 0; b < nb; b++, so += 50) {
    const d = half(src, so);
    for (let ib = 0; ib < 8; ib++) {
      const qh = src[so + 34 + 2 * ib]! | (src[so + 35 + 2 * ib]! << 8);
      const dl = d * (2 * ((qh >> 12) & 7) + 1);
      const delta = qh & 0x8000 ? -IQ1_DELTA : IQ1_DELTA;
      for (let l = 0; l < 4; l++, oo += 8) {
        grid8iq1(
          out,
          oo,
          dl,
          8 * (src[so + 2 + 4 * ib + l]! | (((qh >> (3 * l)) & 7) << 8)),
          delta,
        );
      }
    }
  }
};

// Super-block: qs[32] grid index low bytes, qh[16] (per 8: 3 high index bits
// and the delta's sign), scales u16[4]: 3-bit scales (two per 32, 6 bits a
// 32) and, in the top nibbles, the f16 super-block scale.
// x = d * (2s + 1) * (grid ± 0.125).
const iq1_m: Kernel = (src, so, nb, out, oo) => {
  for (let b = 0; b < nb; b++, so += 56) {
    const sc = (i: number) => src[so + 48 + 2 * i]! | (src[so + 49 + 2 * i]! << 8);
    const d = H[(sc(0) >> 12) | ((sc(1) >> 8) & 0xf0) | ((sc(2) >> 4) & 0xf00) | (sc(3) & 0xf000)]!;
    for (let ib = 0; ib < 8; ib++) {
      const s = sc(ib >> 1) >> (6 * (ib & 1));
      const dl1 = d * (2 * (s & 7) + 1);
      const dl2 = d * (2 * ((s >> 3) & 7) + 1);
      for (let l = 0; l < 4; l++, oo += 8) {
        const qh = src[so + 32 + 2 * ib + (l >> 1)]! >> (4 * (l & 1));
        const g = 8 * (src[so + 4 * ib + l]! | ((qh & 7) << 8));
        grid8iq1(out, oo, l < 2 ? dl1 : dl2, g, qh & 8 ? -IQ1_DELTA : IQ1_DELTA);
      }
    }
  }
};

/** Turns a 3^k-scaled trit byte back into the trit at the top: ((q * 3) >> 8) - 1. */
function tritAt(byte: number, pow3: number): number {
  return ((((byte * pow3) & 0xff) * 3) >> 8) - 1;
}

const POW3 = [1, 3, 9, 27, 81, 243] as const;

// Super-block: qs[48] (5 trits a byte), qh[4] (4 trits a byte), d f16. x = t * d.
const tq1_0: Kernel = (src, so, nb, out, oo) => {
  for (let b = 0; b < nb; b++, so += 54) {
    const d = half(src, so + 52);
    for (let n = 0; n < 5; n++) {
      for (let m = 0; m < 32; m++) out[oo++] = tritAt(src[so + m]!, POW3[n]!) * d;
    }
    for (let n = 0; n < 5; n++) {
      for (let m = 0; m < 16; m++) out[oo++] = tritAt(src[so + 32 + m]!, POW3[n]!) * d;
    }
    for (let n = 0; n < 4; n++) {
      for (let j = 0; j < 4; j++) out[oo++] = tritAt(src[so + 48 + j]!, POW3[n]!) * d;
    }
  }
};

// Super-block: qs[64] (four 2-bit codes a byte), d f16. x = (q - 1) * d.
const tq2_0: Kernel = (src, so, nb, out, oo) => {
  for (let b = 0; b < nb; b++, so += 66) {
    const d = half(src, so + 64);
    for (let j = 0; j < 64; j += 32) {
      for (let shift = 0; shift < 8; shift += 2) {
        for (let m = 0; m < 32; m++) out[oo++] = (((src[so + j + m]! >> shift) & 3) - 1) * d;
      }
    }
  }
};

const kernels = new Map<number, Kernel>([
  [GgmlType.F32, f32Kernel],
  [GgmlType.F16, f16Kernel],
  [GgmlType.BF16, bf16Kernel],
  [GgmlType.Q4_0, q4_0],
  [GgmlType.Q4_1, q4_1],
  [GgmlType.Q5_0, q5_0],
  [GgmlType.Q5_1, q5_1],
  [GgmlType.Q8_0, q8_0],
  [GgmlType.Q8_1, q8_1],
  [GgmlType.Q2_K, q2_K],
  [GgmlType.Q3_K, q3_K],
  [GgmlType.Q4_K, q4_K],
  [GgmlType.Q5_K, q5_K],
  [GgmlType.Q6_K, q6_K],
  [GgmlType.Q8_K, q8_K],
  [GgmlType.IQ2_XXS, iq2_xxs],
  [GgmlType.IQ2_XS, iq2_xs],
  [GgmlType.IQ2_S, iq2_s],
  [GgmlType.IQ3_XXS, iq3_xxs],
  [GgmlType.IQ3_S, iq3_s],
  [GgmlType.IQ1_S, iq1_s],
  [GgmlType.IQ1_M, iq1_m],
  [GgmlType.IQ4_NL, iq4_nl],
  [GgmlType.IQ4_XS, iq4_xs],
  [GgmlType.TQ1_0, tq1_0],
  [GgmlType.TQ2_0, tq2_0],
  [GgmlType.MXFP4, mxfp4],
  [GgmlType.NVFP4, nvfp4],
  [GgmlType.Q1_0, q1_0],
  [GgmlType.Q2_0, q2_0],
]);

/** The ids of every type {@link dequantize} decodes, in ascending order. */
export const DEQUANTIZABLE_TYPES: readonly number[] = [...kernels.keys()].sort((a, b) => a - b);

/** True if {@link dequantize} decodes this type id. */
export function canDequantize(type: number): boolean {
  return kernels.has(type);
}

function kernelFor(type: number, caller: string): Kernel {
  const kernel = kernels.get(type);
  if (kernel) return kernel;
  const names = DEQUANTIZABLE_TYPES.map(ggmlTypeName).join(", ");
  throw new RangeError(
    `${caller}: no dequantiser for ggml type ${
      ggmlTypeName(type)
    } (id ${type}); supported: ${names}`,
  );
}

function checkCount(caller: string, what: string, n: number): void {
  if (!Number.isSafeInteger(n) || n < 0) {
    throw new RangeError(`${caller}: ${what} must be a non-negative integer, got ${n}`);
  }
}

/**
 * Decodes the first `nElements` values of a tensor of ggml type `type` whose
 * bytes start at `src[0]`, into `out` (allocated if absent; it may be longer).
 *
 * Throws a RangeError naming the type and sizes for an unsupported type, an
 * element count that is not a whole number of blocks, a `src` too short or an
 * `out` too short.
 */
export function dequantize(
  type: number,
  src: Uint8Array,
  nElements: number,
  out?: Float32Array,
): Float32Array {
  const caller = "dequantize";
  const kernel = kernelFor(type, caller);
  const info = requireGgmlType(type);
  checkCount(caller, "nElements", nElements);
  if (nElements % info.blockSize !== 0) {
    throw new RangeError(
      `${caller}: ${nElements} elements is not a whole number of ${info.name} blocks of ${info.blockSize}`,
    );
  }
  const nBlocks = nElements / info.blockSize;
  const need = nBlocks * info.typeSize;
  if (src.length < need) {
    throw new RangeError(
      `${caller}: ${nElements} ${info.name} elements need ${need} bytes ` +
        `(${nBlocks} blocks of ${info.typeSize}), but src has ${src.length}`,
    );
  }
  const dst = out ?? new Float32Array(nElements);
  if (dst.length < nElements) {
    throw new RangeError(
      `${caller}: out holds ${dst.length} floats, need ${nElements} for ${info.name}`,
    );
  }
  kernel(src, 0, nBlocks, dst, 0);
  return dst;
}

/**
 * Decodes rows `firstRow .. firstRow + nRows - 1` of a 2-D tensor (rows of
 * `rowLength` elements, row-major as ggml stores them) whose bytes start at
 * `src[0]`. The result holds `nRows * rowLength` floats, row after row.
 *
 * Throws like {@link dequantize}, and when `rowLength` is not a whole number
 * of blocks.
 */
export function dequantizeRows(
  type: number,
  src: Uint8Array,
  rowLength: number,
  firstRow: number,
  nRows: number,
  out?: Float32Array,
): Float32Array {
  const caller = "dequantizeRows";
  const kernel = kernelFor(type, caller);
  const info = requireGgmlType(type);
  checkCount(caller, "rowLength", rowLength);
  checkCount(caller, "firstRow", firstRow);
  checkCount(caller, "nRows", nRows);
  if (rowLength % info.blockSize !== 0) {
    throw new RangeError(
      `${caller}: row length ${rowLength} is not a whole number of ${info.name} blocks of ${info.blockSize}`,
    );
  }
  const blocksPerRow = rowLength / info.blockSize;
  const rowBytes = blocksPerRow * info.typeSize;
  const start = firstRow * rowBytes;
  const end = start + nRows * rowBytes;
  if (src.length < end) {
    throw new RangeError(
      `${caller}: rows ${firstRow}..${firstRow + nRows - 1} of ${rowLength} ${info.name} ` +
        `elements (${rowBytes} bytes a row) end at byte ${end}, but src has ${src.length}`,
    );
  }
  const nElements = nRows * rowLength;
  const dst = out ?? new Float32Array(nElements);
  if (dst.length < nElements) {
    throw new RangeError(
      `${caller}: out holds ${dst.length} floats, need ${nElements} for ${nRows} rows of ${rowLength}`,
    );
  }
  kernel(src, start, nRows * blocksPerRow, dst, 0);
  return dst;
}
