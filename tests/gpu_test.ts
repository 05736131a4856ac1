// End-to-end tests of src/gpu on whatever adapter this machine has (llvmpipe
// in CI, so sizes stay tiny). GPU tests are skipped, with the reason printed,
// when there is no adapter; text-only tests always run.

import assert from "node:assert/strict";
import {
  acquireGpu,
  createBuffer,
  defineShaderText,
  dispatch,
  expandIncludes,
  expectNoGpuErrors,
  getPipeline,
  type Gpu,
  GpuFeatureError,
  GpuTimer,
  GpuUnavailableError,
  GpuValidationError,
  loadShaderText,
  ParamsBuffer,
  parseBindings,
  parseParamsDecl,
  pipelineCache,
  pipelineKey,
  readback,
  recordReadback,
  requiredFeatures,
  ShaderCompileError,
  ShaderSourceError,
  splitWorkgroups,
  substituteDefines,
  upload,
} from "../src/gpu/mod.ts";

let gpu: Gpu | undefined;
try {
  gpu = await acquireGpu();
} catch (error) {
  if (!(error instanceof GpuUnavailableError)) throw error;
  console.log(`gpu_test: skipping GPU tests: ${error.message}`);
}

/** A test that needs the shared device; ignored (reason printed above) without one. */
function gpuTest(name: string, fn: (gpu: Gpu) => Promise<void> | void): void {
  Deno.test({ name, ignore: gpu === undefined, fn: () => fn(gpu!) });
}

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

Deno.test("WGSL text: strict substitution, bindings and enable directives", async () => {
  const text = await loadShaderText("smoke");
  assert.equal(loadShaderText("smoke"), loadShaderText("smoke"), "text is cached");
  const f16 = substituteDefines(text, F16.defines, "smoke_f16");
  assert.deepEqual(requiredFeatures(f16), ["shader-f16"]);
  assert.deepEqual(requiredFeatures(substituteDefines(text, F32.defines)), []);
  assert.deepEqual(parseBindings(f16), ["read-only-storage", "storage", "uniform"]);
  assert.throws(() => substituteDefines(text, { T: "f32" }), /\{\{ENABLE\}\}/);
  assert.throws(() => substituteDefines(text, { ...F32.defines, TYPO: "x" }), /TYPO/);
  assert.throws(
    () => parseBindings("@group(0) @binding(1) var<storage, read> a: array<f32>;"),
    /skips @binding\(0\)/,
  );
  assert.throws(() => loadShaderText("../etc/passwd"), ShaderSourceError);
  await assert.rejects(loadShaderText("no_such_kernel"), ShaderSourceError);
  assert.equal(pipelineKey("matvec", { variant: "q4_k_f16acc" }), "matvec_q4_k_f16acc");
  assert.equal(
    pipelineKey("smoke", { variant: "f32", entryPoint: "fill", constants: { WG_SIZE: 64, A: 1 } }),
    "smoke_f32.fill{A=1,WG_SIZE=64}",
  );
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
    // the agreeing layout dispatches
    const good = new ParamsBuffer(g, "smoke.params", { n: "u32", a: "f32", b: "f32" });
    dispatch(encoder, k, [xb, yb, good.buffer], 1);
    for (const b of [xb, yb, swapped.buffer, short.buffer, good.buffer]) b.destroy();
  },
);

Deno.test("every kernel's params struct is found: a shader declaring params names a struct it has", async () => {
  const dir = new URL("../shaders/", import.meta.url);
  let withParams = 0;
  for (const e of Deno.readDirSync(dir)) {
    if (!e.name.endsWith(".wgsl")) continue;
    // The struct may come from a shaders/lib include (matmul_params).
    const text = await expandIncludes(await Deno.readTextFile(new URL(e.name, dir)), dir, e.name);
    if (!/\bvar\s*<[^>]*>\s*params\s*:/.test(text)) continue;
    const decl = parseParamsDecl(text, e.name);
    assert.ok(decl && decl.fields.length > 0, `${e.name}: params struct not parsed`);
    for (const [name, type] of decl.fields) {
      assert.match(
        type,
        /^(u32|i32|f32)$/,
        `${e.name}: ${decl.struct}.${name} is ${type}, not a 4-byte scalar`,
      );
    }
    withParams++;
  }
  assert.ok(withParams >= 15, `only ${withParams} shaders with params found`);
});
