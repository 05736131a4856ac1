/**
 * Our dequantisers against ggml's own, bit for bit: real blocks made by
 * ggml's quantiser from several float distributions, and random bytes taken
 * as blocks (NaN and inf scales included). Skips, saying why, where
 * libggml-base cannot be loaded.
 */

import assert from "node:assert/strict";
import { DEQUANTIZABLE_TYPES, dequantize, dequantizeRows } from "../src/gguf/dequant.ts";
import { F16_TO_F32, f32ToBf16Array, f32ToF16Array } from "../src/gguf/f16.ts";
import { GgmlType, ggmlTypeName, requireGgmlType } from "../src/gguf/types.ts";
import {
  ggmlCanDequantize,
  ggmlF16ToF32,
  ggmlF32ToBf16,
  ggmlF32ToF16,
  ggmlQuantize,
  ggmlRequiresImatrix,
  ggmlToFloat,
  ggmlTraits,
  ggmlUnavailableReason,
} from "../dev/ref/ggml.ts";

const reason = ggmlUnavailableReason();
if (reason) console.warn(`dequant parity tests skipped: ${reason}`);
const ignore = reason !== null;

/** A small seeded generator (mulberry32), so a failure can be replayed. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function normal(r: () => number): number {
  return Math.sqrt(-2 * Math.log(1 - r())) * Math.cos(2 * Math.PI * r());
}

const N_PER_ROW = 1024; // a whole number of blocks for every type (32, 64, 128, 256)
const ROWS = 64;

/** Float distributions, each `ROWS` rows of `N_PER_ROW`. */
const distributions: ReadonlyArray<[string, (r: () => number, i: number) => number]> = [
  ["normal", (r) => normal(r)],
  ["uniform", (r) => r() * 2 - 1],
  ["positive", (r) => r() * 3 + 0.5],
  ["outliers", (r) => (r() < 0.01 ? 100 : 0.02) * normal(r)],
  ["zero rows", (r, i) => (Math.floor(i / N_PER_ROW) % 2 === 0 ? 0 : normal(r))],
  ["tiny", (r) => 1e-6 * normal(r)],
  ["subnormal scales", (r) => 1e-9 * normal(r)],
  ["large", (r) => 3e4 * normal(r)],
];

function sample(name: string, f: (r: () => number, i: number) => number, seed: number) {
  const r = rng(seed);
  const x = new Float32Array(ROWS * N_PER_ROW);
  for (let i = 0; i < x.length; i++) x[i] = f(r, i);
  return { name, x };
}

function randomBytes(n: number, seed: number): Uint8Array {
  const r = rng(seed);
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = Math.floor(r() * 256);
  return b;
}

/** Asserts equal float32 bit patterns (so NaNs compare by payload), naming the first difference. */
function assertSameBits(what: string, ours: Float32Array, ref: Float32Array, blockSize: number) {
  assert.equal(ours.length, ref.length, `${what}: length`);
  const a = new Uint32Array(ours.buffer, ours.byteOffset, ours.length);
  const b = new Uint32Array(ref.buffer, ref.byteOffset, ref.length);
  let bad = 0;
  let first = -1;
  for (let i = 0; i < a.length; i++) {
    if (a[i] !== b[i]) {
      if (first < 0) first = i;
      bad++;
    }
  }
  if (bad > 0) {
    const hex = (u: number) => `0x${u.toString(16).padStart(8, "0")}`;
    assert.fail(
      `${what}: ${bad} of ${a.length} values differ; first at element ${first} ` +
        `(block ${Math.floor(first / blockSize)}): ours ${ours[first]} (${hex(a[first]!)}), ` +
        `ggml ${ref[first]} (${hex(b[first]!)})`,
    );
  }
}

const SLOW_QUANTISERS = new Set<number>([GgmlType.IQ1_S, GgmlType.IQ2_S, GgmlType.IQ2_XS]);

/** Importance weights for one row: positive, mostly around 1, one column in 16 ten times heavier. */
function syntheticImatrix(seed: number): Float32Array {
  const r = rng(31 * seed + 7);
  return new Float32Array(N_PER_ROW).map(() => (r() < 1 / 16 ? 10 : 1) * (0.25 + r()));
}

// ggml has no to_float for Q8_1: it gets its own test below.
const checked = DEQUANTIZABLE_TYPES.filter((t) => t !== GgmlType.Q8_1);

Deno.test({
  name: "the ggml type table agrees with ggml's type traits",
  ignore,
  fn() {
    for (const t of DEQUANTIZABLE_TYPES) {
      const info = requireGgmlType(t);
      const traits = ggmlTraits(t);
      assert.equal(traits.typeName.toUpperCase(), info.name, `type ${t}`);
      assert.equal(traits.blockSize, info.blockSize, `${info.name} block size`);
      assert.equal(traits.typeSize, info.typeSize, `${info.name} bytes per block`);
      if (t !== GgmlType.Q8_1) assert.ok(ggmlCanDequantize(t), `ggml decodes ${info.name}`);
    }
  },
});

for (const type of checked) {
  const info = requireGgmlType(type);
  const name = ggmlTypeName(type);

  Deno.test({
    name: `${name}: ggml-quantised blocks decode bit-exact with ggml`,
    ignore,
    fn() {
      // ggml's IQ1_S and IQ2_S/XS searches are slow: half the rows (still 1024 blocks).
      const rows = SLOW_QUANTISERS.has(type) ? ROWS / 2 : ROWS;
      const n = rows * N_PER_ROW;
      let seed = type * 1000;
      // The I-quants refuse to quantise without one: a synthetic importance
      // matrix (positive weights, a few columns much heavier, as activations'
      // squared means look), the same for every distribution.
      const needed = info.quantized && ggmlRequiresImatrix(type);
      const im = needed ? syntheticImatrix(type) : undefined;
      for (const [label, f] of distributions) {
        const { x } = sample(label, f, ++seed);
        const bytes = ggmlQuantize(type, x, rows, N_PER_ROW, im);
        assertSameBits(
          `${name} ${label}`,
          dequantize(type, bytes, n),
          ggmlToFloat(type, bytes, n),
          info.blockSize,
        );
      }
      // With an importance matrix the quantisers search differently: other blocks.
      if (info.quantized && !needed) {
        const r = rng(type);
        const imatrix = new Float32Array(N_PER_ROW).map(() => r() * r() * 4);
        for (const [label, f] of distributions.slice(0, 4)) {
          const { x } = sample(label, f, ++seed);
          const bytes = ggmlQuantize(type, x, ROWS, N_PER_ROW, imatrix);
          assertSameBits(
            `${name} ${label} with imatrix`,
            dequantize(type, bytes, n),
            ggmlToFloat(type, bytes, n),
            info.blockSize,
          );
        }
      }
    },
  });

  Deno.test({
    name: `${name}: random bytes as blocks decode bit-exact with ggml, NaN scales included`,
    ignore,
    fn() {
      const nBlocks = info.quantized ? 4096 : 65536;
      const n = nBlocks * info.blockSize;
      const bytes = randomBytes(nBlocks * info.typeSize, 77 + type);
      assertSameBits(
        `${name} random bytes`,
        dequantize(type, bytes, n),
        ggmlToFloat(type, bytes, n),
        info.blockSize,
      );
      // Every half field inf or NaN (high byte 0x7c..0x7f or 0xfc..0xff): the
      // NaN-payload rules of each operation show.
      const special = bytes.slice();
      for (let i = 1; i < special.length; i += 2) special[i] = special[i]! | 0x7c;
      assertSameBits(
        `${name} random bytes with inf/NaN halves`,
        dequantize(type, special, n),
        ggmlToFloat(type, special, n),
        info.blockSize,
      );
      // Starting at an odd byte exercises the unaligned paths.
      const shifted = new Uint8Array(bytes.length + 1);
      shifted.set(bytes, 1);
      assertSameBits(
        `${name} random bytes at an odd offset`,
        dequantize(type, shifted.subarray(1), n),
        ggmlToFloat(type, bytes, n),
        info.blockSize,
      );
    },
  });
}

Deno.test({
  name: "Q8_1 decodes as ggml decodes the same scale and quants as Q8_0",
  ignore,
  fn() {
    // ggml has no to_float for Q8_1; its blocks are Q8_0's plus the sum field s.
    const toQ8_0 = (q81: Uint8Array) => {
      const nb = q81.length / 36;
      const q80 = new Uint8Array(nb * 34);
      for (let b = 0; b < nb; b++) {
        q80.set(q81.subarray(b * 36, b * 36 + 2), b * 34);
        q80.set(q81.subarray(b * 36 + 4, b * 36 + 36), b * 34 + 2);
      }
      return q80;
    };
    const n = ROWS * N_PER_ROW;
    let seed = 9000;
    for (const [label, f] of distributions) {
      const { x } = sample(label, f, ++seed);
      const bytes = ggmlQuantize(GgmlType.Q8_1, x, ROWS, N_PER_ROW);
      assertSameBits(
        `Q8_1 ${label}`,
        dequantize(GgmlType.Q8_1, bytes, n),
        ggmlToFloat(GgmlType.Q8_0, toQ8_0(bytes), n),
        32,
      );
    }
    const bytes = randomBytes(4096 * 36, 99);
    for (
      const [label, b] of [["", bytes], [
        " with inf/NaN halves",
        bytes.map((v, i) => i % 2 ? v | 0x7c : v),
      ]] as const
    ) {
      assertSameBits(
        `Q8_1 random bytes${label}`,
        dequantize(GgmlType.Q8_1, b, 4096 * 32),
        ggmlToFloat(GgmlType.Q8_0, toQ8_0(b), 4096 * 32),
        32,
      );
    }
  },
});

Deno.test({
  name: "dequantizeRows matches ggml on a row range of a 2-D tensor",
  ignore,
  fn() {
    const { x } = sample("normal", (r) => normal(r), 5);
    const bytes = ggmlQuantize(GgmlType.Q6_K, x, ROWS, N_PER_ROW);
    const rowBytes = (N_PER_ROW / 256) * 210;
    const ours = dequantizeRows(GgmlType.Q6_K, bytes, N_PER_ROW, 17, 9);
    const ref = ggmlToFloat(
      GgmlType.Q6_K,
      bytes.subarray(17 * rowBytes, 26 * rowBytes),
      9 * N_PER_ROW,
    );
    assertSameBits("Q6_K rows 17..25", ours, ref, 256);
  },
});

Deno.test({
  name: "half → float equals ggml for all 65536 halves",
  ignore,
  fn() {
    const all = new Uint16Array(65536).map((_, i) => i);
    assertSameBits("f16 → f32", F16_TO_F32, ggmlF16ToF32(all), 1);
  },
});

/** Float32 inputs that probe rounding: random bit patterns, every half-way point, and specials. */
function roundingProbes(): Float32Array {
  const r = rng(4242);
  const u = new Uint32Array(1 << 20);
  let k = 0;
  for (; k < 1 << 19; k++) u[k] = Math.floor(r() * 4294967296);
  const halves = new Float32Array(2);
  const hb = new Uint32Array(halves.buffer);
  // Midpoints between neighbouring halves, and one float32 ulp either side.
  for (let h = 0; h < 0x7c00 && k + 6 <= u.length; h++) {
    halves[0] = F16_TO_F32[h]!;
    halves[1] = F16_TO_F32[h + 1]!;
    halves[0] = (halves[0]! + halves[1]!) / 2;
    const mid = hb[0]!;
    for (const v of [mid, mid - 1, mid + 1]) {
      u[k++] = v;
      u[k++] = (v | 0x80000000) >>> 0;
    }
  }
  // Bfloat16 ties: low half exactly 0x8000.
  while (k < u.length - 16) u[k++] = ((Math.floor(r() * 65536) << 16) | 0x8000) >>> 0;
  for (
    const s of [0, 0x80000000, 0x7f800000, 0xff800000, 0x7f800001, 0x7fc00000, 0xffffffff, 1]
  ) u[k++] = s;
  return new Float32Array(u.buffer, 0, k);
}

Deno.test({
  name: "float → half and float → bfloat16 equal ggml's rounding",
  ignore,
  fn() {
    const x = roundingProbes();
    const ours16 = f32ToF16Array(x);
    const ref16 = ggmlF32ToF16(x);
    const oursB = f32ToBf16Array(x);
    const refB = ggmlF32ToBf16(x);
    const xb = new Uint32Array(x.buffer, x.byteOffset, x.length);
    for (let i = 0; i < x.length; i++) {
      if (ours16[i] !== ref16[i]) {
        assert.fail(
          `f32ToF16(0x${xb[i]!.toString(16)}): ours 0x${ours16[i]!.toString(16)}, ggml 0x${
            ref16[i]!.toString(16)
          }`,
        );
      }
      if (oursB[i] !== refB[i]) {
        assert.fail(
          `f32ToBf16(0x${xb[i]!.toString(16)}): ours 0x${oursB[i]!.toString(16)}, ggml 0x${
            refB[i]!.toString(16)
          }`,
        );
      }
    }
  },
});
