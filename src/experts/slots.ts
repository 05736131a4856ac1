/**
 * How the expert pool lays out its slots (see `pool.ts`'s module doc):
 * layers whose experts have the same shape form a slot group; with a
 * budget that holds every expert each layer is a group of its own, with its
 * own slots at its own size (its matmul_id ops then walk only its own
 * arenas), otherwise one set of slots of the largest expert's size is
 * shared by every group; slots live in arenas (one GPU buffer each, at most
 * one storage binding), which each group sees through its own typed stacks.
 *
 * @module
 */

import type { Gpu } from "../gpu/device.ts";
import { align4, createBuffer } from "../gpu/buffers.ts";
import type { GpuWeight } from "../gpu/ops/op.ts";
import type { ExpertLayerShape, ExpertPartShape, ExpertSource } from "./source.ts";

/** One arena of one slot group: the group's view of a GPU buffer holding `nSlots` consecutive slots. */
export interface PoolArena {
  /** Slot group index. */
  readonly group: number;
  /** Arena index (the same buffer for every group). */
  readonly index: number;
  /** Slot of the arena's first slot: the kernels' `idBase`. */
  readonly idBase: number;
  /** Slots held. */
  readonly nSlots: number;
  /** The arena's buffer: `nSlots` slots of the pool's `slotBytes`, shared by every group. */
  readonly buffer: GPUBuffer;
  /** One stack of `nSlots` matrices per part, in the group's part order. */
  readonly parts: readonly GpuWeight[];
  /**
   * The stacks by part: `"gate"`, `"up"`, `"down"`, `"gate_up"` for weights,
   * `"<role>.<kind>"` for the others (`"down.bias"`, `"down.scale"`).
   */
  readonly weights: Readonly<Record<string, GpuWeight>>;
}

/**
 * The layers whose experts have the same shape (one layer a group when every
 * expert fits), and how their parts sit in a slot.
 */
export interface SlotGroup {
  /** Index in the pool's `groups`. */
  readonly index: number;
  /** The shape key (parts' role, kind, type and slice shape). */
  readonly key: string;
  /** The layers using this group. */
  readonly layers: readonly number[];
  /** Part shapes (from the group's first layer; tensor names differ per layer). */
  readonly parts: readonly ExpertPartShape[];
  /** Bytes of each part in a slot (its slice bytes rounded up to 4). */
  readonly partSlotBytes: readonly number[];
  /** Byte offset of each part within a slot. */
  readonly partOffsets: readonly number[];
  /** File bytes of one expert (sum of slice bytes). */
  readonly bytesPerExpert: number;
  /** Slot bytes this group's experts use (sum of `partSlotBytes`, ≤ the pool's `slotBytes`). */
  readonly usedSlotBytes: number;
  /** The group's typed views of the pool's arenas. */
  readonly arenas: readonly PoolArena[];
}

/** A slot group with its arenas (the pool's own view). */
export interface Group extends SlotGroup {
  /** The group's typed views of the pool's arenas. */
  readonly arenas: PoolArena[];
}

// mul_mat_id takes stacks of fewer than 2^16 matrices.
const MAX_SLOTS_PER_ARENA = 65535;

/** The slots of a pool, allocated (see {@linkcode layoutSlots}). */
export interface SlotLayout {
  /** GPU bytes of a slot: the largest expert of any layer, each part rounded up to 4. */
  readonly slotBytes: number;
  /** The smallest budget: `minSlots × slotBytes`. */
  readonly minBudgetBytes: number;
  /** The budget asked for, raised to `minBudgetBytes`. */
  readonly budgetBytes: number;
  /** Whether every expert has a slot at its own size. */
  readonly allFit: boolean;
  /** Slots in all. */
  readonly nSlots: number;
  /** The arenas' buffers, in slot order. */
  readonly buffers: GPUBuffer[];
  /** Per slot: its bytes. */
  readonly slotSize: Float64Array;
  /** Per group: its free slots (one list shared by the groups of a class), lowest slot last. */
  readonly free: number[][];
  /** Per group: the first slot it can use and how many. */
  readonly classStart: number[];
  readonly classSlots: number[];
  /** Per arena: its first slot and its slot bytes. */
  readonly arenaBase: number[];
  readonly arenaSlotBytes: number[];
  /** The slot groups, and each layer's. */
  readonly groups: Group[];
  readonly groupOf: (Group | undefined)[];
}

/** Plans the slot groups and allocates the arenas of a pool over `source`. */
export function layoutSlots(
  gpu: Gpu,
  source: ExpertSource,
  o: {
    budgetBytes: number;
    minSlots: number;
    nLayer: number;
    nExpert: number;
    totalExperts: number;
    maxSlotsPerArena?: number;
    label: string;
  },
): SlotLayout {
  const byKey = new Map<string, ExpertLayerShape[]>();
  for (const l of source.layers) {
    const key = shapeKey(l);
    byKey.set(key, [...byKey.get(key) ?? [], l]);
  }
  const byShape = [...byKey.entries()].map(([key, layers]) => {
    const parts = layers[0]!.tensors;
    const partSlotBytes = parts.map((t) => align4(t.sliceBytes));
    const partOffsets = partSlotBytes.map((_, i) =>
      partSlotBytes.slice(0, i).reduce((s, b) => s + b, 0)
    );
    return {
      key,
      layers,
      parts,
      partSlotBytes,
      partOffsets,
      usedSlotBytes: partSlotBytes.reduce((s, b) => s + b, 0),
    };
  });
  const slotBytes = Math.max(...byShape.map((g) => g.usedSlotBytes));
  const minBudgetBytes = Math.min(o.minSlots, o.nExpert) * slotBytes;
  const budget = Math.max(o.budgetBytes, minBudgetBytes);
  // Every expert at its own size if the budget holds them all; else one
  // set of slots of the largest size, shared by every group.
  const expertsOf = (g: { layers: readonly ExpertLayerShape[] }) =>
    g.layers.reduce((n, l) => n + l.nExpert, 0);
  const exact = byShape.reduce((n, g) => n + expertsOf(g) * g.usedSlotBytes, 0);
  const allFit = budget >= exact;
  // All fit: a group (own slots and arenas) a layer, so that a layer's matmul_id ops walk only
  // the arenas holding its experts (each arena is a dispatch per matrix).
  const shapes = allFit
    ? byShape.flatMap((g) => g.layers.map((l) => ({ ...g, layers: [l] })))
    : byShape;
  const groupExperts = shapes.map(expertsOf);
  const classes = allFit
    ? shapes.map((g, i) => ({ slotBytes: g.usedSlotBytes, n: groupExperts[i]!, groups: [i] }))
    : [{
      slotBytes: slotBytes,
      n: Math.min(o.totalExperts, Math.floor(budget / slotBytes)),
      groups: shapes.map((_, i) => i),
    }];
  const nSlots = classes.reduce((n, c) => n + c.n, 0);
  const perBinding = Math.min(gpu.limits.maxStorageBufferBindingSize, gpu.limits.maxBufferSize);
  const label = o.label;
  const buffers: GPUBuffer[] = [];
  const arenaBase: number[] = [];
  const arenaSlotBytes: number[] = [];
  const arenasOf: number[][] = shapes.map(() => []);
  const slotSize = new Float64Array(nSlots);
  const free: number[][] = shapes.map(() => []);
  const classSlots = shapes.map(() => 0);
  const classStart = shapes.map(() => 0);
  let base = 0;
  for (const c of classes) {
    const perArena = Math.min(
      c.n,
      MAX_SLOTS_PER_ARENA,
      o.maxSlotsPerArena ?? Infinity,
      Math.floor(perBinding / c.slotBytes),
    );
    if (perArena < 1) {
      throw new RangeError(
        `ExpertPool: one expert takes ${c.slotBytes} bytes, over this device's storage ` +
          `binding limit of ${perBinding} bytes`,
      );
    }
    for (let first = 0; first < c.n; first += perArena) {
      const n = Math.min(perArena, c.n - first);
      const a = buffers.length;
      buffers.push(createBuffer(gpu, { label: `${label}.a${a}`, size: n * c.slotBytes }));
      arenaBase.push(base + first);
      arenaSlotBytes.push(c.slotBytes);
      for (const g of c.groups) arenasOf[g]!.push(a);
    }
    slotSize.fill(c.slotBytes, base, base + c.n);
    // one free list per class, shared by its groups; popped from the end: lowest slot first
    const list = Array.from({ length: c.n }, (_, i) => base + c.n - 1 - i);
    for (const g of c.groups) {
      free[g] = list;
      classSlots[g] = c.n;
      classStart[g] = base;
    }
    base += c.n;
  }
  const groups = shapes.map((s, index) => {
    const group: Group = {
      index,
      key: s.key,
      layers: s.layers.map((l) => l.layer),
      parts: s.parts,
      partSlotBytes: s.partSlotBytes,
      partOffsets: s.partOffsets,
      bytesPerExpert: expertBytes(s.layers[0]!),
      usedSlotBytes: s.usedSlotBytes,
      arenas: [],
    };
    for (const a of arenasOf[index]!) {
      group.arenas.push(
        makeArena(
          `${label}.g${index}`,
          group,
          a,
          arenaBase[a]!,
          buffers[a]!,
          arenaSlotBytes[a]!,
        ),
      );
    }
    return group;
  });
  const groupOf: (Group | undefined)[] = new Array(o.nLayer).fill(undefined);
  for (const g of groups) for (const l of g.layers) groupOf[l] = g;
  return {
    slotBytes,
    minBudgetBytes,
    budgetBytes: budget,
    allFit,
    nSlots,
    buffers,
    slotSize,
    free,
    classStart,
    classSlots,
    arenaBase,
    arenaSlotBytes,
    groups,
    groupOf,
  };
}

function expertBytes(l: ExpertLayerShape): number {
  return l.tensors.reduce((s, t) => s + t.sliceBytes, 0);
}

function shapeKey(l: ExpertLayerShape): string {
  return l.tensors.map((t) => `${t.role}.${t.kind}:${t.type.name}:${t.sliceShape.join("x")}`)
    .join("|");
}

function partName(t: ExpertPartShape): string {
  return t.kind === "weight" ? t.role : `${t.role}.${t.kind}`;
}

// Group g's typed view of the arena `buffer` (slots idBase…, slotBytes apart).
function makeArena(
  label: string,
  g: Group,
  index: number,
  idBase: number,
  buffer: GPUBuffer,
  slotBytes: number,
): PoolArena {
  const nSlots = buffer.size / slotBytes;
  const parts: GpuWeight[] = [];
  const weights: Record<string, GpuWeight> = {};
  g.parts.forEach((t, p) => {
    const name = partName(t);
    const nRows = t.sliceShape.slice(1).reduce((a, b) => a * b, 1);
    const w: GpuWeight = {
      name: `${label}.${name}`,
      type: t.type,
      nCols: t.sliceShape[0] ?? 1,
      nRows,
      nMats: nSlots,
      matStride: slotBytes,
      rowBytes: t.sliceBytes / nRows,
      chunks: [{ buffer, byteOffset: g.partOffsets[p]!, rowStart: 0, nRows }],
    };
    parts.push(w);
    weights[name] = w;
  });
  return { group: g.index, index, idBase, nSlots, buffer, parts, weights };
}
