// acquireGpu and its errors: what a user without a GPU is told, what a device asks for.

import assert from "node:assert/strict";
import { acquireGpu, GpuUnavailableError } from "./mod.ts";
import { gpuTest } from "../../dev/gpu.ts";

Deno.test("GpuUnavailableError says what to install", async () => {
  const noAdapter = { requestAdapter: () => Promise.resolve(null) } as unknown as GPU;
  const err = await acquireGpu({ navigatorGpu: noAdapter }).then(
    () => assert.fail("expected GpuUnavailableError"),
    (e) => e,
  );
  assert.ok(err instanceof GpuUnavailableError);
  assert.equal(err.reason, "no-adapter");
  assert.match(err.message, /requestAdapter\(\) returned null/);
  assert.match(err.message, /--unstable-webgpu/);
  if (Deno.build.os === "linux") assert.match(err.message, /apt-get install mesa-vulkan-drivers/);
  if (Deno.build.os === "darwin") assert.match(err.message, /Metal is built in/);
});

gpuTest("acquireGpu exposes the adapter, enabled features and best limits", (g) => {
  assert.ok(g.describe().length > 0);
  for (const f of g.features) assert.ok(g.adapter.features.has(f as GPUFeatureName));
  assert.equal(
    g.limits.maxStorageBufferBindingSize,
    g.adapter.limits.maxStorageBufferBindingSize,
    "asks for the adapter's maximum, not the 128 MiB default",
  );
  assert.equal(
    g.limits.maxComputeWorkgroupStorageSize,
    g.adapter.limits.maxComputeWorkgroupStorageSize,
  );
  console.log(`gpu_test: ${g.describe()}`);
});
