/**
 * The GPU for tests: one device per test file, acquired when this module is
 * first imported, or the reason there is none. Tests that need it register
 * with {@linkcode gpuTest}: without a GPU they are reported as ignored, and
 * the reason is printed once, instead of failing or passing without running.
 *
 * @example
 * ```ts ignore
 * import { gpuTest } from "../dev/gpu.ts";
 * gpuTest("smoke: y = a·x + b", async (gpu) => {
 *   // … record ops on gpu, read back, assert
 * });
 * ```
 *
 * @module
 */

import { acquireGpu, type Gpu, GpuUnavailableError } from "../src/gpu/device.ts";

/** Why there is no GPU, or `undefined` when {@linkcode gpu} is set. */
export let noGpuReason: string | undefined;

/**
 * The test process's GPU (the device is never destroyed: destroying one at
 * exit can crash llvmpipe's teardown), or `undefined` without one.
 */
export const gpu: Gpu | undefined = await acquireGpu().catch((error) => {
  if (!(error instanceof GpuUnavailableError)) throw error;
  noGpuReason = error.message;
  console.log(`GPU tests are ignored: ${noGpuReason}`);
  return undefined;
});

/** A test that runs on the GPU: its `fn` receives the device. */
export interface GpuTestDefinition extends Omit<Deno.TestDefinition, "fn"> {
  /** The test body, given the device and the test context. */
  fn(gpu: Gpu, t: Deno.TestContext): void | Promise<void>;
  /** Ignore it for another reason too (the llama.cpp reference is missing, say). */
  ignore?: boolean;
}

/**
 * Registers a test that needs the GPU; without one it is ignored (the reason
 * is printed when this module loads). Takes a name and a body, or a full
 * definition (sanitizer options, `only`, …).
 */
export function gpuTest(
  nameOrDef: string | GpuTestDefinition,
  fn?: (gpu: Gpu, t: Deno.TestContext) => void | Promise<void>,
): void {
  const def: GpuTestDefinition = typeof nameOrDef === "string"
    ? { name: nameOrDef, fn: fn! }
    : nameOrDef;
  const body = def.fn;
  Deno.test({ ...def, ignore: gpu === undefined || def.ignore, fn: (t) => body(gpu!, t) });
}

/**
 * The GPU, for helpers called from a {@linkcode gpuTest} (which only runs
 * with one); throws the reason otherwise.
 */
export function requireGpu(): Gpu {
  if (gpu) return gpu;
  throw new Error(`This test needs a GPU: ${noGpuReason}`);
}
