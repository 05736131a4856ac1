import assert from "node:assert/strict";
import { acquireGpu, type Gpu, GpuUnavailableError } from "../device.ts";
import { createBuffer, readback } from "../buffers.ts";
import { argmax, makeRng, randomArray } from "./cpu_ref.ts";
import { recordOps, STEP } from "./op.ts";
import { prepareArgmax } from "./sample.ts";

let gpu: Gpu | undefined;
try {
  gpu = await acquireGpu();
} catch (e) {
  if (!(e instanceof GpuUnavailableError)) throw e;
  console.log(`sample_test: no GPU, skipping: ${e.message}`);
}

Deno.test({
  name: "sample: argmax of the first, the last or every row; ties → first index; NaN never wins",
  ignore: !gpu,
  async fn() {
    const g = gpu!;
    const rng = makeRng(13);
    const T = 4, n = 1001, stride = 1003;
    const logits = randomArray(T * stride, rng, 5);
    // Row 0: a tie between two maxima and a NaN. Row 1: the maximum in the last element.
    logits[17] = 9;
    logits[700] = 9;
    logits[3] = NaN;
    logits[stride + n - 1] = 50;
    logits[2 * stride + 5] = 7;
    const rows = Array.from({ length: T }, (_, t) => logits.subarray(t * stride, t * stride + n));
    const lb = createBuffer(g, { label: "logits", data: logits });
    const tokens = createBuffer(g, { label: "tokens", size: 8 * 4 });
    const maxes = createBuffer(g, { label: "max", size: 8 * 4 });
    const step = new Uint32Array(STEP.length);
    step[STEP.nTokens] = 3;
    const stepBuf = createBuffer(g, { label: "step", data: step });
    const view = { buffer: lb, offset: 0, stride };
    const ops = [
      await prepareArgmax(g, {
        logits: view,
        n,
        out: { buffer: tokens, index: 0 },
        maxLogit: { buffer: maxes, index: 0 },
        label: "first",
      }),
      await prepareArgmax(g, {
        logits: view,
        n,
        out: { buffer: tokens, index: 1 },
        rows: "last",
        step: stepBuf,
        label: "last",
      }),
      await prepareArgmax(g, {
        logits: view,
        n,
        out: { buffer: tokens, index: 3 },
        maxLogit: { buffer: maxes, index: 3 },
        rows: "all",
        label: "all",
      }),
    ];
    const enc = g.device.createCommandEncoder();
    recordOps(enc, ops, T);
    g.submit(enc);
    const [tk, mx] = await readback(g, [tokens, maxes]);
    const ids = new Uint32Array(tk!), vals = new Float32Array(mx!);
    const want = rows.map((r) => argmax(r));
    assert.equal(want[0]!.index, 17);
    assert.equal(ids[0], 17);
    assert.equal(vals[0], 9);
    assert.equal(ids[1], want[2]!.index, "last row of a batch of 3");
    for (let t = 0; t < T; t++) {
      assert.equal(ids[3 + t], want[t]!.index, `row ${t}`);
      assert.equal(vals[3 + t], Math.fround(want[t]!.value), `row ${t} max`);
    }
    assert.equal(ids[4], n - 1);
  },
});
