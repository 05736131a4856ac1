// The matrix kernels against a CPU reference (src/gguf/dequant.ts, then f64
// dots) for every GPU weight type, on whatever adapter this machine has
// (llvmpipe in CI, so shapes stay small and each type is one submit and one
// readback). Skipped, with the reason printed, without an adapter.

import assert from "node:assert/strict";
import { dequantize } from "../../gguf/dequant.ts";
import { GgmlType, type GgmlTypeInfo, ggmlTypeName, requireGgmlType } from "../../gguf/types.ts";
import { Rng } from "../../util/rng.ts";
import { createBuffer, readback } from "../buffers.ts";
import { expectNoGpuErrors, type Gpu } from "../device.ts";
import {
  chooseMatmulProfile,
  MATMUL_PROFILES,
  matmulProfile,
  type MatmulTuning,
  prepareMatmul,
  prepareMatmulId,
} from "./matmul.ts";
import {
  type ActView,
  type GpuWeight,
  type Op,
  recordOps,
  stepWords,
  type WeightChunk,
} from "./op.ts";
import { GPU_WEIGHT_TYPES, UnsupportedWeightTypeError } from "./quant_wgsl.ts";
import { prepareEntryLists } from "./entry_lists.ts";
import { randomWeightBytes, uploadWeight } from "./weights.ts";
import { gpuTest } from "../../../dev/gpu.ts";

const SENTINEL = -12345.5;
const TOL = 1e-5;

/** A prepared case: ops recorded for T tokens, then `check` on y read back. */
interface Case {
  readonly name: string;
  readonly ops: Op[];
  readonly nTokens: number;
  readonly y: GPUBuffer;
  readonly check: (y: Float32Array) => void;
}

function stepBuffer(gpu: Gpu, nTokens: number): GPUBuffer {
  return createBuffer(gpu, { label: "step", data: stepWords(0, nTokens) });
}

function normals(rng: Rng, n: number): Float32Array {
  return Float32Array.from({ length: n }, () => rng.normal());
}

/** A y buffer of `n` elements filled with SENTINEL (or `init`). */
function outBuffer(gpu: Gpu, n: number, init?: Float32Array): GPUBuffer {
  return createBuffer(gpu, { label: "y", data: init ?? new Float32Array(n).fill(SENTINEL) });
}

/** Σ w·x and Σ |w·x| in f64 over a row of `wf` starting at `wo` and x from `xo`. */
function dot(
  wf: Float32Array,
  wo: number,
  x: Float32Array,
  xo: number,
  n: number,
): [number, number] {
  let s = 0;
  let a = 0;
  for (let c = 0; c < n; c++) {
    const p = wf[wo + c]! * x[xo + c]!;
    s += p;
    a += Math.abs(p);
  }
  return [s, a];
}

function assertNear(got: number, want: number, scale: number, where: string): void {
  const err = Math.abs(got - want);
  if (!(err <= TOL * scale + 1e-30)) {
    assert.fail(`${where}: got ${got}, want ${want} (error ${err}, allowed ${TOL * scale})`);
  }
}

/** Records every case into one encoder, submits once, reads every y back at once. */
async function runCases(gpu: Gpu, cases: readonly Case[]): Promise<void> {
  const outs = await expectNoGpuErrors(gpu.device, "matmul cases", async () => {
    const encoder = gpu.device.createCommandEncoder();
    for (const c of cases) recordOps(encoder, c.ops, c.nTokens);
    gpu.submit(encoder);
    return await readback(gpu, cases.map((c) => c.y));
  });
  cases.forEach((c, i) => {
    try {
      c.check(new Float32Array(outs[i]!));
    } catch (error) {
      throw new Error(`${c.name}: ${(error as Error).message}`, { cause: error });
    }
  });
}

interface MatmulCase {
  type: GgmlTypeInfo;
  nCols: number;
  nRows: number;
  nTokens: number;
  tuning?: Partial<MatmulTuning>;
  accumulate?: boolean;
  /** Build the weight: default uploadWeight in one chunk. */
  weight?: (bytes: Uint8Array) => GpuWeight;
  /** x at offset 4 with a stride of a multiple of 4 (x read as vec4s where the tuning says so). */
  alignedX?: boolean;
  seed: number;
}

/**
 * y (offset 7, stride nRows + 2) = W x (x offset 5, stride nCols + 3); every
 * other y element must keep its initial value.
 */
async function matmulCase(gpu: Gpu, spec: MatmulCase): Promise<Case> {
  const { type, nCols, nRows, nTokens } = spec;
  const rng = new Rng(spec.seed);
  const bytes = randomWeightBytes(type, nCols * nRows, () => rng.next());
  const w = spec.weight?.(bytes) ??
    uploadWeight(gpu, `w.${type.name}`, type, [nCols, nRows], bytes);
  const wf = dequantize(type.id, bytes, nCols * nRows);
  const xv: ActView = spec.alignedX
    ? { buffer: undefined!, offset: 4, stride: 4 * Math.ceil(nCols / 4) + 4 }
    : { buffer: undefined!, offset: 5, stride: nCols + 3 };
  const x = normals(rng, 4 * Math.ceil((xv.offset + nTokens * xv.stride) / 4));
  const yView = { offset: 7, stride: nRows + 2 };
  const yLen = yView.offset + nTokens * yView.stride + 4;
  const y0 = spec.accumulate ? normals(rng, yLen) : new Float32Array(yLen).fill(SENTINEL);
  const xb = createBuffer(gpu, { label: "x", data: x });
  const yb = outBuffer(gpu, yLen, y0);
  const name =
    `${type.name} [${nRows}x${nCols}] T=${nTokens} ${JSON.stringify(spec.tuning ?? {})}` +
    (spec.accumulate ? " +=" : "") + (spec.alignedX ? " x aligned" : "");
  const ops = await prepareMatmul(gpu, {
    w,
    x: { buffer: xb, offset: xv.offset, stride: xv.stride },
    y: { buffer: yb, offset: yView.offset, stride: yView.stride },
    step: stepBuffer(gpu, nTokens),
    accumulate: spec.accumulate,
    label: name,
    tuning: spec.tuning,
  });
  // The aligned views must take the vec4 reads when the tuning asks for them, and only then.
  const x4 = Boolean(spec.alignedX && spec.tuning?.vectorX);
  for (const op of ops) {
    assert.equal(op.kernel.variant.endsWith("_xv4"), x4, `${name}: ${op.label}`);
  }
  return {
    name,
    ops,
    nTokens,
    y: yb,
    check: (got) => {
      const want = Float64Array.from(y0);
      const scale = new Float64Array(yLen);
      for (let t = 0; t < nTokens; t++) {
        for (let r = 0; r < nRows; r++) {
          const [s, a] = dot(wf, r * nCols, x, xv.offset + t * xv.stride, nCols);
          const i = yView.offset + t * yView.stride + r;
          want[i] = (spec.accumulate ? want[i]! : 0) + s;
          scale[i] = a + (spec.accumulate ? Math.abs(y0[i]!) : 0);
        }
      }
      for (let i = 0; i < yLen; i++) assertNear(got[i]!, want[i]!, scale[i]!, `y[${i}]`);
    },
  };
}

const MATVEC = { matvecMaxTokens: 64 } as const;
const TILED = { matvecMaxTokens: 0 } as const;

/** Row lengths per type: one block and several (float types: a length that ends mid-piece). */
function colsFor(type: GgmlTypeInfo): number[] {
  if (!type.quantized) return [44, 160];
  return type.blockSize === 256 ? [256, 768] : [32, 288];
}

gpuTest("matmul: every weight type, matvec and tiled kernels, odd shapes", async (gpu) => {
  for (const id of GPU_WEIGHT_TYPES) {
    const type = requireGgmlType(id);
    const cases: Case[] = [];
    let seed = id * 1000;
    for (const nCols of colsFor(type)) {
      for (const nRows of [37, 1]) {
        for (const nTokens of [1, 3, 40]) {
          cases.push(await matmulCase(gpu, { type, nCols, nRows, nTokens, seed: seed++ }));
        }
      }
      // Each kernel away from its default range, and other workgroup shapes.
      const more: [number, number, Partial<MatmulTuning>][] = [
        [37, 3, TILED],
        [37, 40, { matvecMaxTokens: 64, tokensMatvec: 8 }],
        [67, 11, { matvecMaxTokens: 64, tokensMatvec: 4, rowsMatvec: 3, wgMatvec: 32 }],
        [67, 2, { matvecMaxTokens: 2, tokensMatvec: 1, rowsMatvec: 1 }],
        [67, 1, { rowsMatvec: 8, wgMatvec: 64 }],
        // the generated rows kernels past 8 rows an invocation, over several row groups
        [300, 1, { matvecKernel: "rows", wgMatvec: 4, rowsMatvec1: 20 }],
        [300, 11, { matvecKernel: "rows", wgMatvec: 4, rowsMatvecT: 12, matvecMaxTokens: 64 }],
        // Every other profile's tuning (the cases above ran this adapter's).
        ...MATMUL_PROFILES.filter((p) => p.name !== matmulProfile(gpu).name).flatMap((p) =>
          [1, 6, 40].map((t) => [37, t, p.tuning] as [number, number, Partial<MatmulTuning>])
        ),
        // Both matvec kernels, whatever this adapter's profile is, at other shapes.
        [67, 1, { matvecKernel: "tree", wgMatvec: 8, rowsMatvec: 3 }],
        [67, 1, { matvecKernel: "rows", wgMatvec: 4, rowsMatvec: 3 }],
        [67, 5, { matvecKernel: "rows", wgMatvec: 2, rowsMatvec: 8, tokensMatvec: 2 }],
      ];
      // x read as vec4s (aligned views): every kernel.
      const aligned: [number, number, Partial<MatmulTuning>][] = [
        [37, 1, { matvecKernel: "rows", vectorX: true }],
        [37, 5, { matvecKernel: "tree", vectorX: true, wgMatvec: 8 }],
        [37, 40, { vectorX: true }],
      ];
      // The I-quant and ternary sections share the piece layout of 8 consecutive
      // elements: fewer shapes keep this test's time on a software adapter.
      const shapes = /^(IQ[123]|TQ)/.test(type.name)
        ? [more[0]!, more[2]!, more[more.length - 2]!, more[more.length - 1]!]
        : more;
      for (const [nRows, nTokens, tuning] of shapes) {
        cases.push(await matmulCase(gpu, { type, nCols, nRows, nTokens, tuning, seed: seed++ }));
      }
      for (const [nRows, nTokens, tuning] of aligned) {
        cases.push(
          await matmulCase(gpu, {
            type,
            nCols,
            nRows,
            nTokens,
            tuning,
            alignedX: true,
            seed: seed++,
          }),
        );
      }
    }
    await runCases(gpu, cases);
  }
});

gpuTest("matmul: accumulate (y += W x) on both kernels, and other tile shapes", async (gpu) => {
  const cases: Case[] = [];
  let seed = 1;
  for (const name of ["F16", "Q4_K", "Q5_0"] as const) {
    const type = requireGgmlType(GgmlType[name]);
    const nCols = colsFor(type)[1]!;
    for (const nTokens of [1, 40]) {
      cases.push(
        await matmulCase(gpu, { type, nCols, nRows: 37, nTokens, accumulate: true, seed: seed++ }),
      );
    }
    cases.push(
      await matmulCase(gpu, {
        type,
        nCols,
        nRows: 70,
        nTokens: 41,
        tuning: { tileRows: 32, tileTokens: 16 },
        seed: seed++,
      }),
    );
    cases.push(
      await matmulCase(gpu, {
        type,
        nCols,
        nRows: 70,
        nTokens: 41,
        tuning: { tileRows: 16, tileTokens: 8, threadRows: 8, threadTokens: 4 },
        seed: seed++,
      }),
    );
  }
  await runCases(gpu, cases);
});

/** Hand-made chunks of `rowsPer` rows, one after another in one buffer at 4-aligned offsets. */
function handChunks(
  gpu: Gpu,
  type: GgmlTypeInfo,
  shape: [number, number],
  bytes: Uint8Array,
  rowsPer: number,
): GpuWeight {
  const [nCols, nRows] = shape;
  const rb = bytes.length / nRows;
  const chunks: { rowStart: number; nRows: number; byteOffset: number }[] = [];
  let offset = 12; // not a multiple of the storage offset alignment
  for (let r = 0; r < nRows; r += rowsPer) {
    const n = Math.min(rowsPer, nRows - r);
    chunks.push({ rowStart: r, nRows: n, byteOffset: offset });
    offset += Math.ceil((n * rb + 8) / 4) * 4;
  }
  const buffer = createBuffer(gpu, { label: `chunks.${type.name}`, size: offset + 4 });
  const staging = new Uint8Array(buffer.size).fill(0xff);
  for (const c of chunks) {
    staging.set(bytes.subarray(c.rowStart * rb, (c.rowStart + c.nRows) * rb), c.byteOffset);
  }
  gpu.device.queue.writeBuffer(buffer, 0, staging);
  return {
    name: `chunks.${type.name}`,
    type,
    nCols,
    nRows,
    nMats: 1,
    matStride: nRows * rb,
    rowBytes: rb,
    chunks: chunks.map((c): WeightChunk => ({ buffer, ...c })),
  };
}

gpuTest(
  "matmul: weights split into chunks (uploadWeight and hand-made ranges of one buffer)",
  async (gpu) => {
    const cases: Case[] = [];
    let seed = 77;
    for (const name of ["Q4_0", "Q6_K", "F16", "MXFP4", "IQ1_S", "IQ3_S", "TQ1_0"] as const) {
      const type = requireGgmlType(GgmlType[name]);
      const nCols = colsFor(type)[1]!;
      const nRows = 29;
      const rb = (nCols / type.blockSize) * type.typeSize;
      for (const nTokens of [1, 40]) {
        cases.push(
          await matmulCase(gpu, {
            type,
            nCols,
            nRows,
            nTokens,
            seed: seed++,
            weight: (bytes) => {
              const w = uploadWeight(gpu, `split.${name}`, type, [nCols, nRows], bytes, {
                maxBindingBytes: 8 * rb + 3,
              });
              assert.deepEqual(w.chunks.map((c) => c.nRows), [8, 8, 8, 5]);
              return w;
            },
          }),
        );
        cases.push(
          await matmulCase(gpu, {
            type,
            nCols,
            nRows,
            nTokens,
            seed: seed++,
            weight: (bytes) => handChunks(gpu, type, [nCols, nRows], bytes, 10),
          }),
        );
      }
    }
    await runCases(gpu, cases);
  },
);

interface IdCase {
  type: GgmlTypeInfo;
  nCols: number;
  nRows: number;
  nMats: number;
  nUsed: number;
  nTokens: number;
  idBase: number;
  xPerSlot: boolean;
  /** x offsets and strides multiples of 4 (x read as vec4s where the tuning says so). */
  alignedX?: boolean;
  tuning?: Partial<MatmulTuning>;
  /**
   * The stack split into stacks of these many matrices (ids idBase … in
   * order), one op list each, fed by entry lists (prepareEntryLists) as the
   * expert pool's arenas are.
   */
  split?: readonly number[];
  seed: number;
}

/**
 * mul_mat_id with ids drawn from [idBase - 2, idBase + nMats + 2): repeats
 * and ids of other stacks, whose y must keep the sentinel.
 */
async function idCase(gpu: Gpu, spec: IdCase): Promise<Case> {
  const { type, nCols, nRows, nMats, nUsed, nTokens, idBase } = spec;
  const rng = new Rng(spec.seed);
  const bytes = randomWeightBytes(type, nCols * nRows * nMats, () => rng.next());
  const w = uploadWeight(gpu, `stack.${type.name}`, type, [nCols, nRows, nMats], bytes);
  const wf = dequantize(type.id, bytes, nCols * nRows * nMats);
  const idsStride = nUsed + 1;
  const ids = new Uint32Array(2 + nTokens * idsStride);
  for (let i = 0; i < ids.length; i++) ids[i] = Math.max(0, idBase - 2 + rng.int(nMats + 4));
  if (nTokens > 1) ids[2 + idsStride] = ids[2]!; // a repeat across tokens for sure
  const xSlot = spec.alignedX ? 4 * Math.ceil(nCols / 4) + 4 : nCols + 1;
  const xv = spec.alignedX
    ? { offset: 8, stride: spec.xPerSlot ? nUsed * xSlot + 4 : xSlot }
    : { offset: 3, stride: spec.xPerSlot ? nUsed * xSlot + 2 : nCols + 2 };
  const x = normals(rng, 4 * Math.ceil((xv.offset + nTokens * xv.stride) / 4));
  const yv = { offset: 5, stride: nUsed * nRows + 3 };
  const yLen = yv.offset + nTokens * yv.stride;
  const xb = createBuffer(gpu, { label: "x", data: x });
  const yb = outBuffer(gpu, yLen);
  const ib = createBuffer(gpu, { label: "ids", data: ids });
  const name = `id ${type.name} [${nMats}x${nRows}x${nCols}] used ${nUsed} T=${nTokens} ` +
    `base ${idBase}${spec.xPerSlot ? " x per slot" : ""}${spec.alignedX ? " x aligned" : ""} ` +
    `${spec.split ? `split ${spec.split.join("+")} ` : ""}${JSON.stringify(spec.tuning ?? {})}`;
  const step = stepBuffer(gpu, nTokens);
  const idsView = { buffer: ib, offset: 2, stride: idsStride };
  const common = {
    ids: idsView,
    nUsed,
    x: { buffer: xb, offset: xv.offset, stride: xv.stride },
    xPerSlot: spec.xPerSlot,
    xSlotStride: xSlot,
    y: { buffer: yb, offset: yv.offset, stride: yv.stride },
    step,
    label: name,
    tuning: spec.tuning,
  };
  const ops: Op[] = [];
  if (spec.split) {
    assert.equal(spec.split.reduce((a, b) => a + b, 0), nMats);
    const matBytes = bytes.length / nMats;
    const starts = spec.split.map((_, i) => spec.split!.slice(0, i).reduce((a, b) => a + b, 0));
    // the stacks listed last first: the lists must not depend on the order
    const order = starts.map((_, i) => i).reverse();
    const lists = await prepareEntryLists(gpu, {
      ids: idsView,
      nUsed,
      stacks: order.map((i) => ({ idBase: idBase + starts[i]!, nMats: spec.split![i]! })),
      maxTokens: nTokens,
      step,
      label: `${name}.lists`,
    });
    ops.push(lists.op);
    for (const [k, i] of order.entries()) {
      const n = spec.split[i]!;
      const part = bytes.subarray(starts[i]! * matBytes, (starts[i]! + n) * matBytes);
      ops.push(
        ...await prepareMatmulId(gpu, {
          ...common,
          w: uploadWeight(gpu, `stack${i}.${type.name}`, type, [nCols, nRows, n], part),
          idBase: idBase + starts[i]!,
          entryLists: { lists, stack: k },
        }),
      );
    }
  } else {
    ops.push(...await prepareMatmulId(gpu, { ...common, w, idBase }));
  }
  return {
    name,
    ops,
    nTokens,
    y: yb,
    check: (got) => {
      const want = new Float64Array(yLen).fill(SENTINEL);
      const scale = new Float64Array(yLen);
      for (let t = 0; t < nTokens; t++) {
        for (let s = 0; s < nUsed; s++) {
          const m = ids[2 + t * idsStride + s]! - idBase;
          if (m < 0 || m >= nMats) continue;
          const xo = xv.offset + t * xv.stride + (spec.xPerSlot ? s * xSlot : 0);
          for (let r = 0; r < nRows; r++) {
            const [sum, a] = dot(wf, (m * nRows + r) * nCols, x, xo, nCols);
            const i = yv.offset + t * yv.stride + s * nRows + r;
            want[i] = sum;
            scale[i] = a;
          }
        }
      }
      for (let i = 0; i < yLen; i++) assertNear(got[i]!, want[i]!, scale[i]!, `y[${i}]`);
    },
  };
}

gpuTest(
  "matmul_id: repeated and out-of-range ids, idBase, shared and per-slot x, both kernels",
  async (gpu) => {
    const cases: Case[] = [];
    let seed = 500;
    for (
      const name of ["Q8_0", "Q4_K", "Q6_K", "F32", "MXFP4", "Q4_0", "IQ2_XXS", "IQ1_M"] as const
    ) {
      const type = requireGgmlType(GgmlType[name]);
      const nCols = colsFor(type)[1]!;
      for (const nTokens of [1, 3, 40]) {
        for (const xPerSlot of [false, true]) {
          cases.push(
            await idCase(gpu, {
              type,
              nCols,
              nRows: 19,
              nMats: 5,
              nUsed: 3,
              nTokens,
              idBase: nTokens === 3 ? 0 : 10,
              xPerSlot,
              seed: seed++,
            }),
          );
        }
      }
      for (const matvecKernel of ["tree", "rows"] as const) {
        for (const alignedX of [false, true]) {
          cases.push(
            await idCase(gpu, {
              type,
              nCols,
              nRows: 19,
              nMats: 4,
              nUsed: 2,
              nTokens: 3,
              idBase: 1,
              xPerSlot: true,
              alignedX,
              tuning: { ...MATVEC, matvecKernel, vectorX: alignedX, wgMatvec: 4, rowsMatvec: 2 },
              seed: seed++,
            }),
          );
        }
      }
      cases.push(
        await idCase(gpu, {
          type,
          nCols,
          nRows: 9,
          nMats: 3,
          nUsed: 2,
          nTokens: 33,
          idBase: 2,
          xPerSlot: false,
          alignedX: true,
          tuning: { ...TILED, vectorX: true },
          seed: seed++,
        }),
      );
      // Many entries per matrix: tiles of 4 entries, several tiles per matrix.
      cases.push(
        await idCase(gpu, {
          type,
          nCols,
          nRows: 9,
          nMats: 3,
          nUsed: 2,
          nTokens: 33,
          idBase: 2,
          xPerSlot: false,
          tuning: { tileTokens: 4, tileRows: 8, threadRows: 4, threadTokens: 4 },
          seed: seed++,
        }),
      );
    }
    await runCases(gpu, cases);
  },
);

gpuTest(
  "matmul_id over several stacks (pool arenas) with entry lists: each stack's entries, no other y touched",
  async (gpu) => {
    const cases: Case[] = [];
    let seed = 900;
    for (const name of ["Q4_K", "Q6_K", "IQ2_XXS"] as const) {
      const type = requireGgmlType(GgmlType[name]);
      const nCols = colsFor(type)[1]!;
      for (const nTokens of [1, 40]) {
        for (const xPerSlot of [false, true]) {
          cases.push(
            await idCase(gpu, {
              type,
              nCols,
              nRows: 37,
              nMats: 6,
              nUsed: 3,
              nTokens,
              idBase: 4,
              xPerSlot,
              alignedX: true,
              split: [2, 3, 1],
              seed: seed++,
            }),
          );
        }
      }
      // The GPU profile's tree kernel; batches past the one-entry kernel: route tiles per stack
      // (matvec_routedT, or the tiled kernel), dispatched over the tiles the route op counted,
      // several tiles a matrix and a part-filled last one.
      const tree = { matvecKernel: "tree", wgMatvec: 8, rowsMatvec: 2 } as const;
      for (
        const [tuning, nTokens] of [
          [{ ...tree, idMatvecMaxTokens: 8 }, 6],
          [{ idMatvecMaxTokens: 0 }, 6],
          [{ idMatvecMaxTokens: 0 }, 40],
          [{ ...tree, idMatvecMaxTokens: 0, tileTokens: 8, tileRows: 16 }, 40],
        ] as const
      ) {
        cases.push(
          await idCase(gpu, {
            type,
            nCols,
            nRows: 37,
            nMats: 5,
            nUsed: 2,
            nTokens,
            idBase: 1,
            xPerSlot: true,
            split: [4, 1],
            tuning,
            seed: seed++,
          }),
        );
      }
    }
    await runCases(gpu, cases);
  },
);

gpuTest(
  "entry lists: overlapping stacks, too many consumers, too many entries are refused",
  async (gpu) => {
    const ids = createBuffer(gpu, { label: "ids", size: 64 });
    const step = stepBuffer(gpu, 1);
    const base = { ids: { buffer: ids, offset: 0 }, nUsed: 2, maxTokens: 4, step, label: "blk.0" };
    await assert.rejects(
      () =>
        prepareEntryLists(gpu, {
          ...base,
          stacks: [{ idBase: 0, nMats: 4 }, { idBase: 3, nMats: 2 }],
        }),
      /blk\.0: stacks \[0, 4\) and \[3, 5\) overlap/,
    );
    const lists = await prepareEntryLists(gpu, {
      ...base,
      stacks: [{ idBase: 0, nMats: 4 }],
      consumersPerStack: 1,
    });
    lists.slot(0, 3);
    assert.throws(() => lists.slot(0, 3), /stack 0 has all 1 consumers/);
    assert.throws(() => lists.slot(1, 3), /stack 1 is not one of the 1 stacks/);
    await assert.rejects(
      () =>
        prepareEntryLists(gpu, {
          ...base,
          maxTokens: gpu.limits.maxComputeWorkgroupsPerDimension,
          stacks: [{ idBase: 0, nMats: 4 }],
        }),
      /entries a batch exceed one dispatch dimension/,
    );
  },
);

gpuTest("matmul: unsupported types and stacks are refused with the tensor's name", async (gpu) => {
  const type = requireGgmlType(GgmlType.NVFP4);
  const buffer = createBuffer(gpu, { label: "w", size: 36 * 4 });
  const w: GpuWeight = {
    name: "blk.0.ffn_down",
    type,
    nCols: 64,
    nRows: 4,
    nMats: 1,
    matStride: 36 * 4,
    rowBytes: 36,
    chunks: [{ buffer, byteOffset: 0, rowStart: 0, nRows: 4 }],
  };
  const view = { buffer, offset: 0, stride: 64 };
  const step = stepBuffer(gpu, 1);
  await assert.rejects(
    prepareMatmul(gpu, { w, x: view, y: view, step, label: "down" }),
    (e: unknown) =>
      e instanceof UnsupportedWeightTypeError && e.message.includes("blk.0.ffn_down") &&
      e.message.includes(ggmlTypeName(type.id)) && /supported: .*IQ1_M.*TQ2_0/.test(e.message),
  );
  const q = requireGgmlType(GgmlType.Q8_0);
  const stack = uploadWeight(gpu, "exps", q, [32, 2, 3], randomWeightBytes(q, 32 * 2 * 3));
  await assert.rejects(
    prepareMatmul(gpu, { w: stack, x: view, y: view, step, label: "exps" }),
    /stacks 3/,
  );
});

gpuTest(
  "matmul_id: the route tiles take over from the per-entry matvec at idRoutedMinEntries a matrix",
  async (gpu) => {
    const type = requireGgmlType(GgmlType.Q4_K);
    const nMats = 8;
    const w = uploadWeight(
      gpu,
      "stack",
      type,
      [256, 16, nMats],
      randomWeightBytes(type, 256 * 16 * nMats),
    );
    const ids = createBuffer(gpu, { label: "ids", size: 4 * 2 * 64 });
    const x = createBuffer(gpu, { label: "x", size: 4 * 256 * 64 });
    const y = createBuffer(gpu, { label: "y", size: 4 * 2 * 16 * 64 });
    // the path each batch size takes: "entry" (one-entry matvec) or "tiles"
    const paths = async (nChoices: number | undefined, tokens: number[]) => {
      const ops = await prepareMatmulId(gpu, {
        w,
        ids: { buffer: ids, offset: 0 },
        nUsed: 2,
        x: { buffer: x, offset: 0, stride: 256 },
        xPerSlot: false,
        y: { buffer: y, offset: 0, stride: 32 },
        step: stepBuffer(gpu, 1),
        nChoices,
        label: "stack",
        tuning: {
          matvecKernel: "rows",
          idMatvecMaxTokens: 256,
          idRoutedTMaxTokens: 4,
          idRoutedMinEntries: 6,
        },
      });
      const runs = (op: Op, n: number) =>
        (typeof op.workgroups === "function" ? op.workgroups(n) : op.workgroups) !== 0;
      return tokens.map((n) => {
        const entry = runs(ops[0]!, n);
        assert.equal(runs(ops[1]!, n), !entry, `${n} tokens: route op iff tiles`);
        assert.equal(runs(ops[2]!, n), !entry, `${n} tokens: tiles op iff tiles`);
        return entry ? "entry" : "tiles";
      });
    };
    // 8 matrices: 6 entries each from 24 tokens of 2 slots
    assert.deepEqual(await paths(undefined, [1, 4, 5, 23, 24, 64]), [
      "entry",
      "entry",
      "entry",
      "entry",
      "tiles",
      "tiles",
    ]);
    // the same stack as one of two arenas of a layer of 16 experts: 48 tokens
    assert.deepEqual(await paths(16, [24, 47, 48]), ["entry", "entry", "tiles"]);
  },
);

gpuTest("matmul: records with no new bind groups after the first token", async (gpu) => {
  const type = requireGgmlType(GgmlType.Q4_0);
  const c = await matmulCase(gpu, { type, nCols: 64, nRows: 8, nTokens: 1, seed: 3 });
  const encoder = gpu.device.createCommandEncoder();
  recordOps(encoder, c.ops, 1);
  const before = gpu.stats.snapshot();
  recordOps(encoder, c.ops, 1);
  recordOps(encoder, c.ops, 1);
  gpu.submit(encoder);
  assert.equal(gpu.stats.since(before).bindGroupsCreated, 0);
  await readback(gpu, [c.y]);
});

gpuTest(
  "uploadWeight: checks the byte count, splits rows into binding-sized chunks",
  async (gpu) => {
    const q = requireGgmlType(GgmlType.Q4_0);
    assert.throws(
      () => uploadWeight(gpu, "bad", q, [64, 3], new Uint8Array(10)),
      /takes 108 bytes, got 10/,
    );
    assert.throws(() => uploadWeight(gpu, "odd", q, [40, 3], new Uint8Array(60)), /block size/);
    const w = uploadWeight(gpu, "big", q, [64, 10], randomWeightBytes(q, 640), {
      maxBindingBytes: 36 * 4,
    });
    assert.deepEqual(w.chunks.map((c) => [c.rowStart, c.nRows]), [[0, 4], [4, 4], [8, 2]]);
    for (const c of w.chunks) assert.ok(c.buffer.size <= 36 * 4 && c.buffer.size % 4 === 0);
    assert.throws(
      () =>
        uploadWeight(gpu, "stack", q, [64, 2, 3], randomWeightBytes(q, 384), {
          maxBindingBytes: 100,
        }),
      /upload the matrices \(experts\) separately/,
    );
    await gpu.device.queue.onSubmittedWorkDone();
  },
);

Deno.test("matmul profiles: CPU adapters get the rows matvec, GPUs the tree; forcing by name", () => {
  const traits = (description: string, vendor = "", isFallbackAdapter = false) => ({
    info: { vendor, architecture: "", device: "", description, isFallbackAdapter },
    features: new Set<string>(),
  });
  const software = [
    traits("llvmpipe (LLVM 15.0.6, 256 bits)", "mesa"),
    traits("SwiftShader Device (Subzero)", "google"),
    traits("", "", true),
  ];
  for (const t of software) {
    const p = chooseMatmulProfile(t);
    assert.equal(p.name, "software", t.info.description);
    assert.equal(p.tuning.matvecKernel, "rows");
  }
  for (const t of [traits("NVIDIA H200", "nvidia"), traits("AMD Radeon RX 7900 XTX", "amd")]) {
    const p = chooseMatmulProfile(t);
    assert.equal(p.name, "gpu", t.info.description);
    assert.equal(p.tuning.matvecKernel, "tree");
  }
  assert.equal(chooseMatmulProfile(software[0]!, "gpu").tuning.matvecKernel, "tree");
  assert.throws(() => chooseMatmulProfile(software[0]!, "fast"), /"fast".*software, gpu/);
});
