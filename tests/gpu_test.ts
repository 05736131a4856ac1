// End-to-end tests of src/gpu on whatever adapter this machine has (llvmpipe
// in CI, so sizes stay tiny): the smoke kernel, its f16 variant, the portable
// path and timestamps. The unit tests of device, buffers, pipeline, dispatch and
// shaders sit beside them in src/gpu/. GPU tests are ignored, with the reason printed,
// when there is no adapter; text-only tests always run.

import assert from "node:assert/strict";
import {
  acquireGpu,
  createBuffer,
  dispatch,
  getPipeline,
  type Gpu,
  GpuFeatureError,
  GpuTimer,
  ParamsBuffer,
  pipelineCache,
  recordReadback,
} from "../src/gpu/mod.ts";
import { gpuTest } from "../dev/gpu.ts";

const F32 = { variant: "f32", defines: { ENABLE: "", T: "f32" } } as const;
const F16 = { variant: "f16", defines: { ENABLE: "enable f16;", T: "f16" } } as const;
const WG = 64;

function inputs(n: number): Float32Array {
  return Float32Array.from({ length: n }, (_, i) => Math.sin(i * 0.37) * 10 - i / n);
}

function cpuSmoke(x: Float32Array, a: number, b: number): Float32Array {
  return x.map((v) => Math.fround(Math.fround(a * v) + b));
}

function assertClose(got: ArrayLike<number>, want: ArrayLike<number>, tol: number): void {
  assert.equal(got.length, want.length);
  for (let i = 0; i < want.length; i++) {
    const g = got[i]!, w = want[i]!;
    if (!(Math.abs(g - w) <= tol * Math.max(1, Math.abs(w)))) {
      assert.fail(`element ${i}: got ${g}, want ${w} (tolerance ${tol})`);
    }
  }
}

/** Runs smoke `main` on x with one submit and one readback; returns y's bytes. */
async function runSmoke(
  g: Gpu,
  opts: typeof F32 | typeof F16,
  x: ArrayBufferView,
  n: number,
  a: number,
  b: number,
): Promise<ArrayBuffer> {
  const bytesPer = opts.variant === "f16" ? 2 : 4;
  const xb = createBuffer(g, { label: "smoke.x", data: x });
  const yb = createBuffer(g, { label: "smoke.y", size: n * bytesPer });
  const params = new ParamsBuffer(g, "smoke.params", { n: "u32", a: "f32", b: "f32" });
  params.write({ n, a, b });
  const k = await getPipeline(g, "smoke", { ...opts, constants: { WG_SIZE: WG } });
  const encoder = g.device.createCommandEncoder();
  dispatch(encoder, k, [xb, yb, params.buffer], Math.ceil(n / WG));
  const pending = recordReadback(g, encoder, [{ buffer: yb, size: n * bytesPer }]);
  g.submit(encoder);
  const [out] = await pending.read();
  xb.destroy();
  yb.destroy();
  params.destroy();
  return out!;
}

gpuTest("smoke kernel matches the CPU on 3000 f32 elements", async (g) => {
  const n = 3000, a = 1.5, b = -0.25;
  const x = inputs(n);
  const before = g.stats.snapshot();
  const out = await runSmoke(g, F32, x, n, a, b);
  assertClose(new Float32Array(out), cpuSmoke(x, a, b), 1e-6);
  const cost = g.stats.since(before);
  assert.equal(cost.submits, 1);
  assert.equal(cost.syncs, 1);
  assert.equal(cost.dispatches, 1);
  assert.deepEqual(g.uncapturedErrors, []);
});

gpuTest("f16 variant matches the CPU (when shader-f16 is enabled)", async (g) => {
  if (!g.has("shader-f16")) {
    console.log("gpu_test: shader-f16 not enabled on this adapter; f16 path not run");
    return;
  }
  const n = 2000, a = 0.75, b = 0.125;
  const x = Float16Array.from(inputs(n));
  const out = await runSmoke(g, F16, x, n, a, b);
  const got = new Float16Array(out, 0, n);
  const want = Float16Array.from(cpuSmoke(Float32Array.from(x), a, b));
  assertClose(got, want, 1e-3);
});

gpuTest("portable path: features off, small limits, workgroups split across y", async (g) => {
  const portable = await acquireGpu({
    shaderF16: false,
    subgroups: false,
    timestampQuery: false,
    limitCaps: { maxComputeWorkgroupsPerDimension: 8 },
  });
  try {
    assert.equal(portable.features.size, 0);
    assert.equal(portable.limits.maxComputeWorkgroupsPerDimension, 8);
    await assert.rejects(getPipeline(portable, "smoke", F16), GpuFeatureError);
    const n = 64 * 8 * 3 + 5; // 25 workgroups → [7, 4, 1] with 8 per dimension
    const x = inputs(n);
    const out = await runSmoke(portable, F32, x, n, 2, 1);
    assertClose(new Float32Array(out), cpuSmoke(x, 2, 1), 1e-6);
    const timer = new GpuTimer(portable);
    assert.equal(timer.enabled, false);
    assert.equal(timer.pass("x"), undefined);
    assert.deepEqual(await timer.read(), []);
    assert.throws(
      () =>
        dispatch(
          portable.device.createCommandEncoder(),
          pipelineCache(portable).peek("smoke_f32{WG_SIZE=64}")!,
          [],
          [9, 1, 1],
        ),
      /exceed maxComputeWorkgroupsPerDimension 8/,
    );
    assert.deepEqual(portable.uncapturedErrors, []);
  } finally {
    portable.destroy();
  }
  assert.equal((await portable.lost).reason, "destroyed");
  assert.ok(portable.isLost);
  assert.ok(!g.isLost, "the shared device is untouched");
});

gpuTest("timestamps time a pass (when timestamp-query is enabled)", async (g) => {
  const timer = new GpuTimer(g, 4);
  if (!timer.enabled) {
    console.log("gpu_test: timestamp-query not enabled; timer path not run");
    return;
  }
  const k = await getPipeline(g, "smoke", { ...F32, constants: { WG_SIZE: 64 } });
  const n = 1024;
  const x = createBuffer(g, { label: "x", size: 4 * n });
  const y = createBuffer(g, { label: "y", size: 4 * n });
  const params = new ParamsBuffer(g, "p", { n: "u32", a: "f32", b: "f32" });
  params.write({ n, a: 1, b: 1 });
  const encoder = g.device.createCommandEncoder();
  dispatch(encoder, k, [x, y, params.buffer], n / 64, { timestampWrites: timer.pass("smoke") });
  dispatch(encoder, k, [y, x, params.buffer], n / 64, { timestampWrites: timer.pass("back") });
  timer.resolve(encoder);
  g.submit(encoder);
  const times = await timer.read();
  assert.deepEqual(times.map((t) => t.label), ["smoke", "back"]);
  for (const t of times) assert.ok(t.ms >= 0 && t.ms < 10_000, `${t.label}: ${t.ms} ms`);
  timer.destroy();
  for (const b of [x, y]) b.destroy();
});
