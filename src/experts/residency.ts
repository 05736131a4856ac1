/**
 * The residency table: an i32 GPU buffer `[nLayer, nExpert]` mapping
 * (layer, expert) → slot, or −1, read by the kernels to find an expert's
 * slot. The CPU keeps a mirror and rewrites only the entries changed since
 * the last write, merged into few `writeBuffer`s.
 *
 * @module
 */

import type { Gpu } from "../gpu/device.ts";
import { createBuffer, STORAGE_USAGE } from "../gpu/buffers.ts";

/** The (layer, expert) → slot table and its GPU copy. */
export class ResidencyTable {
  /** i32 [nLayer, nExpert]: slot, or −1 when absent. */
  readonly buffer: GPUBuffer;
  readonly #table: Int32Array;
  readonly #dirty = new Set<number>();

  /** An empty table (every entry −1) on the GPU. */
  constructor(readonly gpu: Gpu, readonly nLayer: number, readonly nExpert: number, label: string) {
    this.#table = new Int32Array(nLayer * nExpert).fill(-1);
    this.buffer = createBuffer(gpu, { label, data: this.#table, usage: STORAGE_USAGE });
  }

  /** The slot of `expert` of `layer`, or −1. */
  get(layer: number, expert: number): number {
    return this.#table[layer * this.nExpert + expert]!;
  }

  /** Sets the slot of `expert` of `layer` (−1: absent); written to the GPU by {@linkcode write}. */
  set(layer: number, expert: number, slot: number): void {
    const i = layer * this.nExpert + expert;
    this.#table[i] = slot;
    this.#dirty.add(i);
  }

  /** A copy of the mirror. */
  snapshot(): Int32Array {
    return this.#table.slice();
  }

  /**
   * Writes the entries changed since the last call, merging runs less than
   * 16 entries apart (rewriting unchanged entries from the mirror is
   * harmless). Returns whether anything was written.
   */
  write(): boolean {
    if (this.#dirty.size === 0) return false;
    const idx = [...this.#dirty].sort((a, b) => a - b);
    this.#dirty.clear();
    let start = idx[0]!;
    let end = start + 1;
    const write = () => {
      this.gpu.device.queue.writeBuffer(
        this.buffer,
        start * 4,
        this.#table.buffer,
        start * 4,
        (end - start) * 4,
      );
      this.gpu.stats.bytesUploaded += (end - start) * 4;
    };
    for (const i of idx.slice(1)) {
      if (i - end < 16) {
        end = i + 1;
      } else {
        write();
        start = i;
        end = i + 1;
      }
    }
    write();
    return true;
  }

  /** Frees the GPU buffer. */
  destroy(): void {
    this.buffer.destroy();
  }
}
