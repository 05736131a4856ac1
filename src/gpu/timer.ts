/**
 * GPU timestamps per compute pass when the device has `timestamp-query`;
 * without it the timer is disabled and costs nothing (the portable path).
 *
 * @module
 */

import { type PendingReadback, recordReadback } from "./buffers.ts";
import type { Gpu } from "./device.ts";

/** One timed pass. */
export interface PassTiming {
  /** The label given to {@linkcode GpuTimer.pass}. */
  readonly label: string;
  /** GPU time between the pass's beginning and end, in milliseconds. */
  readonly ms: number;
}

/**
 * Collects per-pass GPU times: `pass(label)` returns the `timestampWrites`
 * for one compute pass (give it to `dispatch`), `resolve(encoder)` records
 * the query resolution into the same encoder, and `read()` after the submit
 * returns the times (one sync, so only in profiling runs).
 *
 * Disabled (every method a no-op, `read()` → `[]`) when the device lacks
 * `timestamp-query`.
 */
export class GpuTimer {
  /** Whether timestamps are recorded on this device. */
  readonly enabled: boolean;
  /** Most passes timed between two reads. */
  readonly capacity: number;
  readonly #gpu: Gpu;
  readonly #querySet: GPUQuerySet | undefined;
  readonly #resolveBuffer: GPUBuffer | undefined;
  #labels: string[] = [];
  #pending: { labels: string[]; readback: PendingReadback } | undefined;

  /** A timer for up to `capacity` passes per read. */
  constructor(gpu: Gpu, capacity = 256) {
    this.#gpu = gpu;
    this.capacity = capacity;
    this.enabled = gpu.has("timestamp-query");
    if (this.enabled) {
      this.#querySet = gpu.device.createQuerySet({
        label: "od-moe timer",
        type: "timestamp",
        count: 2 * capacity,
      });
      this.#resolveBuffer = gpu.device.createBuffer({
        label: "od-moe timer resolve",
        size: 16 * capacity,
        usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
      });
    }
  }

  /**
   * Timestamp writes for the next pass, labelled `label`; undefined when
   * disabled or when `capacity` passes are already waiting to be resolved.
   */
  pass(label: string): GPUComputePassTimestampWrites | undefined {
    if (!this.#querySet || this.#labels.length >= this.capacity) return undefined;
    const i = this.#labels.length;
    this.#labels.push(label);
    return {
      querySet: this.#querySet,
      beginningOfPassWriteIndex: 2 * i,
      endOfPassWriteIndex: 2 * i + 1,
    };
  }

  /** Records the resolution of the passes timed so far into `encoder` (its last commands). */
  resolve(encoder: GPUCommandEncoder): void {
    if (!this.#querySet || !this.#resolveBuffer || this.#labels.length === 0) return;
    if (this.#pending) {
      throw new Error("GpuTimer.resolve(): read() the previous resolution first.");
    }
    const n = this.#labels.length;
    encoder.resolveQuerySet(this.#querySet, 0, 2 * n, this.#resolveBuffer, 0);
    this.#pending = {
      labels: this.#labels,
      readback: recordReadback(this.#gpu, encoder, [
        { buffer: this.#resolveBuffer, offset: 0, size: 16 * n },
      ]),
    };
    this.#labels = [];
  }

  /** The times of the resolved passes, in pass order; call after submitting. */
  async read(): Promise<PassTiming[]> {
    const pending = this.#pending;
    if (!pending) return [];
    this.#pending = undefined;
    const [bytes] = await pending.readback.read();
    const ticks = new BigUint64Array(bytes!);
    return pending.labels.map((label, i) => ({
      label,
      ms: Number(ticks[2 * i + 1]! - ticks[2 * i]!) / 1e6,
    }));
  }

  /** Destroys the query set and its buffer. */
  destroy(): void {
    this.#querySet?.destroy();
    this.#resolveBuffer?.destroy();
  }
}
