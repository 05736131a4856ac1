/**
 * Counters of the GPU work that costs time on the CPU side: syncs (GPU→CPU
 * readbacks, ~11 ms each in Deno), submits, dispatches and bytes moved.
 *
 * The engine reports syncs per token from these; tests assert on them.
 *
 * @module
 */

/** A frozen copy of {@linkcode GpuStats} counters at one moment. */
export interface GpuStatsSnapshot {
  /** GPU→CPU readbacks awaited (one `mapAsync` round each, whatever the buffer count). */
  readonly syncs: number;
  /** `queue.submit` calls carrying command buffers (empty flushes excluded). */
  readonly submits: number;
  /** `queue.submit([])` calls made only to flush pending `writeBuffer` uploads. */
  readonly flushes: number;
  /** Compute dispatches recorded through the dispatch helper. */
  readonly dispatches: number;
  /** Bind groups created (cache misses of the bind group cache). */
  readonly bindGroupsCreated: number;
  /** Bytes written with `queue.writeBuffer` through the upload helpers. */
  readonly bytesUploaded: number;
  /** Bytes copied back to the CPU by readbacks. */
  readonly bytesReadBack: number;
}

/** Mutable counters of GPU work; one instance per {@linkcode Gpu} (`gpu.stats`). */
export class GpuStats implements GpuStatsSnapshot {
  /** GPU→CPU readbacks awaited. */
  syncs = 0;
  /** Submits carrying command buffers. */
  submits = 0;
  /** Empty submits that only flush uploads. */
  flushes = 0;
  /** Compute dispatches recorded. */
  dispatches = 0;
  /** Bind groups created. */
  bindGroupsCreated = 0;
  /** Bytes uploaded with `writeBuffer`. */
  bytesUploaded = 0;
  /** Bytes read back to the CPU. */
  bytesReadBack = 0;

  /** A frozen copy of the counters now. */
  snapshot(): GpuStatsSnapshot {
    return Object.freeze({
      syncs: this.syncs,
      submits: this.submits,
      flushes: this.flushes,
      dispatches: this.dispatches,
      bindGroupsCreated: this.bindGroupsCreated,
      bytesUploaded: this.bytesUploaded,
      bytesReadBack: this.bytesReadBack,
    });
  }

  /** The counters' increase since `before` (e.g. the cost of one token). */
  since(before: GpuStatsSnapshot): GpuStatsSnapshot {
    return Object.freeze({
      syncs: this.syncs - before.syncs,
      submits: this.submits - before.submits,
      flushes: this.flushes - before.flushes,
      dispatches: this.dispatches - before.dispatches,
      bindGroupsCreated: this.bindGroupsCreated - before.bindGroupsCreated,
      bytesUploaded: this.bytesUploaded - before.bytesUploaded,
      bytesReadBack: this.bytesReadBack - before.bytesReadBack,
    });
  }

  /** Sets every counter to zero. */
  reset(): void {
    this.syncs = 0;
    this.submits = 0;
    this.flushes = 0;
    this.dispatches = 0;
    this.bindGroupsCreated = 0;
    this.bytesUploaded = 0;
    this.bytesReadBack = 0;
  }
}
