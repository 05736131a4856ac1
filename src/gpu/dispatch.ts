/**
 * The one dispatch helper: records a kernel into a command encoder (or an
 * open compute pass) so that a whole token's kernels go into one submit,
 * with bind groups cached by the buffers they bind.
 *
 * @module
 */

import type { Gpu } from "./device.ts";
import type { Kernel } from "./pipeline.ts";
import type { BindingKind } from "./shaders.ts";
import { paramsFieldsOf } from "./buffers.ts";

/** A whole buffer, or a byte range of one. */
export type BufferBinding = GPUBuffer | {
  /** The buffer. */
  readonly buffer: GPUBuffer;
  /** Byte offset; default 0. Must meet the device's offset alignment. */
  readonly offset?: number;
  /** Byte size; default the rest of the buffer. */
  readonly size?: number;
};

/** Workgroup counts: a total (split across y when needed) or explicit `[x, y?, z?]`. */
export type Workgroups = number | readonly [number, number?, number?];

/** Options of {@linkcode dispatch}. */
export interface DispatchOptions {
  /** Timestamp writes for the pass (only when `dispatch` opens the pass itself). */
  timestampWrites?: GPUComputePassTimestampWrites;
  /** Pass label; default the kernel key. */
  label?: string;
  /**
   * Take the workgroups from this buffer (`dispatchWorkgroupsIndirect`)
   * when `workgroups` is not 0.
   */
  indirect?: { readonly buffer: GPUBuffer; readonly offset: number };
}

/**
 * Splits `count` workgroups into `[x, y, 1]` with `x, y <= maxPerDimension`
 * and `x * y >= count`, x as large as possible. Kernels dispatched this way
 * compute their linear workgroup index as `wid.x + wid.y * nwg.x` (with
 * `@builtin(num_workgroups) nwg`) and return when it is `>= count`.
 */
export function splitWorkgroups(count: number, maxPerDimension: number): [number, number, number] {
  if (!Number.isInteger(count) || count < 0) {
    throw new RangeError(`Workgroup count must be a non-negative integer, got ${count}.`);
  }
  if (count <= maxPerDimension) return [count, 1, 1];
  const y = Math.ceil(count / maxPerDimension);
  if (y > maxPerDimension) {
    throw new RangeError(
      `${count} workgroups exceed ${maxPerDimension}² (maxComputeWorkgroupsPerDimension²); ` +
        `give each workgroup more work.`,
    );
  }
  return [Math.ceil(count / y), y, 1];
}

/** Workgroups needed for `elements` items at `perWorkgroup` items each. */
export function workgroupCount(elements: number, perWorkgroup: number): number {
  return Math.ceil(elements / perWorkgroup);
}

let nextBufferId = 1;
const bufferIds = new WeakMap<GPUBuffer, number>();

function bufferId(buffer: GPUBuffer): number {
  let id = bufferIds.get(buffer);
  if (id === undefined) {
    id = nextBufferId++;
    bufferIds.set(buffer, id);
  }
  return id;
}

/** Default number of bind groups kept per layout before the least recently used go. */
export const BIND_GROUP_CACHE_SIZE = 4096;

/**
 * Bind groups of one layout keyed by the buffers (and ranges) they bind,
 * least recently used evicted past `capacity`. Per-token dispatches bind the
 * same run-state buffers every token, so after the first token every lookup
 * hits and no bind group is created.
 */
export class BindGroupCache {
  readonly #gpu: Gpu;
  readonly #layout: GPUBindGroupLayout;
  readonly #kinds: readonly BindingKind[];
  readonly #groups = new Map<string, GPUBindGroup>();
  /** Most bind groups kept. */
  capacity: number;

  /** A cache for bind groups of `layout` (kinds per binding number). */
  constructor(
    gpu: Gpu,
    layout: GPUBindGroupLayout,
    kinds: readonly BindingKind[],
    capacity = BIND_GROUP_CACHE_SIZE,
  ) {
    this.#gpu = gpu;
    this.#layout = layout;
    this.#kinds = kinds;
    this.capacity = capacity;
  }

  /** Number of cached bind groups. */
  get size(): number {
    return this.#groups.size;
  }

  /** Drops every cached bind group (e.g. after destroying the buffers they bind). */
  clear(): void {
    this.#groups.clear();
  }

  /**
   * The bind group binding `buffers[i]` at binding i, created on first use.
   * `context` names the caller in errors.
   */
  get(buffers: readonly BufferBinding[], context: string): GPUBindGroup {
    let key = "";
    for (const b of buffers) {
      key += "buffer" in b
        ? `${bufferId(b.buffer)}@${b.offset ?? 0}+${b.size ?? "*"};`
        : `${bufferId(b)};`;
    }
    const hit = this.#groups.get(key);
    if (hit) {
      this.#groups.delete(key);
      this.#groups.set(key, hit);
      return hit;
    }
    const group = this.#create(buffers, context);
    this.#groups.set(key, group);
    if (this.#groups.size > this.capacity) {
      this.#groups.delete(this.#groups.keys().next().value!);
    }
    return group;
  }

  #create(buffers: readonly BufferBinding[], context: string): GPUBindGroup {
    const kinds = this.#kinds;
    if (buffers.length !== kinds.length) {
      throw new TypeError(
        `${context}: got ${buffers.length} buffer(s), the kernel binds ${kinds.length}: ` +
          `[${kinds.join(", ")}] (inputs, then outputs, then params).`,
      );
    }
    const limits = this.#gpu.limits;
    const entries: GPUBindGroupEntry[] = buffers.map((b, binding) => {
      const kind = kinds[binding]!;
      const resource: GPUBufferBinding = "buffer" in b
        ? { buffer: b.buffer, offset: b.offset ?? 0, size: b.size }
        : { buffer: b };
      const offset = resource.offset ?? 0;
      const align = kind === "uniform"
        ? limits.minUniformBufferOffsetAlignment
        : limits.minStorageBufferOffsetAlignment;
      if (offset % align !== 0) {
        throw new RangeError(
          `${context}: binding ${binding} (${kind}) offset ${offset} is not a multiple of ${align}.`,
        );
      }
      const size = resource.size ?? resource.buffer.size - offset;
      const max = kind === "uniform"
        ? limits.maxUniformBufferBindingSize
        : limits.maxStorageBufferBindingSize;
      if (size > max) {
        throw new RangeError(
          `${context}: binding ${binding} (${kind}) is ${size} bytes, over the device's ` +
            `${max}-byte binding limit; split the tensor or bind a range.`,
        );
      }
      return { binding, resource };
    });
    this.#gpu.stats.bindGroupsCreated++;
    return this.#gpu.device.createBindGroup({ label: context, layout: this.#layout, entries });
  }
}

const checkedBindings = new WeakSet<readonly BufferBinding[]>();

/**
 * Throws when the params buffer bound to a kernel was laid out differently
 * from the kernel's WGSL `params` struct (a field added, removed, reordered or
 * retyped on one side only): the kernel would read every later field wrong.
 * A params binding that is not a {@linkcode ParamsBuffer} (no layout to
 * check) is refused too. Checked once per binding list.
 */
export function checkParamsLayout(kernel: Kernel, buffers: readonly BufferBinding[]): void {
  if (checkedBindings.has(buffers)) return;
  const decl = kernel.params;
  const bound = decl ? buffers[decl.binding] : undefined;
  if (decl && bound) {
    const fields = paramsFieldsOf("buffer" in bound ? bound.buffer : bound);
    if (!fields) {
      throw new Error(
        `${kernel.key}: binding ${decl.binding} (params: ${decl.struct}) is not a ParamsBuffer, ` +
          `so its layout cannot be checked against the WGSL struct; allocate it with ParamsBuffer`,
      );
    }
    const n = Math.max(fields.length, decl.fields.length);
    for (let i = 0; i < n; i++) {
      const [wName, wType] = decl.fields[i] ?? ["(none)", ""];
      const [tName, tType] = fields[i] ?? ["(none)", ""];
      if (wName !== tName || wType !== tType) {
        throw new Error(
          `${kernel.key}: params field ${i} is ${wName}: ${wType || "-"} in the WGSL struct ` +
            `${decl.struct} but ${tName}: ${tType || "-"} in the launcher's ParamsBuffer layout; ` +
            `make the two agree`,
        );
      }
    }
  }
  checkedBindings.add(buffers);
}

/**
 * Records `kernel` over `workgroups` into `target`: a command encoder (a
 * compute pass is opened and closed around it) or an open compute pass
 * (many dispatches in one pass; WebGPU orders them by their buffer use).
 * Nothing is submitted: queue a token's kernels in one encoder and submit
 * once with `gpu.submit(encoder)`.
 *
 * `buffers[i]` goes to `@binding(i)`. A number of workgroups larger than
 * `maxComputeWorkgroupsPerDimension` is split across y (see
 * {@linkcode splitWorkgroups}); an explicit `[x, y, z]` must fit as given.
 */
export function dispatch(
  target: GPUCommandEncoder | GPUComputePassEncoder,
  kernel: Kernel,
  buffers: readonly BufferBinding[],
  workgroups: Workgroups,
  opts: DispatchOptions = {},
): void {
  checkParamsLayout(kernel, buffers);
  const gpu = kernel.gpu;
  const max = gpu.limits.maxComputeWorkgroupsPerDimension;
  let x: number, y: number, z: number;
  if (typeof workgroups === "number") {
    [x, y, z] = splitWorkgroups(workgroups, max);
  } else {
    x = workgroups[0];
    y = workgroups[1] ?? 1;
    z = workgroups[2] ?? 1;
    if (x > max || y > max || z > max) {
      throw new RangeError(
        `${kernel.key}: workgroups [${x}, ${y}, ${z}] exceed maxComputeWorkgroupsPerDimension ` +
          `${max}; pass the total as a number to split it across y.`,
      );
    }
  }
  const group = kernel.layout.bindGroups.get(buffers, kernel.key);
  const ownPass = "beginComputePass" in target;
  if (!ownPass && opts.timestampWrites) {
    throw new TypeError(
      `${kernel.key}: timestampWrites need a pass of their own; pass the command encoder.`,
    );
  }
  const pass = ownPass
    ? target.beginComputePass({
      label: opts.label ?? kernel.key,
      timestampWrites: opts.timestampWrites,
    })
    : target;
  pass.setPipeline(kernel.pipeline);
  pass.setBindGroup(0, group);
  if (x > 0 && y > 0 && z > 0) {
    if (opts.indirect) pass.dispatchWorkgroupsIndirect(opts.indirect.buffer, opts.indirect.offset);
    else pass.dispatchWorkgroups(x, y, z);
  }
  if (ownPass) pass.end();
  gpu.stats.dispatches++;
}
