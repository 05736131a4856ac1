import assert from "node:assert/strict";

import { createBuffer, readback } from "../buffers.ts";
import { GgmlType, requireGgmlType } from "../../gguf/types.ts";
import { type GpuWeight, recordOps } from "./op.ts";
import { prepareSlotBias } from "./expert_bias.ts";
import { gpuTest } from "../../../dev/gpu.ts";

gpuTest(
  "expert_bias: each chosen slot's bias row is added, only by the arena that holds it",
  async (gpu) => {
    const [T, k, n, rowStride] = [3, 2, 9, 12]; // bias rows padded to 12 elements, as pool slots are
    const slotsPerArena = 3;
    const slots = new Uint32Array([4, 1, 0, 5, 2, 3]); // [T, k], slots 0…5 over two arenas
    const slotsBuf = createBuffer(gpu, { label: "slots", data: slots });
    const biasValues = Float32Array.from(
      { length: 6 * rowStride },
      (_, i) => (i % 17) - 8 + i / 100,
    );
    const y0 = Float32Array.from({ length: T * k * n }, (_, i) => Math.sin(i));
    const yb = createBuffer(gpu, { label: "y", data: y0 });
    const ops = [];
    for (let a = 0; a < 2; a++) {
      const data = biasValues.slice(
        a * slotsPerArena * rowStride,
        (a + 1) * slotsPerArena * rowStride,
      );
      const buffer = createBuffer(gpu, { label: `bias${a}`, data });
      const w: GpuWeight = {
        name: `bias${a}`,
        type: requireGgmlType(GgmlType.F32),
        nCols: n,
        nRows: 1,
        nMats: slotsPerArena,
        matStride: rowStride * 4,
        rowBytes: n * 4,
        chunks: [{ buffer, byteOffset: 0, rowStart: 0, nRows: 1 }],
      };
      ops.push(
        await prepareSlotBias(gpu, {
          bias: w,
          idBase: a * slotsPerArena,
          slots: { buffer: slotsBuf, offset: 0, stride: k },
          y: { buffer: yb, offset: 0, stride: k * n },
          k,
          n,
          label: `bias${a}`,
        }),
      );
    }
    const enc = gpu.device.createCommandEncoder();
    recordOps(enc, ops, T);
    gpu.submit(enc);
    const [got] = await readback(gpu, [yb]);
    const want = y0.slice();
    for (let t = 0; t < T; t++) {
      for (let r = 0; r < k; r++) {
        const s = slots[t * k + r]!;
        for (let i = 0; i < n; i++) {
          want[(t * k + r) * n + i] = Math.fround(
            want[(t * k + r) * n + i]! + biasValues[s * rowStride + i]!,
          );
        }
      }
    }
    assert.deepEqual(new Float32Array(got!), want);
  },
);
