// dispatch: workgroup splitting, binding checks, the bind group cache and the
// params layout check against the WGSL struct.

import assert from "node:assert/strict";
import {
  createBuffer,
  dispatch,
  getPipeline,
  ParamsBuffer,
  readback,
  splitWorkgroups,
} from "./mod.ts";
import { gpuTest } from "../../dev/gpu.ts";

const F32 = { variant: "f32", defines: { ENABLE: "", T: "f32" } } as const;
const WG = 64;

Deno.test("splitWorkgroups keeps each dimension within the limit", () => {
  assert.deepEqual(splitWorkgroups(100, 65535), [100, 1, 1]);
  for (const [n, max] of [[65536, 65535], [40, 7], [49, 7], [8, 7]] as const) {
    const [x, y, z] = splitWorkgroups(n, max);
    assert.ok(x <= max && y <= max && z === 1, `${n} → ${x}×${y}`);
    assert.ok(x * y >= n && x * (y - 1) < n, `${n} → ${x}×${y} wastes a whole row`);
  }
  assert.throws(() => splitWorkgroups(50, 7), RangeError);
  assert.throws(() => splitWorkgroups(-1, 7), RangeError);
});

gpuTest("an entry point that leaves a binding unused takes the same buffers", async (g) => {
  const n = 100;
  const fill = await getPipeline(g, "smoke", { ...F32, entryPoint: "fill" });
  const x = createBuffer(g, { label: "x", size: 4 * n });
  const y = createBuffer(g, { label: "y", size: 4 * n });
  const params = new ParamsBuffer(g, "p", { n: "u32", a: "f32", b: "f32" });
  params.write({ n, a: 0, b: 7 });
  const encoder = g.device.createCommandEncoder();
  dispatch(encoder, fill, [x, y, params.buffer], Math.ceil(n / 64));
  g.submit(encoder);
  const [out] = await readback(g, [y]);
  assert.deepEqual([...new Float32Array(out!)], new Array(n).fill(7));
  assert.throws(
    () => dispatch(g.device.createCommandEncoder(), fill, [x, y], 1),
    /got 2 buffer\(s\), the kernel binds 3/,
  );
});

gpuTest("bind groups are cached per buffer set", async (g) => {
  const k = await getPipeline(g, "smoke", { ...F32, constants: { WG_SIZE: 64 } });
  const x = createBuffer(g, { label: "x", size: 256 });
  const y = createBuffer(g, { label: "y", size: 256 });
  const y2 = createBuffer(g, { label: "y2", size: 256 });
  const params = new ParamsBuffer(g, "p", { n: "u32", a: "f32", b: "f32" });
  params.write({ n: 64, a: 1, b: 0 });
  const before = g.stats.snapshot();
  const encoder = g.device.createCommandEncoder();
  for (let i = 0; i < 5; i++) dispatch(encoder, k, [x, y, params.buffer], 1);
  dispatch(encoder, k, [x, y2, params.buffer], 1);
  const pass = encoder.beginComputePass();
  for (let i = 0; i < 5; i++) dispatch(pass, k, [x, y, params.buffer], 1);
  pass.end();
  g.submit(encoder);
  await g.device.queue.onSubmittedWorkDone();
  const cost = g.stats.since(before);
  assert.equal(cost.dispatches, 11);
  assert.equal(cost.bindGroupsCreated, 2);
  for (const b of [x, y, y2]) b.destroy();
});

gpuTest(
  "a launcher whose params layout disagrees with the WGSL struct fails naming the field",
  async (g) => {
    const k = await getPipeline(g, "smoke", { ...F32, constants: { WG_SIZE: WG } });
    assert.deepEqual(k.params?.fields, [["n", "u32"], ["a", "f32"], ["b", "f32"]]);
    const xb = createBuffer(g, { label: "smoke.x", size: 64 });
    const yb = createBuffer(g, { label: "smoke.y", size: 64 });
    // a and b swapped: the kernel would read the offset as the scale
    const swapped = new ParamsBuffer(g, "smoke.params", { n: "u32", b: "f32", a: "f32" });
    swapped.write({ n: 16, a: 2, b: 1 });
    const encoder = g.device.createCommandEncoder();
    assert.throws(
      () => dispatch(encoder, k, [xb, yb, swapped.buffer], 1),
      /params field 1 is a: f32 in the WGSL struct Params but b: f32/,
    );
    const short = new ParamsBuffer(g, "smoke.params", { n: "u32", a: "f32" });
    assert.throws(
      () => dispatch(encoder, k, [xb, yb, short.buffer], 1),
      /field 2 is b: f32.*\(none\)/,
    );
    // a plain buffer has no layout to check: refused rather than trusted
    const raw = createBuffer(g, { label: "smoke.raw_params", size: 16 });
    assert.throws(
      () => dispatch(encoder, k, [xb, yb, raw], 1),
      /binding 2 \(params: Params\) is not a ParamsBuffer/,
    );
    // the agreeing layout dispatches
    const good = new ParamsBuffer(g, "smoke.params", { n: "u32", a: "f32", b: "f32" });
    dispatch(encoder, k, [xb, yb, good.buffer], 1);
    for (const b of [xb, yb, swapped.buffer, short.buffer, raw, good.buffer]) b.destroy();
  },
);
