/**
 * WebGPU plumbing for od-moe: device acquisition with the optional features
 * and best limits, buffers and readbacks counted as syncs, WGSL loading, the
 * pipeline cache and the dispatch helper, and GPU timestamps.
 *
 * ```ts ignore
 * import { acquireGpu, createBuffer, dispatch, getPipeline, ParamsBuffer, readback } from "./mod.ts";
 *
 * const gpu = await acquireGpu();
 * const n = 1024;
 * const x = createBuffer(gpu, { label: "x", data: new Float32Array(n).fill(1) });
 * const y = createBuffer(gpu, { label: "y", size: 4 * n });
 * const params = new ParamsBuffer(gpu, "params", { n: "u32", a: "f32", b: "f32" });
 * params.write({ n, a: 2, b: 1 });
 * const k = await getPipeline(gpu, "smoke", {
 *   variant: "f32", defines: { ENABLE: "", T: "f32" }, constants: { WG_SIZE: 64 },
 * });
 * const encoder = gpu.device.createCommandEncoder();
 * dispatch(encoder, k, [x, y, params.buffer], Math.ceil(n / 64));
 * gpu.submit(encoder);
 * const [out] = await readback(gpu, [y]); // one sync
 * ```
 *
 * @module
 */

export * from "./stats.ts";
export * from "./device.ts";
export * from "./shaders.ts";
export * from "./pipeline.ts";
export * from "./dispatch.ts";
export * from "./buffers.ts";
export * from "./timer.ts";
