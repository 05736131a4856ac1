// The pipeline cache (keys, shared layouts) and compile errors.

import assert from "node:assert/strict";
import {
  defineShaderText,
  expectNoGpuErrors,
  getPipeline,
  GpuValidationError,
  pipelineCache,
  ShaderCompileError,
} from "./mod.ts";
import { gpuTest } from "../../dev/gpu.ts";

const F32 = { variant: "f32", defines: { ENABLE: "", T: "f32" } } as const;

gpuTest("pipeline cache: same key → same kernel, new constants → new kernel", async (g) => {
  const cache = pipelineCache(g);
  const k64 = await getPipeline(g, "smoke", { ...F32, constants: { WG_SIZE: 64 } });
  const again = await getPipeline(g, "smoke", { ...F32, constants: { WG_SIZE: 64 } });
  const k128 = await getPipeline(g, "smoke", { ...F32, constants: { WG_SIZE: 128 } });
  const fill = await getPipeline(g, "smoke", { ...F32, entryPoint: "fill" });
  assert.equal(again, k64);
  assert.notEqual(k128, k64);
  assert.notEqual(k128.pipeline, k64.pipeline);
  assert.equal(k64.key, "smoke_f32{WG_SIZE=64}");
  assert.equal(k128.key, "smoke_f32{WG_SIZE=128}");
  assert.equal(fill.key, "smoke_f32.fill");
  assert.equal(cache.peek(k64.key), k64);
  assert.equal(k128.layout, k64.layout, "same binding signature → one shared layout");
  assert.equal(fill.layout, k64.layout);
  await assert.rejects(
    getPipeline(g, "smoke", { variant: "f32", defines: { ENABLE: "", T: "f16" } }),
    /own variant name/,
  );
  // The same file name in another folder (a benchmark's other kernel version) is another kernel.
  const other = new URL("file:///bench/other-shaders/");
  defineShaderText("smoke", "@compute @workgroup_size(1) fn main() {}", other);
  const elsewhere = await getPipeline(g, "smoke", { baseUrl: other });
  assert.equal(elsewhere.key, `smoke@${other.href}`);
  assert.equal(cache.peek("smoke"), undefined, "not filed under the package's own smoke.wgsl");
});

gpuTest("compile errors name the kernel and line; validation errors are caught", async (g) => {
  defineShaderText(
    "broken_kernel",
    "@group(0) @binding(0) var<storage, read_write> y: array<f32>;\n" +
      "@compute @workgroup_size(1) fn main() {\n  y[0] = nope;\n}\n",
  );
  const err = await getPipeline(g, "broken_kernel").then(
    () => assert.fail("expected ShaderCompileError"),
    (e) => e,
  );
  assert.ok(err instanceof ShaderCompileError);
  assert.match(err.message, /broken_kernel/);
  assert.match(err.message, /line 3/);
  await assert.rejects(
    expectNoGpuErrors(g.device, "bad usage", () => {
      g.device.createBuffer({
        size: 4,
        usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.STORAGE,
      });
    }),
    (e) => e instanceof GpuValidationError && /bad usage/.test(e.message),
  );
  assert.deepEqual(g.uncapturedErrors, [], "scoped errors do not reach the uncaptured log");
});
