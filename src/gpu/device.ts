/**
 * Adapter and device acquisition: the optional features od-moe can use, the
 * adapter's best limits, and loud reporting of device loss and uncaptured
 * errors.
 *
 * @module
 */

import { GpuStats } from "./stats.ts";

/** The optional WebGPU features od-moe kernels know how to use. */
export type GpuFeature = "shader-f16" | "subgroups" | "timestamp-query";

/** Every {@linkcode GpuFeature}, in the order they are requested. */
export const OPTIONAL_FEATURES: readonly GpuFeature[] = Object.freeze([
  "shader-f16",
  "subgroups",
  "timestamp-query",
]);

/**
 * The limits requested at the adapter's maximum (or, for alignments, its
 * minimum). The rest keep WebGPU's defaults.
 */
export const REQUESTED_LIMITS: readonly GpuLimitName[] = Object.freeze([
  "maxStorageBufferBindingSize",
  "maxBufferSize",
  "maxComputeWorkgroupStorageSize",
  "maxComputeInvocationsPerWorkgroup",
  "maxComputeWorkgroupSizeX",
  "maxComputeWorkgroupSizeY",
  "maxComputeWorkgroupSizeZ",
  "maxComputeWorkgroupsPerDimension",
  "maxStorageBuffersPerShaderStage",
  "maxUniformBuffersPerShaderStage",
  "maxUniformBufferBindingSize",
  "maxBindGroups",
  "maxBindingsPerBindGroup",
  "maxDynamicStorageBuffersPerPipelineLayout",
  "maxDynamicUniformBuffersPerPipelineLayout",
  "minStorageBufferOffsetAlignment",
  "minUniformBufferOffsetAlignment",
]);

/** Name of a limit in {@linkcode REQUESTED_LIMITS}. */
export type GpuLimitName =
  | "maxStorageBufferBindingSize"
  | "maxBufferSize"
  | "maxComputeWorkgroupStorageSize"
  | "maxComputeInvocationsPerWorkgroup"
  | "maxComputeWorkgroupSizeX"
  | "maxComputeWorkgroupSizeY"
  | "maxComputeWorkgroupSizeZ"
  | "maxComputeWorkgroupsPerDimension"
  | "maxStorageBuffersPerShaderStage"
  | "maxUniformBuffersPerShaderStage"
  | "maxUniformBufferBindingSize"
  | "maxBindGroups"
  | "maxBindingsPerBindGroup"
  | "maxDynamicStorageBuffersPerPipelineLayout"
  | "maxDynamicUniformBuffersPerPipelineLayout"
  | "minStorageBufferOffsetAlignment"
  | "minUniformBufferOffsetAlignment";

/** The device limits that od-moe plans with (after any `limitCaps`). */
export type GpuLimits = Readonly<Record<GpuLimitName, number>>;

/** Options of {@linkcode acquireGpu}. Features default to "use when the adapter has it". */
export interface AcquireGpuOptions {
  /** Adapter preference; default `"high-performance"`. */
  powerPreference?: GPUPowerPreference;
  /** Enable `shader-f16` when present (default true); false tests the portable path. */
  shaderF16?: boolean;
  /** Enable `subgroups` when present (default true). */
  subgroups?: boolean;
  /** Enable `timestamp-query` when present (default true). */
  timestampQuery?: boolean;
  /**
   * Lower the limits reported in `gpu.limits` (the device itself keeps the
   * adapter's). Helpers plan with `gpu.limits`, so this exercises code paths
   * of smaller GPUs, e.g. the workgroup split across y.
   */
  limitCaps?: Partial<Record<GpuLimitName, number>>;
  /** Device label, shown in WebGPU error messages. Default `"od-moe"`. */
  label?: string;
  /** Where device loss and uncaptured errors go; default `console.error`. */
  log?: (message: string) => void;
  /** The WebGPU entry point; default `navigator.gpu`. Tests pass a fake. */
  navigatorGpu?: GPU;
}

/** Why {@linkcode GpuUnavailableError} was thrown. */
export type GpuUnavailableReason = "no-webgpu" | "no-adapter" | "no-device";

/** What to install so that a WebGPU adapter appears, for this OS. */
export function installHint(os: string = Deno.build.os): string {
  const platform = os === "darwin"
    ? "On macOS, Metal is built in: a Mac with macOS 10.15 or later needs nothing more."
    : os === "windows"
    ? "On Windows, D3D12 is built in: update the GPU driver, or install a Vulkan driver."
    : "On Linux, install a Vulkan driver; with no GPU, `apt-get install mesa-vulkan-drivers` " +
      "gives the llvmpipe software adapter (slow, but enough for tests).";
  return `${platform} Deno 2.x needs no flag for WebGPU; Deno 1.x needs \`--unstable-webgpu\`.`;
}

/** No usable WebGPU adapter or device. The message says what to install. */
export class GpuUnavailableError extends Error {
  /** Which step failed. */
  readonly reason: GpuUnavailableReason;

  /** Builds the error; `detail` says what happened, the install hint is appended. */
  constructor(reason: GpuUnavailableReason, detail: string, options?: ErrorOptions) {
    super(`${detail} ${installHint()}`, options);
    this.name = "GpuUnavailableError";
    this.reason = reason;
  }
}

/** GPU errors caught by an error scope (see {@linkcode expectNoGpuErrors}). */
export class GpuValidationError extends Error {
  /** The WebGPU errors, in the order their scopes were popped. */
  readonly errors: readonly GPUError[];

  /** Builds the error from the scope's errors and a context string. */
  constructor(context: string, errors: readonly GPUError[]) {
    super(
      `${context}: ${errors.length} GPU error(s): ` +
        errors.map((e) => `[${e.constructor.name}] ${e.message.trim()}`).join("\n"),
    );
    this.name = "GpuValidationError";
    this.errors = errors;
  }
}

const MAX_KEPT_ERRORS = 100;

/**
 * An acquired WebGPU device with the features and limits od-moe plans with,
 * and the counters of syncs and submits.
 */
export class Gpu {
  /** The device. */
  readonly device: GPUDevice;
  /** The adapter the device came from. */
  readonly adapter: GPUAdapter;
  /** Vendor, architecture, description of the adapter. */
  readonly adapterInfo: GPUAdapterInfo;
  /** The optional features enabled on the device. */
  readonly features: ReadonlySet<GpuFeature>;
  /** The limits to plan with. */
  readonly limits: GpuLimits;
  /** Counters of syncs, submits, dispatches and bytes moved. */
  readonly stats: GpuStats = new GpuStats();
  /** Resolves when the device is lost (or destroyed). */
  readonly lost: Promise<GPUDeviceLostInfo>;
  /** The last uncaptured GPU error messages (at most 100), oldest first. */
  readonly uncapturedErrors: string[] = [];
  #isLost = false;
  #destroyed = false;

  /** Wraps an already created device; most code calls {@linkcode acquireGpu} instead. */
  constructor(
    adapter: GPUAdapter,
    device: GPUDevice,
    features: ReadonlySet<GpuFeature>,
    limits: GpuLimits,
    log: (message: string) => void = console.error,
  ) {
    this.adapter = adapter;
    this.device = device;
    this.adapterInfo = device.adapterInfo ?? adapter.info;
    this.features = features;
    this.limits = limits;
    this.lost = device.lost.then((info) => {
      this.#isLost = true;
      if (!this.#destroyed) {
        log(
          `od-moe: GPU device lost on ${this.describe()} (reason: ${info.reason}): ` +
            `${info.message.trim()}. Every GPU buffer and pipeline of this device is gone; ` +
            `acquire a new device.`,
        );
      }
      return info;
    });
    device.addEventListener("uncapturederror", (event) => {
      const error = (event as GPUUncapturedErrorEvent).error;
      const message = `[${error.constructor.name}] ${error.message.trim()}`;
      this.uncapturedErrors.push(message);
      if (this.uncapturedErrors.length > MAX_KEPT_ERRORS) this.uncapturedErrors.shift();
      log(`od-moe: uncaptured GPU error on ${this.describe()}: ${message}`);
    });
  }

  /** Whether the device was lost or destroyed. */
  get isLost(): boolean {
    return this.#isLost;
  }

  /** Whether an optional feature is enabled. */
  has(feature: GpuFeature): boolean {
    return this.features.has(feature);
  }

  /** One line naming the adapter and the enabled features, for logs. */
  describe(): string {
    const info = this.adapterInfo;
    const name = info.description || [info.vendor, info.architecture, info.device]
      .filter((s) => s).join(" ") ||
      "unknown adapter";
    const feats = [...this.features].join(", ") || "no optional features";
    return `${name}${info.isFallbackAdapter ? " (software)" : ""} [${feats}]`;
  }

  /**
   * Finishes the encoders and submits them in one `queue.submit`, counted in
   * `stats.submits`. The whole token should be one call.
   */
  submit(...work: (GPUCommandEncoder | GPUCommandBuffer)[]): void {
    const buffers = work.map((w) => "finish" in w ? w.finish() : w);
    this.device.queue.submit(buffers);
    this.stats.submits++;
  }

  /**
   * An empty submit: pushes pending `writeBuffer` uploads to the GPU now
   * rather than at the next real submit. Counted in `stats.flushes`.
   */
  flush(): void {
    this.device.queue.submit([]);
    this.stats.flushes++;
  }

  /** Destroys the device; `lost` resolves with reason `"destroyed"`, quietly. */
  destroy(): void {
    this.#destroyed = true;
    this.device.destroy();
  }
}

/**
 * Requests a high-performance adapter and a device with the adapter's best
 * limits and the optional features present (unless disabled in `opts`).
 *
 * @throws {GpuUnavailableError} when WebGPU, an adapter or a device is missing.
 *
 * @example
 * ```ts ignore
 * const gpu = await acquireGpu();
 * console.log(gpu.describe(), gpu.limits.maxStorageBufferBindingSize);
 * ```
 */
export async function acquireGpu(opts: AcquireGpuOptions = {}): Promise<Gpu> {
  const entry = opts.navigatorGpu ?? (globalThis.navigator as Navigator | undefined)?.gpu;
  if (!entry) {
    throw new GpuUnavailableError(
      "no-webgpu",
      "WebGPU is not available in this runtime (navigator.gpu is undefined).",
    );
  }
  let adapter: GPUAdapter | null;
  try {
    adapter = await entry.requestAdapter({
      powerPreference: opts.powerPreference ?? "high-performance",
    });
  } catch (cause) {
    throw new GpuUnavailableError(
      "no-adapter",
      `requestAdapter failed: ${(cause as Error).message}.`,
      { cause },
    );
  }
  if (!adapter) {
    throw new GpuUnavailableError(
      "no-adapter",
      "No WebGPU adapter found (navigator.gpu.requestAdapter() returned null).",
    );
  }

  const wanted: Record<GpuFeature, boolean> = {
    "shader-f16": opts.shaderF16 ?? true,
    "subgroups": opts.subgroups ?? true,
    "timestamp-query": opts.timestampQuery ?? true,
  };
  const features = OPTIONAL_FEATURES.filter((f) =>
    wanted[f] && adapter.features.has(f as GPUFeatureName)
  );

  const requiredLimits: Record<string, number> = {};
  for (const name of REQUESTED_LIMITS) {
    const value = (adapter.limits as unknown as Record<string, number | undefined>)[name];
    if (typeof value === "number") requiredLimits[name] = value;
  }

  let device: GPUDevice;
  try {
    device = await adapter.requestDevice({
      label: opts.label ?? "od-moe",
      requiredFeatures: features as GPUFeatureName[],
      requiredLimits,
    });
  } catch (cause) {
    throw new GpuUnavailableError(
      "no-device",
      `requestDevice failed on "${adapter.info?.description ?? "adapter"}" ` +
        `with features [${features.join(", ")}]: ${(cause as Error).message}.`,
      { cause },
    );
  }

  const limits = {} as Record<GpuLimitName, number>;
  const deviceLimits = device.limits as unknown as Record<string, number>;
  for (const name of REQUESTED_LIMITS) {
    const have = deviceLimits[name] ?? 0;
    const cap = opts.limitCaps?.[name];
    limits[name] = cap === undefined
      ? have
      : name.startsWith("min")
      ? Math.max(have, cap)
      : Math.min(have, cap);
  }
  return new Gpu(
    adapter,
    device,
    new Set(features.filter((f) => device.features.has(f as GPUFeatureName))),
    Object.freeze(limits),
    opts.log,
  );
}

const ALL_FILTERS: readonly GPUErrorFilter[] = ["validation", "out-of-memory", "internal"];

/**
 * Runs `fn` inside error scopes (validation, out-of-memory, internal by
 * default) and returns its value with the errors caught. The scopes are
 * popped even when `fn` throws. Scopes belong to the device, not to `fn`:
 * GPU calls made by other code while `fn` awaits are caught too.
 */
export async function captureGpuErrors<T>(
  device: GPUDevice,
  fn: () => T | Promise<T>,
  filters: readonly GPUErrorFilter[] = ALL_FILTERS,
): Promise<{ value: T; errors: GPUError[] }> {
  for (const filter of filters) device.pushErrorScope(filter);
  let outcome: { ok: true; value: T } | { ok: false; error: unknown };
  try {
    outcome = { ok: true, value: await fn() };
  } catch (error) {
    outcome = { ok: false, error };
  }
  const errors: GPUError[] = [];
  for (let i = filters.length - 1; i >= 0; i--) {
    const error = await device.popErrorScope();
    if (error) errors.push(error);
  }
  if (!outcome.ok) throw outcome.error;
  return { value: outcome.value, errors };
}

/**
 * Runs `fn` and throws {@linkcode GpuValidationError} naming `context` if any
 * GPU error was raised meanwhile. Meant for tests and one-off setup.
 */
export async function expectNoGpuErrors<T>(
  device: GPUDevice,
  context: string,
  fn: () => T | Promise<T>,
): Promise<T> {
  const { value, errors } = await captureGpuErrors(device, fn);
  if (errors.length > 0) throw new GpuValidationError(context, errors);
  return value;
}
