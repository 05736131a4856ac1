/**
 * Buffer helpers: storage buffers with WebGPU's 4-byte size rule, uploads of
 * any typed array (unaligned tails included), readback of several buffers in
 * one `mapAsync` round, and packed uniform params.
 *
 * @module
 */

import type { Gpu } from "./device.ts";
import type { BufferBinding } from "./dispatch.ts";

/** Usage of a storage buffer that can also be uploaded to and read back. */
export const STORAGE_USAGE: GPUBufferUsageFlags = GPUBufferUsage.STORAGE |
  GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;

/** `n` rounded up to a multiple of `align` (a power of two or not). */
export function alignTo(n: number, align: number): number {
  return Math.ceil(n / align) * align;
}

/** `n` rounded up to a multiple of 4 (WebGPU copy and mapping granularity). */
export function align4(n: number): number {
  return alignTo(n, 4);
}

/** Options of {@linkcode createBuffer}. */
export interface CreateBufferOptions {
  /** Label shown in WebGPU errors; name the tensor or run-state buffer. */
  label: string;
  /** Size in bytes (rounded up to 4, at least 4). Default: `data`'s byte length. */
  size?: number;
  /** Usage flags; default {@linkcode STORAGE_USAGE}. */
  usage?: GPUBufferUsageFlags;
  /** Initial contents, written through `mappedAtCreation` (no queue work). */
  data?: ArrayBufferView | ArrayBuffer;
}

function bytesOf(data: ArrayBufferView | ArrayBuffer): Uint8Array {
  return data instanceof ArrayBuffer
    ? new Uint8Array(data)
    : new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

/**
 * A buffer (storage by default) of at least `size` bytes, rounded up to 4.
 * Throws a readable error above the device's `maxBufferSize`.
 */
export function createBuffer(gpu: Gpu, opts: CreateBufferOptions): GPUBuffer {
  const bytes = opts.data === undefined ? undefined : bytesOf(opts.data);
  const wanted = opts.size ?? bytes?.byteLength ?? 0;
  if (bytes && bytes.byteLength > wanted) {
    throw new RangeError(
      `Buffer "${opts.label}": data is ${bytes.byteLength} bytes, size only ${wanted}.`,
    );
  }
  const size = Math.max(4, align4(wanted));
  if (size > gpu.limits.maxBufferSize) {
    throw new RangeError(
      `Buffer "${opts.label}" needs ${size} bytes, over this device's maxBufferSize ` +
        `${gpu.limits.maxBufferSize}; split it.`,
    );
  }
  const buffer = gpu.device.createBuffer({
    label: opts.label,
    size,
    usage: opts.usage ?? STORAGE_USAGE,
    mappedAtCreation: bytes !== undefined,
  });
  if (bytes) {
    new Uint8Array(buffer.getMappedRange()).set(bytes);
    buffer.unmap();
    gpu.stats.bytesUploaded += bytes.byteLength;
  }
  return buffer;
}

/** Options of {@linkcode upload}. */
export interface UploadOptions {
  /** Follow with an empty submit so the copy starts now (see `Gpu.flush`). */
  flush?: boolean;
}

/**
 * Writes `data` into `buffer` at `dstOffset` (a multiple of 4) with
 * `queue.writeBuffer`, straight from the view's memory (an mmapped file
 * works). A length that is not a multiple of 4 is written as the aligned
 * body plus a zero-padded last word, so up to 3 bytes after the end are
 * zeroed: keep unaligned data at the end of its buffer or pad it.
 *
 * Writes are queue-ordered: they land before the command buffers of the next
 * submit, after those submitted before.
 */
export function upload(
  gpu: Gpu,
  buffer: GPUBuffer,
  data: ArrayBufferView | ArrayBuffer,
  dstOffset = 0,
  opts: UploadOptions = {},
): void {
  const bytes = bytesOf(data);
  if (dstOffset % 4 !== 0) {
    throw new RangeError(
      `upload to "${buffer.label}": offset ${dstOffset} is not a multiple of 4.`,
    );
  }
  const padded = align4(bytes.byteLength);
  if (dstOffset + padded > buffer.size) {
    throw new RangeError(
      `upload to "${buffer.label}": ${bytes.byteLength} bytes at offset ${dstOffset} ` +
        `overrun the ${buffer.size}-byte buffer.`,
    );
  }
  const body = bytes.byteLength & ~3;
  const queue = gpu.device.queue;
  if (body > 0) queue.writeBuffer(buffer, dstOffset, bytes.buffer, bytes.byteOffset, body);
  if (body < bytes.byteLength) {
    const tail = new Uint8Array(4);
    tail.set(bytes.subarray(body));
    queue.writeBuffer(buffer, dstOffset + body, tail);
  }
  gpu.stats.bytesUploaded += bytes.byteLength;
  if (opts.flush) gpu.flush();
}

interface Segment {
  readonly src: GPUBuffer;
  readonly srcOffset: number;
  readonly size: number;
  readonly stagingOffset: number;
}

/** Readback copies recorded into an encoder, to be read once it is submitted. */
export interface PendingReadback {
  /** Total bytes that will come back. */
  readonly byteLength: number;
  /**
   * Maps the staging buffer (one sync, counted in `gpu.stats.syncs`) and
   * returns a copy of each source's bytes, in order. Call once, after the
   * encoder holding the copies was submitted.
   */
  read(): Promise<ArrayBuffer[]>;
}

const STAGING_MIN = 256;
const STAGING_KEEP = 8;
const stagingPools = new WeakMap<Gpu, GPUBuffer[]>();

function takeStaging(gpu: Gpu, size: number): GPUBuffer {
  const pool = stagingPools.get(gpu) ?? [];
  stagingPools.set(gpu, pool);
  let best = -1;
  for (let i = 0; i < pool.length; i++) {
    const s = pool[i]!.size;
    if (s >= size && (best < 0 || s < pool[best]!.size)) best = i;
  }
  if (best >= 0) return pool.splice(best, 1)[0]!;
  let rounded = STAGING_MIN;
  while (rounded < size) rounded *= 2;
  return gpu.device.createBuffer({
    label: "od-moe readback staging",
    size: rounded,
    usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
  });
}

function returnStaging(gpu: Gpu, staging: GPUBuffer): void {
  const pool = stagingPools.get(gpu) ?? [];
  stagingPools.set(gpu, pool);
  pool.push(staging);
  if (pool.length > STAGING_KEEP) {
    pool.sort((a, b) => b.size - a.size);
    pool.pop()!.destroy();
  }
}

/**
 * Records copies of `sources` into one staging buffer at the end of
 * `encoder`, so a token's results come back with its own submit and one
 * `mapAsync`. Offsets must be multiples of 4; sizes are rounded up to 4
 * within the source buffer and trimmed again on read.
 */
export function recordReadback(
  gpu: Gpu,
  encoder: GPUCommandEncoder,
  sources: readonly BufferBinding[],
): PendingReadback {
  const segments: Segment[] = [];
  let total = 0;
  for (const s of sources) {
    const src = "buffer" in s ? s.buffer : s;
    const srcOffset = "buffer" in s ? s.offset ?? 0 : 0;
    const size = "buffer" in s ? s.size ?? src.size - srcOffset : src.size;
    if (srcOffset % 4 !== 0 || srcOffset + align4(size) > src.size) {
      throw new RangeError(
        `readback of "${src.label}": range ${srcOffset}+${size} is not 4-aligned or ` +
          `overruns the ${src.size}-byte buffer.`,
      );
    }
    if ((src.usage & GPUBufferUsage.COPY_SRC) === 0) {
      throw new TypeError(
        `readback of "${src.label}": the buffer was created without COPY_SRC usage.`,
      );
    }
    segments.push({ src, srcOffset, size, stagingOffset: total });
    total += align4(size);
  }
  const staging = takeStaging(gpu, Math.max(4, total));
  for (const seg of segments) {
    if (seg.size > 0) {
      encoder.copyBufferToBuffer(
        seg.src,
        seg.srcOffset,
        staging,
        seg.stagingOffset,
        align4(seg.size),
      );
    }
  }
  let done = false;
  return {
    byteLength: segments.reduce((n, s) => n + s.size, 0),
    async read(): Promise<ArrayBuffer[]> {
      if (done) throw new Error("PendingReadback.read() was already called.");
      done = true;
      gpu.stats.syncs++;
      try {
        await staging.mapAsync(GPUMapMode.READ, 0, Math.max(4, total));
        const mapped = staging.getMappedRange(0, Math.max(4, total));
        const out = segments.map((seg) =>
          mapped.slice(seg.stagingOffset, seg.stagingOffset + seg.size)
        );
        staging.unmap();
        gpu.stats.bytesReadBack += total;
        returnStaging(gpu, staging);
        return out;
      } catch (cause) {
        staging.destroy();
        throw cause;
      }
    },
  };
}

/**
 * Copies `sources` back to the CPU in one submit and one `mapAsync` round
 * (one sync whatever their number) and returns their bytes in order.
 * Inside the token loop prefer {@linkcode recordReadback} on the token's
 * own encoder, which saves the extra submit.
 */
export function readback(gpu: Gpu, sources: readonly BufferBinding[]): Promise<ArrayBuffer[]> {
  const encoder = gpu.device.createCommandEncoder({ label: "od-moe readback" });
  const pending = recordReadback(gpu, encoder, sources);
  gpu.submit(encoder);
  return pending.read();
}

/** The type of one 4-byte params field (a WGSL uniform struct member). */
export type ParamType = "u32" | "i32" | "f32";

/** Field name → type, in the WGSL struct's member order. */
export type ParamsLayout = Readonly<Record<string, ParamType>>;

const layoutsByBuffer = new WeakMap<GPUBuffer, readonly (readonly [string, ParamType])[]>();

/**
 * The field list of the {@linkcode ParamsBuffer} that owns `buffer`, in struct
 * order; undefined for any other buffer. Dispatch checks it against the
 * kernel's WGSL `params` struct.
 */
export function paramsFieldsOf(
  buffer: GPUBuffer,
): readonly (readonly [string, ParamType])[] | undefined {
  return layoutsByBuffer.get(buffer);
}

/**
 * A small uniform buffer holding a WGSL params struct of 4-byte scalars
 * (`u32`, `i32`, `f32`), in the layout's key order. `write` packs values and
 * uploads them only when they changed since the last write, so per-token
 * params cost nothing when constant.
 *
 * @example
 * ```ts ignore
 * const p = new ParamsBuffer(gpu, "smoke.params", { n: "u32", a: "f32", b: "f32" });
 * p.write({ n: 4096, a: 2, b: 0.5 });
 * ```
 */
export class ParamsBuffer<L extends ParamsLayout = ParamsLayout> {
  /** The uniform buffer (size rounded up to 16 bytes). */
  readonly buffer: GPUBuffer;
  /** The layout: field name → type, in struct order. */
  readonly layout: L;
  readonly #gpu: Gpu;
  readonly #fields: readonly (readonly [string, ParamType])[];
  readonly #words: ArrayBuffer;
  readonly #u32: Uint32Array;
  readonly #i32: Int32Array;
  readonly #f32: Float32Array;
  readonly #last: Uint32Array;
  #written = false;

  /** A params buffer for `layout`, labelled `label`. */
  constructor(gpu: Gpu, label: string, layout: L) {
    this.#gpu = gpu;
    this.layout = layout;
    this.#fields = Object.entries(layout);
    const bytes = Math.max(16, alignTo(this.#fields.length * 4, 16));
    this.#words = new ArrayBuffer(bytes);
    this.#u32 = new Uint32Array(this.#words);
    this.#i32 = new Int32Array(this.#words);
    this.#f32 = new Float32Array(this.#words);
    this.#last = new Uint32Array(bytes / 4);
    this.buffer = gpu.device.createBuffer({
      label,
      size: bytes,
      // Kernels bind params as read-only storage: llvmpipe (lavapipe) recompiles
      // a pipeline at dispatch time when loop bounds come from a uniform buffer
      // (16 ms a dispatch for a large shader), not when they come from storage.
      // UNIFORM stays for shaders that still declare var<uniform>; COPY_SRC so
      // that a test or a debug dump can read the params back.
      usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST |
        GPUBufferUsage.COPY_SRC,
    });
    layoutsByBuffer.set(this.buffer, this.#fields);
  }

  /** Packs `values` into words (u32 / i32 / f32 bit patterns), checking ranges. */
  pack(values: Readonly<Record<keyof L, number>>): Uint32Array {
    const given = values as Readonly<Record<string, number>>;
    for (const key of Object.keys(given)) {
      if (!(key in this.layout)) {
        throw new TypeError(`${this.buffer.label}: unknown params field "${key}".`);
      }
    }
    this.#fields.forEach(([name, type], i) => {
      const v = given[name];
      if (v === undefined) {
        throw new TypeError(`${this.buffer.label}: params field "${name}" missing.`);
      }
      if (type === "f32") {
        this.#f32[i] = v;
      } else if (
        !Number.isInteger(v) ||
        (type === "u32" ? v < 0 || v > 0xffffffff : v < -0x80000000 || v > 0x7fffffff)
      ) {
        throw new RangeError(
          `${this.buffer.label}: params field "${name}" = ${v} is not a ${type}.`,
        );
      } else if (type === "u32") {
        this.#u32[i] = v;
      } else {
        this.#i32[i] = v;
      }
    });
    return this.#u32;
  }

  /** Packs and uploads `values` unless identical to the last write. */
  write(values: Readonly<Record<keyof L, number>>): void {
    const words = this.pack(values);
    if (this.#written && words.every((w, i) => w === this.#last[i])) return;
    this.#gpu.device.queue.writeBuffer(this.buffer, 0, this.#words);
    this.#gpu.stats.bytesUploaded += this.#words.byteLength;
    this.#last.set(words);
    this.#written = true;
  }

  /** Destroys the uniform buffer. */
  destroy(): void {
    this.buffer.destroy();
  }
}
