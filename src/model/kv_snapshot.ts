/**
 * Copies of the KV cache's first positions in CPU memory, and their way
 * back: what a prompt cache keeps of a sequence so that another can use the
 * GPU's cache meanwhile. Every per-position cache (keys and values per
 * layer, MLA's one latent cache) is indexed by absolute position, so the
 * first `n` rows of each are the whole state of `n` tokens.
 *
 * @module
 */

import type { Gpu } from "../gpu/device.ts";
import { recordReadback } from "../gpu/buffers.ts";

/** The first `nTokens` positions of every per-position cache of a model, in CPU memory. */
export interface ContextSnapshot {
  /** Positions held. */
  readonly nTokens: number;
  /** Bytes held. */
  readonly bytes: number;
  /** Per cache buffer: its first `nTokens` rows. */
  readonly rows: readonly ArrayBuffer[];
}

/** The per-position caches: each buffer with its row size (bytes of one position). */
export interface PositionCaches {
  readonly buffers: readonly GPUBuffer[];
  readonly rowBytes: readonly number[];
}

/** The distinct cache buffers of `kCache` and `vCache` (MLA's serve as both) over `nCtx` positions. */
export function positionCaches(
  kCache: readonly GPUBuffer[],
  vCache: readonly GPUBuffer[],
  nCtx: number,
): PositionCaches {
  const buffers = [...new Set([...kCache, ...vCache])];
  return { buffers, rowBytes: buffers.map((b) => b.size / nCtx) };
}

/** Reads the first `n` rows of every cache back (one sync). */
export async function snapshotContext(
  gpu: Gpu,
  caches: PositionCaches,
  n: number,
): Promise<ContextSnapshot> {
  if (n === 0) return { nTokens: 0, bytes: 0, rows: [] };
  const enc = gpu.device.createCommandEncoder();
  const pending = recordReadback(
    gpu,
    enc,
    caches.buffers.map((buffer, i) => ({ buffer, offset: 0, size: n * caches.rowBytes[i]! })),
  );
  gpu.submit(enc);
  const rows = await pending.read();
  return { nTokens: n, bytes: rows.reduce((s, r) => s + r.byteLength, 0), rows };
}

/** Uploads rows `from … n−1` of `snapshot` into the caches (rows before `from` are left as they are). */
export function restoreContext(
  gpu: Gpu,
  caches: PositionCaches,
  snapshot: ContextSnapshot,
  from: number,
  n: number,
): void {
  if (!(0 <= from && from <= n && n <= snapshot.nTokens)) {
    throw new RangeError(`restore: rows ${from}…${n} are not in a snapshot of ${snapshot.nTokens}`);
  }
  if (snapshot.rows.length !== caches.buffers.length) {
    throw new RangeError("restore: the snapshot is of another model");
  }
  caches.buffers.forEach((buffer, i) => {
    const row = caches.rowBytes[i]!;
    if (n > from) {
      gpu.device.queue.writeBuffer(
        buffer,
        from * row,
        snapshot.rows[i]!,
        from * row,
        (n - from) * row,
      );
    }
  });
  gpu.stats.bytesUploaded += caches.rowBytes.reduce((s, r) => s + r, 0) * (n - from);
}
