/**
 * The compute pipeline cache: one entry per shader + variant + entry point +
 * override constants, under a readable key such as `matvec_q4_k_f16acc` or
 * `smoke_f16{WG_SIZE=128}`.
 *
 * Bind group layouts are explicit, built from the shader's own binding
 * declarations (see {@linkcode parseBindings}), not `layout: "auto"`:
 * - kernels with the same binding signature share one layout, so a bind
 *   group made for one can be used by the others and the bind group cache
 *   hits more often;
 * - every entry point of a file binds the same buffer list, even one that
 *   leaves a binding unused (auto layouts drop it and then reject the bind
 *   group);
 * - a wrong buffer count is caught in JS with the kernel's name, before
 *   WebGPU reports an anonymous validation error.
 *
 * @module
 */

import type { Gpu, GpuFeature } from "./device.ts";
import { BindGroupCache } from "./dispatch.ts";
import {
  type BindingKind,
  expandIncludes,
  loadShaderText,
  type ParamsDecl,
  parseBindings,
  parseParamsDecl,
  requiredFeatures,
  SHADER_DIR,
  ShaderSourceError,
  substituteDefines,
} from "./shaders.ts";

/** How to build one kernel from `shaders/NAME.wgsl`. */
export interface PipelineOptions {
  /**
   * Readable name of the text variant (`"f16"`, `"q4_k_f16acc"`); part of
   * the key. Each variant name must always come with the same `defines`.
   */
  variant?: string;
  /** `{{NAME}}` substitutions for this variant (dtype names, `enable` lines). */
  defines?: Readonly<Record<string, string | number>>;
  /** WGSL `override` constants (workgroup size, tiles); part of the key. */
  constants?: Readonly<Record<string, number>>;
  /** Entry point; default `"main"`. */
  entryPoint?: string;
  /** Folder of the `.wgsl` files; default the package's `shaders/`. */
  baseUrl?: URL;
}

/** A bind group layout shared by every kernel with the same binding kinds. */
export interface BindingLayout {
  /** Binding kinds joined, e.g. `"read-only-storage,storage,uniform"`. */
  readonly signature: string;
  /** Binding kind per binding number. */
  readonly kinds: readonly BindingKind[];
  /** The WebGPU bind group layout. */
  readonly bindGroupLayout: GPUBindGroupLayout;
  /** The pipeline layout (this bind group layout as group 0). */
  readonly pipelineLayout: GPUPipelineLayout;
  /** Bind groups made for this layout, keyed by the buffers bound. */
  readonly bindGroups: BindGroupCache;
}

/** A ready compute pipeline with what dispatching it needs. */
export interface Kernel {
  /** Readable cache key: name, variant, entry point, constants. */
  readonly key: string;
  /** Shader file name (`shaders/NAME.wgsl`). */
  readonly name: string;
  /** Text variant name (`""` when none). */
  readonly variant: string;
  /** Entry point. */
  readonly entryPoint: string;
  /** Override constants the pipeline was built with. */
  readonly constants: Readonly<Record<string, number>>;
  /** The pipeline. */
  readonly pipeline: GPUComputePipeline;
  /** Its bind group layout, shared with kernels of the same signature. */
  readonly layout: BindingLayout;
  /** The device context (stats, limits). */
  readonly gpu: Gpu;
  /** The `params` binding and its struct as the WGSL declares them, if the kernel has one. */
  readonly params?: ParamsDecl;
}

/** The shader does not compile, or its pipeline cannot be created. */
export class ShaderCompileError extends Error {
  /** Builds the error; the message names the kernel key. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "ShaderCompileError";
  }
}

/** A kernel needs an optional feature that the device does not have. */
export class GpuFeatureError extends Error {
  /** The missing feature. */
  readonly feature: GpuFeature;
  /** Builds the error. */
  constructor(key: string, feature: GpuFeature, gpu: Gpu) {
    super(
      `Kernel ${key} needs the WebGPU feature "${feature}", which is not enabled on ` +
        `${gpu.describe()}; use a portable variant of the kernel.`,
    );
    this.name = "GpuFeatureError";
    this.feature = feature;
  }
}

/**
 * The key of a compiled module: `name[_variant]`, then `@folder` when the
 * `.wgsl` files come from another folder than the package's `shaders/` (a
 * benchmark comparing kernel versions must not get the first one's build).
 */
function moduleKeyOf(name: string, opts: PipelineOptions): string {
  const key = opts.variant ? `${name}_${opts.variant}` : name;
  const base = opts.baseUrl?.href;
  return base === undefined || base === SHADER_DIR.href ? key : `${key}@${base}`;
}

/**
 * The readable cache key of a kernel: `name[_variant][.entry][{K=V,...}]`,
 * constants sorted by name.
 */
export function pipelineKey(name: string, opts: PipelineOptions = {}): string {
  let key = moduleKeyOf(name, opts);
  const entry = opts.entryPoint ?? "main";
  if (entry !== "main") key += `.${entry}`;
  const constants = Object.entries(opts.constants ?? {});
  if (constants.length > 0) {
    constants.sort(([a], [b]) => a < b ? -1 : a > b ? 1 : 0);
    key += `{${constants.map(([k, v]) => `${k}=${v}`).join(",")}}`;
  }
  return key;
}

interface ModuleEntry {
  readonly module: GPUShaderModule;
  readonly layout: BindingLayout;
  readonly params: ParamsDecl | undefined;
}

const BUFFER_TYPES: Record<BindingKind, GPUBufferBindingType> = {
  "read-only-storage": "read-only-storage",
  "storage": "storage",
  "uniform": "uniform",
};

/** Compiled modules, layouts and pipelines of one {@linkcode Gpu}. */
export class PipelineCache {
  /** The device context. */
  readonly gpu: Gpu;
  readonly #kernels = new Map<string, Promise<Kernel>>();
  readonly #ready = new Map<string, Kernel>();
  readonly #modules = new Map<string, Promise<ModuleEntry>>();
  readonly #fingerprints = new Map<string, string>();
  readonly #layouts = new Map<string, BindingLayout>();

  /** An empty cache for `gpu`; most code uses {@linkcode pipelineCache} instead. */
  constructor(gpu: Gpu) {
    this.gpu = gpu;
  }

  /** Number of kernels built or being built. */
  get size(): number {
    return this.#kernels.size;
  }

  /** Keys of the kernels built or being built. */
  keys(): string[] {
    return [...this.#kernels.keys()];
  }

  /** The finished kernel for `key`, without waiting; undefined if not built yet. */
  peek(key: string): Kernel | undefined {
    return this.#ready.get(key);
  }

  /**
   * The kernel for `shaders/NAME.wgsl` with these options, compiled once:
   * a second call with the same key returns the same {@linkcode Kernel}.
   *
   * @throws {ShaderSourceError} missing file, bad substitution or bindings.
   * @throws {GpuFeatureError} the text enables a feature the device lacks.
   * @throws {ShaderCompileError} WGSL errors or pipeline creation failure.
   */
  get(name: string, opts: PipelineOptions = {}): Promise<Kernel> {
    const key = pipelineKey(name, opts);
    const fingerprint = JSON.stringify(
      Object.entries(opts.defines ?? {}).sort(([a], [b]) => a < b ? -1 : a > b ? 1 : 0),
    );
    const moduleKey = moduleKeyOf(name, opts);
    const known = this.#fingerprints.get(moduleKey);
    if (known !== undefined && known !== fingerprint) {
      return Promise.reject(
        new ShaderSourceError(
          `Variant ${moduleKey} was built with defines ${known} and is now asked for with ` +
            `${fingerprint}; give each distinct set of defines its own variant name.`,
        ),
      );
    }
    this.#fingerprints.set(moduleKey, fingerprint);
    let kernel = this.#kernels.get(key);
    if (!kernel) {
      kernel = this.#build(key, moduleKey, name, opts);
      kernel.then((k) => this.#ready.set(key, k), () => this.#kernels.delete(key));
      this.#kernels.set(key, kernel);
    }
    return kernel;
  }

  async #build(
    key: string,
    moduleKey: string,
    name: string,
    opts: PipelineOptions,
  ): Promise<Kernel> {
    let mod = this.#modules.get(moduleKey);
    if (!mod) {
      mod = this.#compile(moduleKey, name, opts);
      mod.catch(() => this.#modules.delete(moduleKey));
      this.#modules.set(moduleKey, mod);
    }
    const { module, layout, params } = await mod;
    const entryPoint = opts.entryPoint ?? "main";
    const constants = { ...opts.constants };
    let pipeline: GPUComputePipeline;
    try {
      pipeline = await this.gpu.device.createComputePipelineAsync({
        label: key,
        layout: layout.pipelineLayout,
        compute: { module, entryPoint, constants },
      });
    } catch (cause) {
      throw new ShaderCompileError(
        `Cannot create pipeline ${key} (entry point "${entryPoint}", constants ` +
          `${JSON.stringify(constants)}): ${(cause as Error).message}`,
        { cause },
      );
    }
    return Object.freeze({
      key,
      name,
      variant: opts.variant ?? "",
      entryPoint,
      constants: Object.freeze(constants),
      pipeline,
      layout,
      gpu: this.gpu,
      params,
    });
  }

  async #compile(
    moduleKey: string,
    name: string,
    opts: PipelineOptions,
  ): Promise<ModuleEntry> {
    const baseUrl = opts.baseUrl ?? SHADER_DIR;
    const raw = await loadShaderText(name, baseUrl);
    const code = await expandIncludes(
      substituteDefines(raw, opts.defines ?? {}, moduleKey),
      baseUrl,
      moduleKey,
    );
    for (const feature of requiredFeatures(code)) {
      if (!this.gpu.has(feature)) throw new GpuFeatureError(moduleKey, feature, this.gpu);
    }
    const kinds = parseBindings(code, moduleKey);
    const params = parseParamsDecl(code, moduleKey);
    const device = this.gpu.device;
    // The scope keeps a compile error out of the uncaptured-error log: it is thrown instead.
    device.pushErrorScope("validation");
    const module = device.createShaderModule({ label: moduleKey, code });
    const scopeError = device.popErrorScope();
    const info = await module.getCompilationInfo();
    const errors = info.messages.filter((m) => m.type === "error");
    const validation = await scopeError;
    if (errors.length > 0 || validation) {
      const details = errors.length > 0
        ? errors.map((m) => `line ${m.lineNum}:${m.linePos}: ${m.message.trim()}`).join("\n")
        : validation!.message.trim();
      throw new ShaderCompileError(`Shader ${moduleKey} does not compile:\n${details}`);
    }
    return { module, layout: this.#layoutFor(kinds), params };
  }

  #layoutFor(kinds: readonly BindingKind[]): BindingLayout {
    const signature = kinds.join(",");
    let layout = this.#layouts.get(signature);
    if (!layout) {
      const device = this.gpu.device;
      const bindGroupLayout = device.createBindGroupLayout({
        label: `bindings(${signature})`,
        entries: kinds.map((kind, binding) => ({
          binding,
          visibility: GPUShaderStage.COMPUTE,
          buffer: { type: BUFFER_TYPES[kind] },
        })),
      });
      layout = Object.freeze({
        signature,
        kinds: Object.freeze([...kinds]),
        bindGroupLayout,
        pipelineLayout: device.createPipelineLayout({
          label: `pipeline(${signature})`,
          bindGroupLayouts: [bindGroupLayout],
        }),
        bindGroups: new BindGroupCache(this.gpu, bindGroupLayout, kinds),
      });
      this.#layouts.set(signature, layout);
    }
    return layout;
  }
}

const caches = new WeakMap<Gpu, PipelineCache>();

/** The pipeline cache of `gpu` (one per device, created on first use). */
export function pipelineCache(gpu: Gpu): PipelineCache {
  let cache = caches.get(gpu);
  if (!cache) {
    cache = new PipelineCache(gpu);
    caches.set(gpu, cache);
  }
  return cache;
}

/**
 * The kernel for `shaders/NAME.wgsl` from `gpu`'s pipeline cache.
 *
 * @example
 * ```ts ignore
 * const k = await getPipeline(gpu, "smoke", {
 *   variant: "f32", defines: { T: "f32", ENABLE: "" }, constants: { WG_SIZE: 64 },
 * });
 * k.key; // "smoke_f32{WG_SIZE=64}"
 * ```
 */
export function getPipeline(gpu: Gpu, name: string, opts: PipelineOptions = {}): Promise<Kernel> {
  return pipelineCache(gpu).get(name, opts);
}
