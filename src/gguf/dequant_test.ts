import assert from "node:assert/strict";
import { canDequantize, DEQUANTIZABLE_TYPES, dequantize, dequantizeRows } from "./dequant.ts";
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16 } from "./f16.ts";
import { GgmlType, requireGgmlType } from "./types.ts";

/** The float32 bit pattern of a number. */
function bits(x: number): number {
  return new Uint32Array(Float32Array.of(x).buffer)[0]!;
}

function floatFromBits(u: number): number {
  return new Float32Array(Uint32Array.of(u).buffer)[0]!;
}

function putHalf(block: Uint8Array, offset: number, x: number): void {
  const h = f32ToF16(x);
  block[offset] = h & 0xff;
  block[offset + 1] = h >> 8;
}

/** Packs eight 6-bit scales and mins the way Q4_K and Q5_K store them (12 bytes). */
function packScalesK4(scales: number[], mins: number[]): Uint8Array {
  const p = new Uint8Array(12);
  for (let j = 0; j < 8; j++) {
    const sc = scales[j]!;
    const m = mins[j]!;
    if (j < 4) {
      p[j] = sc;
      p[j + 4] = m;
    } else {
      p[j + 4] = (sc & 0xf) | ((m & 0xf) << 4);
      p[j - 4]! |= (sc >> 4) << 6;
      p[j]! |= (m >> 4) << 6;
    }
  }
  return p;
}

/** Packs sixteen 6-bit Q3_K scales (stored value = scale + 32) into 12 bytes. */
function packScalesQ3(scales: number[]): Uint8Array {
  const p = new Uint8Array(12);
  for (let i = 0; i < 16; i++) {
    const v = scales[i]! + 32;
    if (i < 8) p[i]! |= v & 0xf;
    else p[i - 8]! |= (v & 0xf) << 4;
    p[8 + (i % 4)]! |= (v >> 4) << (2 * Math.floor(i / 4));
  }
  return p;
}

Deno.test("f16ToF32 decodes normals, subnormals, zeros, infinities and NaNs", () => {
  assert.equal(f16ToF32(0x3c00), 1);
  assert.equal(f16ToF32(0xc000), -2);
  assert.equal(f16ToF32(0x3555), 0.333251953125);
  assert.equal(f16ToF32(0x7bff), 65504);
  assert.equal(f16ToF32(0x0400), 2 ** -14);
  assert.equal(f16ToF32(0x0001), 2 ** -24);
  assert.equal(f16ToF32(0x03ff), 1023 * 2 ** -24);
  assert.equal(f16ToF32(0x8001), -(2 ** -24));
  assert.ok(Object.is(f16ToF32(0x0000), 0));
  assert.ok(Object.is(f16ToF32(0x8000), -0));
  assert.equal(f16ToF32(0x7c00), Infinity);
  assert.equal(f16ToF32(0xfc00), -Infinity);
  assert.ok(Number.isNaN(f16ToF32(0x7e00)));
  // A signalling half NaN comes out quiet with its payload, as ggml's does.
  assert.equal(bits(f16ToF32(0x7c01)), 0x7fc02000);
  assert.equal(bits(f16ToF32(0xfd55)), 0xffeaa000);
});

Deno.test("f32ToF16 rounds to nearest even, saturates to inf and canonicalises NaN", () => {
  assert.equal(f32ToF16(1), 0x3c00);
  assert.equal(f32ToF16(-2), 0xc000);
  assert.equal(f32ToF16(65504), 0x7bff);
  // Ties: 1 + 2^-11 lies halfway between 1 and 1 + 2^-10 and goes to the even 1.
  assert.equal(f32ToF16(1 + 2 ** -11), 0x3c00);
  // 1 + 3·2^-11 lies halfway between odd 0x3c01 and even 0x3c02.
  assert.equal(f32ToF16(1 + 3 * 2 ** -11), 0x3c02);
  assert.equal(f32ToF16(1 + 2 ** -11 + 2 ** -20), 0x3c01);
  assert.equal(f32ToF16(65519), 0x7bff);
  assert.equal(f32ToF16(65520), 0x7c00);
  assert.equal(f32ToF16(1e9), 0x7c00);
  assert.equal(f32ToF16(-Infinity), 0xfc00);
  // Subnormal results: 2^-25 ties to 0, 3·2^-25 ties up to the even 2·2^-24.
  assert.equal(f32ToF16(2 ** -25), 0x0000);
  assert.equal(f32ToF16(3 * 2 ** -25), 0x0002);
  assert.equal(f32ToF16(2 ** -24), 0x0001);
  assert.equal(f32ToF16(-(2 ** -24)), 0x8001);
  assert.equal(f32ToF16(2 ** -14 - 2 ** -26), 0x0400);
  assert.equal(f32ToF16(1e-10), 0x0000);
  assert.equal(f32ToF16(-0), 0x8000);
  assert.equal(f32ToF16(NaN), 0x7e00);
  assert.equal(f32ToF16(floatFromBits(0xff800001)), 0xfe00);
  for (let h = 0; h < 0x7c00; h++) {
    assert.equal(f32ToF16(f16ToF32(h)), h);
    assert.equal(f32ToF16(f16ToF32(h | 0x8000)), h | 0x8000);
  }
});

Deno.test("bf16 conversions shift, round to nearest even and keep NaNs quiet", () => {
  assert.equal(bf16ToF32(0x3f80), 1);
  assert.equal(bf16ToF32(0xc040), -3);
  assert.equal(bf16ToF32(0x0001), floatFromBits(0x00010000));
  assert.equal(bf16ToF32(0x7f80), Infinity);
  assert.equal(bits(bf16ToF32(0xffc1)), 0xffc10000);
  assert.equal(f32ToBf16(1), 0x3f80);
  assert.equal(f32ToBf16(floatFromBits(0x3f808000)), 0x3f80); // tie to even
  assert.equal(f32ToBf16(floatFromBits(0x3f818000)), 0x3f82); // tie to even, up
  assert.equal(f32ToBf16(floatFromBits(0x3f808001)), 0x3f81);
  assert.equal(f32ToBf16(floatFromBits(0x7f7fffff)), 0x7f80); // overflow to inf
  assert.equal(f32ToBf16(floatFromBits(0x7f800001)), 0x7fc0); // signalling NaN made quiet
  assert.equal(f32ToBf16(floatFromBits(0xffc12345)), 0xffc1);
});

Deno.test("Q8_0: d = 0.5 and quants -128..127 decode to q/2", () => {
  const blocks = new Uint8Array(8 * 34);
  for (let b = 0; b < 8; b++) {
    putHalf(blocks, b * 34, 0.5);
    for (let j = 0; j < 32; j++) blocks[b * 34 + 2 + j] = (b * 32 + j - 128) & 0xff;
  }
  const x = dequantize(GgmlType.Q8_0, blocks, 256);
  for (let i = 0; i < 256; i++) assert.equal(x[i], (i - 128) / 2);
});

Deno.test("Q4_0 and Q4_1: low nibbles fill the first half of the block", () => {
  const q40 = new Uint8Array(18);
  putHalf(q40, 0, 2);
  for (let j = 0; j < 16; j++) q40[2 + j] = j | ((15 - j) << 4);
  const a = dequantize(GgmlType.Q4_0, q40, 32);
  for (let j = 0; j < 16; j++) {
    assert.equal(a[j], (j - 8) * 2);
    assert.equal(a[j + 16], (7 - j) * 2);
  }
  const q41 = new Uint8Array(20);
  putHalf(q41, 0, 0.25);
  putHalf(q41, 2, -1);
  q41.fill(0xf3, 4);
  const b = dequantize(GgmlType.Q4_1, q41, 32);
  assert.deepEqual([...b.subarray(0, 16)], new Array(16).fill(-0.25));
  assert.deepEqual([...b.subarray(16)], new Array(16).fill(2.75));
});

Deno.test("Q5_0 and Q5_1: qh bit j is the 5th bit of element j", () => {
  const q50 = new Uint8Array(22);
  putHalf(q50, 0, 1);
  const qh = 0x8000_0001 | (1 << 16); // elements 0, 16 and 31
  new DataView(q50.buffer).setUint32(2, qh, true);
  const x = dequantize(GgmlType.Q5_0, q50, 32);
  assert.equal(x[0], 0);
  assert.equal(x[1], -16);
  assert.equal(x[16], 0);
  assert.equal(x[17], -16);
  assert.equal(x[31], 0);
  const q51 = new Uint8Array(24);
  putHalf(q51, 0, 0.5);
  putHalf(q51, 2, 3);
  new DataView(q51.buffer).setUint32(4, 0xffffffff, true);
  q51.fill(0x1f, 8);
  const y = dequantize(GgmlType.Q5_1, q51, 32);
  assert.equal(y[0], 31 * 0.5 + 3);
  assert.equal(y[16], 17 * 0.5 + 3);
});

Deno.test("Q2_K: 16 sub-blocks with 4-bit scales and mins, 2-bit quants", () => {
  const blk = new Uint8Array(84);
  for (let s = 0; s < 16; s++) blk[s] = ((s % 5) << 4) | (s + 1) % 16;
  blk.fill(0xe4, 16, 80); // quants 0, 1, 2, 3 at shifts 0, 2, 4, 6
  putHalf(blk, 80, 0.5);
  putHalf(blk, 82, 0.25);
  const x = dequantize(GgmlType.Q2_K, blk, 256);
  for (let i = 0; i < 256; i++) {
    const s = i >> 4;
    const q = (s % 8) >> 1;
    assert.equal(x[i], 0.5 * ((s + 1) % 16) * q - 0.25 * (s % 5), `element ${i}`);
  }
});

Deno.test("Q3_K: 6-bit signed scales, quants lose 4 when their hmask bit is clear", () => {
  const scales = Array.from({ length: 16 }, (_, i) => i * 4 - 32); // -32..28
  const blk = new Uint8Array(110);
  for (let l = 0; l < 32; l++) blk[l] = l < 16 ? 0x0f : 0xf0; // hmask: bit k = sub-block pair
  blk.fill(0xe4, 32, 96);
  blk.set(packScalesQ3(scales), 96);
  putHalf(blk, 108, 0.5);
  const x = dequantize(GgmlType.Q3_K, blk, 256);
  for (let i = 0; i < 256; i++) {
    const s = i >> 4;
    const q = (s % 8) >> 1; // 2-bit quant from shift ((s % 8) >> 1) * 2
    const bit = (s >> 1) & 7; // hmask bit used by this sub-block
    const high = (i & 16) === 0 ? bit < 4 : bit >= 4;
    assert.equal(x[i], 0.5 * scales[s]! * (q - (high ? 0 : 4)), `element ${i}`);
  }
});

Deno.test("Q4_K and Q5_K: 6-bit scales and mins, low nibbles then high nibbles", () => {
  const scales = [1, 2, 3, 63, 40, 17, 5, 33];
  const mins = [0, 1, 2, 3, 50, 7, 63, 20];
  const q4 = new Uint8Array(144);
  putHalf(q4, 0, 0.5);
  putHalf(q4, 2, 0.125);
  q4.set(packScalesK4(scales, mins), 4);
  q4.fill(0x92, 16); // low nibble 2, high nibble 9
  const x = dequantize(GgmlType.Q4_K, q4, 256);
  for (let i = 0; i < 256; i++) {
    const s = i >> 5;
    const q = s % 2 === 0 ? 2 : 9;
    assert.equal(x[i], 0.5 * scales[s]! * q - 0.125 * mins[s]!, `Q4_K element ${i}`);
  }
  const q5 = new Uint8Array(176);
  putHalf(q5, 0, 0.5);
  putHalf(q5, 2, 0.125);
  q5.set(packScalesK4(scales, mins), 4);
  q5.fill(0b0110_0101, 16, 48); // qh: bit s set for sub-blocks 0, 2, 5, 6
  q5.fill(0x92, 48);
  const y = dequantize(GgmlType.Q5_K, q5, 256);
  for (let i = 0; i < 256; i++) {
    const s = i >> 5;
    const q = (s % 2 === 0 ? 2 : 9) + ((0b0110_0101 >> s) & 1 ? 16 : 0);
    assert.equal(y[i], 0.5 * scales[s]! * q - 0.125 * mins[s]!, `Q5_K element ${i}`);
  }
});

Deno.test("Q6_K: 4+2-bit quants minus 32, one int8 scale per 16 elements", () => {
  const blk = new Uint8Array(210);
  blk.fill(0x5a, 0, 128); // ql: low nibble 10, high nibble 5
  blk.fill(0xe4, 128, 192); // qh: 2-bit fields 0, 1, 2, 3
  for (let s = 0; s < 16; s++) blk[192 + s] = (s * 9 - 70) & 0xff;
  putHalf(blk, 208, 0.25);
  const x = dequantize(GgmlType.Q6_K, blk, 256);
  const byQuarter = [10 - 32, (10 | 16) - 32, (5 | 32) - 32, (5 | 48) - 32];
  for (let i = 0; i < 256; i++) {
    const q = byQuarter[(i >> 5) & 3]!;
    assert.equal(x[i], 0.25 * ((i >> 4) * 9 - 70) * q, `element ${i}`);
  }
});

Deno.test("IQ4_NL, IQ4_XS and MXFP4 map codes through their value tables", () => {
  const nl = new Uint8Array(18);
  putHalf(nl, 0, 1);
  for (let j = 0; j < 16; j++) nl[2 + j] = j | (j << 4);
  const table = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];
  assert.deepEqual([...dequantize(GgmlType.IQ4_NL, nl, 32)], [...table, ...table]);

  const xs = new Uint8Array(136);
  putHalf(xs, 0, 0.5);
  const ls = [0, 31, 32, 33, 63, 40, 7, 50];
  let scalesH = 0;
  for (let ib = 0; ib < 8; ib++) {
    xs[4 + (ib >> 1)]! |= (ls[ib]! & 0xf) << (4 * (ib & 1));
    scalesH |= (ls[ib]! >> 4) << (2 * ib);
  }
  xs[2] = scalesH & 0xff;
  xs[3] = scalesH >> 8;
  for (let ib = 0; ib < 8; ib++) {
    for (let j = 0; j < 16; j++) xs[8 + 16 * ib + j] = j | ((15 - j) << 4);
  }
  const y = dequantize(GgmlType.IQ4_XS, xs, 256);
  for (let i = 0; i < 256; i++) {
    const j = i % 32;
    const code = j < 16 ? j : 15 - (j - 16);
    assert.equal(y[i], 0.5 * (ls[i >> 5]! - 32) * table[code]!, `IQ4_XS element ${i}`);
  }

  const mx = new Uint8Array(17);
  mx[0] = 127; // scale 2^0
  for (let j = 0; j < 16; j++) mx[1 + j] = j | (j << 4);
  const fp4 = [0, 0.5, 1, 1.5, 2, 3, 4, 6, 0, -0.5, -1, -1.5, -2, -3, -4, -6];
  const z = dequantize(GgmlType.MXFP4, mx, 32);
  assert.deepEqual([...z], [...fp4, ...fp4]);
  assert.ok(Object.is(z[8], 0), "code 8 is +0, as in ggml");
  mx[0] = 0; // the smallest scale, 2^-127, a float32 subnormal
  assert.equal(dequantize(GgmlType.MXFP4, mx, 32)[7], 6 * 2 ** -127);
  mx[0] = 255; // 2^128: the larger codes overflow float32
  const big = dequantize(GgmlType.MXFP4, mx, 32);
  assert.equal(big[1], 2 ** 127);
  assert.equal(big[7], Infinity);
});

Deno.test("F32, F16 and BF16 decode element by element, NaN payloads kept", () => {
  const f32 = Float32Array.of(1.5, -0, floatFromBits(0x7fa00001), 3e38);
  const outF32 = dequantize(GgmlType.F32, new Uint8Array(f32.buffer), 4);
  assert.deepEqual([...new Uint32Array(outF32.buffer)], [...new Uint32Array(f32.buffer)]);

  // Odd byte offsets take the unaligned path.
  const raw = new Uint8Array(9);
  new DataView(raw.buffer).setUint16(1, 0x3c00, true);
  new DataView(raw.buffer).setUint16(3, 0x8001, true);
  new DataView(raw.buffer).setUint16(5, 0x7c01, true);
  new DataView(raw.buffer).setUint16(7, 0x7f81, true);
  const halves = dequantize(GgmlType.F16, raw.subarray(1), 4);
  assert.deepEqual([...new Uint32Array(halves.buffer)], [
    bits(1),
    bits(-(2 ** -24)),
    0x7fc02000,
    0x7ff02000,
  ]);
  const bf = dequantize(GgmlType.BF16, raw.subarray(1), 4);
  assert.deepEqual([...new Uint32Array(bf.buffer)], [
    0x3c000000,
    0x80010000,
    0x7c010000,
    0x7f810000,
  ]);
});

Deno.test("dequantizeRows decodes a row range the same as the whole tensor", () => {
  const info = requireGgmlType(GgmlType.Q4_K);
  const rows = 5;
  const rowLength = 512;
  const bytes = new Uint8Array((rows * rowLength / info.blockSize) * info.typeSize);
  for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 37 + 11) & 0x7b; // keep halves finite
  const all = dequantize(GgmlType.Q4_K, bytes, rows * rowLength);
  const part = dequantizeRows(GgmlType.Q4_K, bytes, rowLength, 2, 2);
  assert.deepEqual([...part], [...all.subarray(2 * rowLength, 4 * rowLength)]);
  const out = new Float32Array(rowLength + 3);
  assert.equal(dequantizeRows(GgmlType.Q4_K, bytes, rowLength, 4, 1, out), out);
  assert.deepEqual([...out.subarray(0, rowLength)], [...all.subarray(4 * rowLength)]);
});

Deno.test("dequantize rejects unsupported types and short or ragged input, naming sizes", () => {
  assert.throws(
    () => dequantize(GgmlType.F64, new Uint8Array(64), 8),
    /no dequantiser for ggml type F64 \(id 28\); supported: F32, F16, Q4_0.*IQ1_M/,
  );
  assert.throws(() => dequantize(999, new Uint8Array(4), 1), /type#999/);
  assert.throws(
    () => dequantize(GgmlType.Q4_K, new Uint8Array(287), 512),
    /512 Q4_K elements need 288 bytes \(2 blocks of 144\), but src has 287/,
  );
  assert.throws(
    () => dequantize(GgmlType.Q8_0, new Uint8Array(68), 48),
    /48 elements is not a whole number of Q8_0 blocks of 32/,
  );
  assert.throws(
    () => dequantize(GgmlType.Q8_0, new Uint8Array(34), 32, new Float32Array(31)),
    /out holds 31 floats, need 32/,
  );
  assert.throws(() => dequantize(GgmlType.F16, new Uint8Array(4), -2), /non-negative integer/);
  assert.throws(
    () => dequantizeRows(GgmlType.Q8_0, new Uint8Array(34 * 4), 64, 1, 2),
    /rows 1\.\.2 of 64 Q8_0 elements \(68 bytes a row\) end at byte 204, but src has 136/,
  );
  assert.throws(
    () => dequantizeRows(GgmlType.Q6_K, new Uint8Array(210), 100, 0, 1),
    /row length 100 is not a whole number of Q6_K blocks of 256/,
  );
});

Deno.test("the supported set covers the types od-moe needs", () => {
  for (
    const name of [
      "F32",
      "F16",
      "BF16",
      "Q4_0",
      "Q4_1",
      "Q5_0",
      "Q5_1",
      "Q8_0",
      "Q2_K",
      "Q3_K",
      "Q4_K",
      "Q5_K",
      "Q6_K",
      "IQ1_S",
      "IQ1_M",
      "IQ2_XXS",
      "IQ2_XS",
      "IQ2_S",
      "IQ3_XXS",
      "IQ3_S",
      "IQ4_NL",
      "IQ4_XS",
      "TQ1_0",
      "TQ2_0",
      "MXFP4",
    ] as const
  ) {
    assert.ok(canDequantize(GgmlType[name]), name);
    assert.ok(DEQUANTIZABLE_TYPES.includes(GgmlType[name]), name);
  }
  assert.equal(canDequantize(GgmlType.F64), false);
  assert.equal(dequantize(GgmlType.Q8_0, new Uint8Array(0), 0).length, 0);
});
