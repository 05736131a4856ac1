/**
 * Per-stack entry lists for a mul_mat_id split over several stacks (the
 * expert pool's arenas): one `moe_compact` op sorts a batch's (token, slot)
 * entries by the stack holding their matrix and writes the indirect
 * arguments of each stack's one-entry matvec ops
 * ({@linkcode MatmulIdOptions.entryList}), so that each op's workgroups are
 * its own entries. Without them every stack's op walks the whole batch and
 * the entries of other stacks return at once — which a CPU adapter still
 * pays a good part of (bench/README.md, "entry lists").
 *
 * @module
 */

import { createBuffer, ParamsBuffer } from "../buffers.ts";
import type { Gpu } from "../device.ts";
import type { BufferBinding } from "../dispatch.ts";
import { getPipeline } from "../pipeline.ts";
import { bindFrom, checkInt } from "./elementwise.ts";
import type { IdsView } from "./matmul.ts";
import type { IndirectArgs, Op } from "./op.ts";

/** One consumer's share of {@linkcode EntryLists}: its stack's list and its indirect arguments. */
export interface EntryListSlot {
  /** The stack's list (`[count, entries…]`), bound as the matmul's `route`. */
  readonly list: BufferBinding;
  /** The consumer's `[x, count, 1]` arguments. */
  readonly args: IndirectArgs;
}

/** A stack's id range: matrices `idBase … idBase + nMats - 1`. */
export interface StackRange {
  /** Id of the stack's first matrix. */
  readonly idBase: number;
  /** Matrices in the stack. */
  readonly nMats: number;
}

/** Options of {@linkcode prepareEntryLists}. */
export interface EntryListsOptions {
  /** Matrix ids, u32 `[T, nUsed]` (token stride from the view). */
  readonly ids: IdsView;
  /** Slots per token. */
  readonly nUsed: number;
  /** The stacks, in any order; ranges must not overlap. */
  readonly stacks: readonly StackRange[];
  /** Largest batch recorded. */
  readonly maxTokens: number;
  /** The step buffer; `T` at word 1. */
  readonly step: GPUBuffer;
  /** Most consumers (matmul ops) per stack; default 4. */
  readonly consumersPerStack?: number;
  /**
   * A buffer for the lists, shared by ops that never run at once (the
   * layers of a forward pass); at least {@linkcode entryListsBytes}. Default:
   * a buffer of the op's own.
   */
  readonly lists?: GPUBuffer;
  /** Name for errors and timings. */
  readonly label: string;
}

/** The compaction op and the per-stack consumer slots it feeds. */
export interface EntryLists {
  /** The `moe_compact` op: record it before the matmul ops that use the lists. */
  readonly op: Op;
  /**
   * A consumer of stack `stack` (index in `stacks`) dispatching `x`
   * workgroups per entry: its list and indirect arguments. At most
   * `consumersPerStack` per stack.
   */
  slot(stack: number, x: number): EntryListSlot;
}

/** Words of one stack's list, a whole number of storage offset alignments. */
function regionWords(gpu: Gpu, maxEntries: number): number {
  const align = gpu.limits.minStorageBufferOffsetAlignment / 4;
  return Math.ceil((1 + maxEntries) / align) * align;
}

/** Bytes of the lists of `nStacks` stacks for batches of `maxTokens × nUsed` entries. */
export function entryListsBytes(
  gpu: Gpu,
  nStacks: number,
  maxTokens: number,
  nUsed: number,
): number {
  return 4 * nStacks * regionWords(gpu, maxTokens * nUsed);
}

/**
 * Prepares the entry lists of `stacks` for batches up to `maxTokens`.
 *
 * @throws {RangeError} for bad counts, overlapping stacks, a lists buffer
 *   too small, or more entries than one dispatch dimension holds.
 */
export async function prepareEntryLists(gpu: Gpu, o: EntryListsOptions): Promise<EntryLists> {
  const label = o.label;
  checkInt(label, "nUsed", o.nUsed, 1);
  checkInt(label, "maxTokens", o.maxTokens, 1);
  const perStack = o.consumersPerStack ?? 4;
  checkInt(label, "consumersPerStack", perStack, 1);
  const n = o.stacks.length;
  if (n < 1) throw new RangeError(`${label}: no stacks.`);
  const sorted = [...o.stacks].sort((a, b) => a.idBase - b.idBase);
  sorted.forEach((s, i) => {
    checkInt(label, "idBase", s.idBase, 0);
    checkInt(label, "nMats", s.nMats, 1);
    const next = sorted[i + 1];
    if (next && s.idBase + s.nMats > next.idBase) {
      throw new RangeError(
        `${label}: stacks [${s.idBase}, ${s.idBase + s.nMats}) and ` +
          `[${next.idBase}, ${next.idBase + next.nMats}) overlap.`,
      );
    }
  });
  const maxEntries = o.maxTokens * o.nUsed;
  const maxDim = gpu.limits.maxComputeWorkgroupsPerDimension;
  if (maxEntries > maxDim) {
    throw new RangeError(
      `${label}: ${maxEntries} entries a batch exceed one dispatch dimension (${maxDim}).`,
    );
  }
  const region = regionWords(gpu, maxEntries);
  const bytes = 4 * n * region;
  if (o.lists && o.lists.size < bytes) {
    throw new RangeError(
      `${label}: the shared lists buffer "${o.lists.label}" has ${o.lists.size} bytes, ` +
        `${bytes} needed.`,
    );
  }
  const lists = o.lists ?? createBuffer(gpu, { label: `${label}.lists`, size: bytes });
  const stacks = createBuffer(gpu, {
    label: `${label}.stacks`,
    data: new Uint32Array(o.stacks.flatMap((s) => [s.idBase, s.nMats])),
  });
  const args = gpu.device.createBuffer({
    label: `${label}.args`,
    size: 12 * n * perStack,
    usage: GPUBufferUsage.STORAGE | GPUBufferUsage.INDIRECT | GPUBufferUsage.COPY_DST,
  });
  const ids = bindFrom(gpu, o.ids.buffer, o.ids.offset);
  const params = new ParamsBuffer(gpu, `${label}.params`, {
    n_stacks: "u32",
    n_used: "u32",
    ids_off: "u32",
    ids_stride: "u32",
    region: "u32",
    n_args: "u32",
  });
  params.write({
    n_stacks: n,
    n_used: o.nUsed,
    ids_off: ids.offset,
    ids_stride: o.ids.stride ?? o.nUsed,
    region,
    n_args: perStack,
  });
  const kernel = await getPipeline(gpu, "moe_compact", { entryPoint: "compact" });
  const used = new Array<number>(n).fill(0);
  return {
    op: {
      label,
      kernel,
      bindings: [ids.binding, o.step, stacks, lists, args, params.buffer],
      workgroups: 1,
    },
    slot(stack: number, x: number): EntryListSlot {
      if (!(Number.isInteger(stack) && stack >= 0 && stack < n)) {
        throw new RangeError(`${label}: stack ${stack} is not one of the ${n} stacks.`);
      }
      if (!(Number.isInteger(x) && x >= 1 && x <= maxDim)) {
        throw new RangeError(`${label}: ${x} workgroups an entry is not 1 … ${maxDim}.`);
      }
      const j = used[stack]!;
      if (j >= perStack) {
        throw new RangeError(`${label}: stack ${stack} has all ${perStack} consumers already.`);
      }
      used[stack] = j + 1;
      const offset = 12 * (stack * perStack + j);
      gpu.device.queue.writeBuffer(args, offset, new Uint32Array([x, 0, 1]));
      return {
        list: { buffer: lists, offset: 4 * stack * region, size: 4 * region },
        args: { buffer: args, offset },
      };
    },
  };
}
