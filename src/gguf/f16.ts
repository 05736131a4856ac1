/**
 * IEEE half (binary16) and bfloat16 conversions, bit-exact with ggml's
 * `ggml_fp16_to_fp32`, `ggml_fp32_to_fp16`, `ggml_bf16_to_fp32` and
 * `ggml_fp32_to_bf16`.
 *
 * ggml's choices that show in the bits:
 * - half → float keeps a NaN's payload but makes it quiet (sets bit 22), as
 *   the multiply in ggml's portable conversion does;
 * - float → half rounds to nearest even, overflows to ±inf and turns every
 *   NaN into `0x7e00` with the input's sign;
 * - float → bfloat16 rounds to nearest even and keeps a NaN's top payload
 *   bits, forcing it quiet.
 *
 * @module
 */

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

function halfBitsToFloatBits(h: number): number {
  const sign = (h & 0x8000) << 16;
  const exp = (h >>> 10) & 0x1f;
  const man = h & 0x3ff;
  if (exp === 0x1f) {
    return (sign | 0x7f800000 | (man << 13) | (man !== 0 ? 0x400000 : 0)) >>> 0;
  }
  if (exp !== 0) return (sign | ((exp + 112) << 23) | (man << 13)) >>> 0;
  if (man === 0) return sign >>> 0;
  // Subnormal half: renormalise into a float32 normal.
  let e = 113;
  let m = man;
  while ((m & 0x400) === 0) {
    m <<= 1;
    e--;
  }
  return (sign | (e << 23) | ((m & 0x3ff) << 13)) >>> 0;
}

function buildHalfTable(): Float32Array {
  const bits = new Uint32Array(65536);
  for (let h = 0; h < 65536; h++) bits[h] = halfBitsToFloatBits(h);
  return new Float32Array(bits.buffer);
}

/**
 * Every half value as a float32, indexed by the half's bit pattern
 * (`F16_TO_F32[0x3c00] === 1`). Shared by the dequantisers; do not write to it.
 */
export const F16_TO_F32: Float32Array = buildHalfTable();

/** The float value of a half given by its 16-bit pattern. */
export function f16ToF32(bits: number): number {
  return F16_TO_F32[bits & 0xffff]!;
}

/**
 * The float value of a bfloat16 given by its 16-bit pattern (a shift). A
 * signalling NaN comes back quiet: a JS number cannot hold one. `dequantize`
 * of BF16 writes the shifted bits and keeps it.
 */
export function bf16ToF32(bits: number): number {
  u32Scratch[0] = (bits & 0xffff) << 16;
  return f32Scratch[0]!;
}

/**
 * The half bit pattern nearest to `x` (first rounded to float32), ties to
 * even, as ggml's `ggml_fp32_to_fp16` computes it.
 */
export function f32ToF16(x: number): number {
  f32Scratch[0] = x;
  const w = u32Scratch[0]!;
  const sign = (w >>> 16) & 0x8000;
  const a = w & 0x7fffffff;
  if (a > 0x7f800000) return sign | 0x7e00;
  // 65520 is halfway between 65504 (odd mantissa) and 65536: ties go to inf.
  if (a >= 0x477ff000) return sign | 0x7c00;
  if (a < 0x38800000) {
    // Below the smallest normal half: an integer count of 2^-24, rounded to
    // even. The scaling is exact in float64; 1024 lands on the smallest normal.
    const scaled = Math.abs(f32Scratch[0]!) * 16777216;
    let r = Math.floor(scaled);
    const rest = scaled - r;
    if (rest > 0.5 || (rest === 0.5 && (r & 1) === 1)) r++;
    return sign | r;
  }
  let h = (((a >>> 23) - 112) << 10) | ((a >>> 13) & 0x3ff);
  const dropped = a & 0x1fff;
  if (dropped > 0x1000 || (dropped === 0x1000 && (h & 1) === 1)) h++;
  return sign | h;
}

/**
 * The bfloat16 bit pattern nearest to `x` (first rounded to float32), ties to
 * even; NaNs stay NaN and become quiet, as in ggml's `ggml_fp32_to_bf16`.
 */
export function f32ToBf16(x: number): number {
  f32Scratch[0] = x;
  const w = u32Scratch[0]!;
  if ((w & 0x7fffffff) > 0x7f800000) return (w >>> 16) | 0x40;
  return ((w + 0x7fff + ((w >>> 16) & 1)) >>> 16) & 0xffff;
}

/** Converts float32 values to half bit patterns, element by element. */
export function f32ToF16Array(src: ArrayLike<number>, out?: Uint16Array): Uint16Array {
  const dst = out ?? new Uint16Array(src.length);
  if (dst.length < src.length) {
    throw new RangeError(`f32ToF16Array: out holds ${dst.length} halves, need ${src.length}`);
  }
  for (let i = 0; i < src.length; i++) dst[i] = f32ToF16(src[i]!);
  return dst;
}

/** Converts float32 values to bfloat16 bit patterns, element by element. */
export function f32ToBf16Array(src: ArrayLike<number>, out?: Uint16Array): Uint16Array {
  const dst = out ?? new Uint16Array(src.length);
  if (dst.length < src.length) {
    throw new RangeError(`f32ToBf16Array: out holds ${dst.length} values, need ${src.length}`);
  }
  for (let i = 0; i < src.length; i++) dst[i] = f32ToBf16(src[i]!);
  return dst;
}
