import assert from "node:assert/strict";

import { createBuffer, readback } from "../buffers.ts";
import { recordOps } from "./op.ts";
import { prepareCopyRows } from "./copy_rows.ts";
import { gpuTest } from "../../../dev/gpu.ts";

gpuTest(
  "copy_rows: each token's head sub-rows land at their strided place; stride 0 broadcasts",
  async (gpu) => {
    const [T, rows, n] = [3, 5, 7];
    // x: [T, rows, 12] with the copied part at column 4; y: [T, rows, 10] with it at column 3
    const x = Float32Array.from({ length: 2 + T * rows * 12 }, (_, i) => i + 0.25);
    const xb = createBuffer(gpu, { label: "x", data: x });
    for (const xRowStride of [12, 0]) {
      const y0 = new Float32Array(1 + T * rows * 10).fill(-1);
      const yb = createBuffer(gpu, { label: "y", data: y0 });
      const op = await prepareCopyRows(gpu, {
        x: { buffer: xb, offset: 2 + 4, stride: rows * 12 },
        xRowStride,
        y: { buffer: yb, offset: 1 + 3, stride: rows * 10 },
        yRowStride: 10,
        rows,
        n,
        label: "copy",
      });
      const enc = gpu.device.createCommandEncoder();
      recordOps(enc, [op], 2); // only two tokens this batch
      gpu.submit(enc);
      const [got] = await readback(gpu, [yb]);
      const want = y0.slice();
      for (let t = 0; t < 2; t++) {
        for (let r = 0; r < rows; r++) {
          for (let i = 0; i < n; i++) {
            want[1 + t * rows * 10 + r * 10 + 3 + i] =
              x[2 + t * rows * 12 + r * xRowStride + 4 + i]!;
          }
        }
      }
      assert.deepEqual(new Float32Array(got!), want, `xRowStride ${xRowStride}`);
    }
  },
);
