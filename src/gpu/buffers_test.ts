// Buffers: batched readbacks, unaligned uploads, the params buffer's packing.

import assert from "node:assert/strict";
import { createBuffer, ParamsBuffer, readback, recordReadback, upload } from "./mod.ts";
import { gpuTest } from "../../dev/gpu.ts";

gpuTest("a readback of several buffers costs one sync", async (g) => {
  const bufs = [
    createBuffer(g, { label: "a", data: new Float32Array([1, 2, 3]) }),
    createBuffer(g, { label: "b", data: new Uint32Array([7, 8]) }),
    createBuffer(g, { label: "c", data: new Uint8Array([1, 2, 3, 4, 5]) }),
  ];
  const before = g.stats.snapshot();
  const [a, b, c, cTail] = await readback(g, [
    ...bufs,
    { buffer: bufs[2]!, offset: 4, size: 1 },
  ]);
  const cost = g.stats.since(before);
  assert.equal(cost.syncs, 1);
  assert.equal(cost.submits, 1);
  assert.deepEqual([...new Float32Array(a!)], [1, 2, 3]);
  assert.deepEqual([...new Uint32Array(b!)], [7, 8]);
  assert.deepEqual([...new Uint8Array(c!)], [1, 2, 3, 4, 5, 0, 0, 0], "size rounded to 4");
  assert.deepEqual([...new Uint8Array(cTail!)], [5]);
  for (const buf of bufs) buf.destroy();
});

gpuTest("upload writes unaligned lengths and rejects unaligned offsets", async (g) => {
  const buf = createBuffer(g, { label: "u", size: 16 });
  upload(g, buf, new Uint8Array([9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9]));
  upload(g, buf, new Uint8Array([1, 2, 3, 4, 5, 6, 7]), 4);
  upload(g, buf, new Uint16Array([0x0201]).subarray(0, 1), 12);
  const [out] = await readback(g, [buf]);
  assert.deepEqual(
    [...new Uint8Array(out!)],
    [9, 9, 9, 9, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 0, 0],
  );
  assert.throws(() => upload(g, buf, new Uint8Array(4), 2), /not a multiple of 4/);
  assert.throws(() => upload(g, buf, new Uint8Array(16), 4), /overrun/);
  buf.destroy();
});

gpuTest("params buffer packs u32/i32/f32 and skips unchanged writes", async (g) => {
  const p = new ParamsBuffer(g, "p", { n: "u32", k: "i32", eps: "f32" });
  assert.equal(p.buffer.size, 16);
  const words = p.pack({ n: 5, k: -1, eps: 0.5 });
  assert.deepEqual([...words.subarray(0, 3)], [5, 0xffffffff, 0x3f000000]);
  const before = g.stats.bytesUploaded;
  p.write({ n: 5, k: -1, eps: 0.5 });
  p.write({ n: 5, k: -1, eps: 0.5 });
  assert.equal(g.stats.bytesUploaded - before, 16);
  p.write({ n: 6, k: -1, eps: 0.5 });
  assert.equal(g.stats.bytesUploaded - before, 32);
  const [bytes] = await readback(g, [p.buffer]);
  assert.deepEqual([...new Uint32Array(bytes!)], [6, 0xffffffff, 0x3f000000, 0]);
  const uniformOnly = g.device.createBuffer({
    label: "u",
    size: 16,
    usage: GPUBufferUsage.UNIFORM,
  });
  assert.throws(
    () => recordReadback(g, g.device.createCommandEncoder(), [uniformOnly]),
    /COPY_SRC/,
  );
  uniformOnly.destroy();
  assert.throws(() => p.pack({ n: -1, k: 0, eps: 0 }), /is not a u32/);
  assert.throws(() => p.pack({ n: 1.5, k: 0, eps: 0 }), /is not a u32/);
  assert.throws(() => p.pack({ n: 1, eps: 0 } as never), /"k" missing/);
  p.destroy();
});
