// The row lookup (embedding) kernel against src/gguf/dequant.ts for every GPU
// weight type, single- and multi-chunk, on whatever adapter this machine has.
// Skipped, with the reason printed, without an adapter.

import assert from "node:assert/strict";
import { dequantize } from "../../gguf/dequant.ts";
import { GgmlType, type GgmlTypeInfo, requireGgmlType } from "../../gguf/types.ts";
import { Rng } from "../../util/rng.ts";
import { createBuffer, readback } from "../buffers.ts";
import { expectNoGpuErrors, type Gpu } from "../device.ts";
import { prepareGetRows } from "./get_rows.ts";
import { type GpuWeight, type Op, recordOps, stepWords } from "./op.ts";
import { GPU_WEIGHT_TYPES, UnsupportedWeightTypeError } from "./quant_wgsl.ts";
import { randomWeightBytes, uploadWeight } from "./weights.ts";
import { gpuTest } from "../../../dev/gpu.ts";

const SENTINEL = -777.25;

function stepBuffer(gpu: Gpu, nTokens: number): GPUBuffer {
  return createBuffer(gpu, { label: "step", data: stepWords(0, nTokens) });
}

interface Case {
  readonly name: string;
  readonly ops: Op[];
  readonly nTokens: number;
  readonly out: GPUBuffer;
  readonly check: (out: Float32Array) => void;
}

/**
 * out (offset 3, stride nCols + 5) = rows ids[t] of a random table; ids past
 * the last row, and every element outside the rows, keep the sentinel.
 */
async function getRowsCase(
  gpu: Gpu,
  type: GgmlTypeInfo,
  nCols: number,
  nRows: number,
  nTokens: number,
  seed: number,
  maxBindingBytes?: number,
): Promise<Case> {
  const rng = new Rng(seed);
  const bytes = randomWeightBytes(type, nCols * nRows, () => rng.next());
  const w: GpuWeight = uploadWeight(gpu, `embd.${type.name}`, type, [nCols, nRows], bytes, {
    maxBindingBytes,
  });
  const table = dequantize(type.id, bytes, nCols * nRows);
  const ids = Uint32Array.from({ length: 1 + nTokens }, () => rng.int(nRows + 2));
  const ov = { offset: 3, stride: nCols + 5 };
  const outLen = ov.offset + nTokens * ov.stride;
  const out = createBuffer(gpu, { label: "out", data: new Float32Array(outLen).fill(SENTINEL) });
  const name = `${type.name} [${nRows}x${nCols}] T=${nTokens} chunks ${w.chunks.length}`;
  const ops = await prepareGetRows(gpu, {
    w,
    ids: { buffer: createBuffer(gpu, { label: "ids", data: ids }), offset: 1 },
    out: { buffer: out, offset: ov.offset, stride: ov.stride },
    step: stepBuffer(gpu, nTokens),
    label: name,
  });
  return {
    name,
    ops,
    nTokens,
    out,
    check: (got) => {
      const want = new Float32Array(outLen).fill(SENTINEL);
      for (let t = 0; t < nTokens; t++) {
        const r = ids[1 + t]!;
        if (r >= nRows) continue;
        want.set(table.subarray(r * nCols, (r + 1) * nCols), ov.offset + t * ov.stride);
      }
      for (let i = 0; i < outLen; i++) {
        // Dequantisation in f32 may round a K-quant's d*sc*q - dmin*m differently
        // (fused multiply-add); anything else must match ggml's bits.
        const tol = 1e-6 * Math.abs(want[i]!);
        if (!(Math.abs(got[i]! - want[i]!) <= tol)) {
          assert.fail(`out[${i}]: got ${got[i]}, want ${want[i]}`);
        }
      }
    },
  };
}

async function runCases(gpu: Gpu, cases: readonly Case[]): Promise<void> {
  const outs = await expectNoGpuErrors(gpu.device, "get_rows cases", async () => {
    const encoder = gpu.device.createCommandEncoder();
    for (const c of cases) recordOps(encoder, c.ops, c.nTokens);
    gpu.submit(encoder);
    return await readback(gpu, cases.map((c) => c.out));
  });
  cases.forEach((c, i) => {
    try {
      c.check(new Float32Array(outs[i]!));
    } catch (error) {
      throw new Error(`${c.name}: ${(error as Error).message}`, { cause: error });
    }
  });
}

gpuTest("get_rows: every weight type, one chunk and several, ids past the table", async (gpu) => {
  const cases: Case[] = [];
  let seed = 1;
  for (const id of GPU_WEIGHT_TYPES) {
    const type = requireGgmlType(id);
    const nCols = !type.quantized ? 44 : type.blockSize === 256 ? 512 : 96;
    const rb = (nCols / type.blockSize) * type.typeSize;
    cases.push(await getRowsCase(gpu, type, nCols, 37, 1, seed++));
    cases.push(await getRowsCase(gpu, type, nCols, 37, 40, seed++));
    const split = await getRowsCase(gpu, type, nCols, 37, 40, seed++, 10 * rb);
    assert.equal(split.ops.length, 4);
    cases.push(split);
  }
  await runCases(gpu, cases);
});

gpuTest("get_rows: unsupported type is refused with the tensor's name", async (gpu) => {
  const type = requireGgmlType(GgmlType.NVFP4);
  const buffer = createBuffer(gpu, { label: "w", size: 4 * type.typeSize });
  const w: GpuWeight = {
    name: "token_embd.weight",
    type,
    nCols: 64,
    nRows: 4,
    nMats: 1,
    matStride: 4 * type.typeSize,
    rowBytes: type.typeSize,
    chunks: [{ buffer, byteOffset: 0, rowStart: 0, nRows: 4 }],
  };
  await assert.rejects(
    prepareGetRows(gpu, {
      w,
      ids: { buffer, offset: 0 },
      out: { buffer, offset: 0, stride: 64 },
      step: stepBuffer(gpu, 1),
      label: "embd",
    }),
    (e: unknown) =>
      e instanceof UnsupportedWeightTypeError && /token_embd\.weight/.test(e.message) &&
      /NVFP4/.test(e.message) && /supported: .*IQ2_XXS.*IQ1_S/.test(e.message),
  );
});
