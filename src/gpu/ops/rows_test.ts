import assert from "node:assert/strict";
import { createBuffer, readback, upload } from "../buffers.ts";
import { recordOps } from "./op.ts";
import { prepareCopyLastRow } from "./rows.ts";
import { gpuTest } from "../../../dev/gpu.ts";

gpuTest("rows: copy_last_row picks the batch's last token row at any batch size", async (gpu) => {
  {
    const n = 70;
    const stride = 80;
    const offset = 5;
    const data = Float32Array.from({ length: offset + 6 * stride }, (_, i) => i * 0.5);
    const x = createBuffer(gpu, { label: "x", data });
    const out = createBuffer(gpu, { label: "out", size: n * 4 });
    const step = createBuffer(gpu, {
      label: "step",
      size: 16,
      usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
    });
    const op = await prepareCopyLastRow(gpu, {
      x: { buffer: x, offset, stride },
      out,
      n,
      step,
      label: "last",
    });
    for (const nTokens of [1, 4, 6]) {
      upload(gpu, step, new Uint32Array([0, nTokens, nTokens, 0]));
      const enc = gpu.device.createCommandEncoder();
      recordOps(enc, [op], nTokens);
      gpu.submit(enc);
      const [got] = await readback(gpu, [out]);
      const want = data.slice(offset + (nTokens - 1) * stride, offset + (nTokens - 1) * stride + n);
      assert.deepEqual(new Float32Array(got!), want, `nTokens ${nTokens}`);
    }
  }
});
