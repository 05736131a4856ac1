// The expert pool on the machine's WebGPU adapter (llvmpipe in CI): tiny
// experts, a few dozen readbacks in all. Skipped, with the reason printed,
// without an adapter.

import assert from "node:assert/strict";
import type { Gpu } from "../gpu/device.ts";
import { createBuffer, readback } from "../gpu/buffers.ts";
import { prepareMatmulId } from "../gpu/ops/matmul.ts";
import { recordOps, STEP } from "../gpu/ops/op.ts";
import { randomWeightBytes } from "../gpu/ops/weights.ts";
import { dequantize } from "../gguf/dequant.ts";
import { type GgufTensorSpec, writeGgufFile } from "../gguf/writer.ts";
import { GgmlType, requireGgmlType } from "../gguf/types.ts";
import { gv } from "../gguf/value.ts";
import { readGgufModel } from "../gguf/reader.ts";
import { Rng } from "../util/rng.ts";
import {
  type ExpertLayerShape,
  ExpertReadError,
  type ExpertSource,
  GgufExpertSource,
} from "./source.ts";
import { ExpertPool, ExpertPoolFullError } from "./pool.ts";
import { expertKey, type LruPolicy } from "./eviction.ts";
import { gpuTest } from "../../dev/gpu.ts";

const N_EXPERT = 7;
const LAYERS = [1, 2, 3]; // layer 0 is dense: the table still has its row
// gate and up F32 [32, 6], down Q8_0 [32, 5] (170 bytes: padded to 172 in a
// slot) and a down bias F32 [32]. Layout order: gate, up, down.bias, down.
const PARTS = [
  { suffix: "ffn_gate_exps.weight", type: GgmlType.F32, shape: [32, 6], bytes: 768 },
  { suffix: "ffn_up_exps.weight", type: GgmlType.F32, shape: [32, 6], bytes: 768 },
  { suffix: "ffn_down_exps.weight", type: GgmlType.Q8_0, shape: [32, 5], bytes: 170 },
  { suffix: "ffn_down_exps.bias", type: GgmlType.F32, shape: [32], bytes: 128 },
];
const EXPERT_BYTES = 768 + 768 + 170 + 128;
const SLOT_BYTES = 768 + 768 + 172 + 128;
const TOTAL_BYTES = LAYERS.length * N_EXPERT * EXPERT_BYTES;

interface Fixture {
  dir: string;
  shards: string[];
  /** `expert(layer, e)`: the file bytes of each part, in layout order. */
  expert(layer: number, e: number): Uint8Array[];
}

// Two shards: layers 1–2, then layer 3.
async function makeFixture(seed = 1): Promise<Fixture> {
  const dir = await Deno.makeTempDir({ prefix: "od-moe-pool-" });
  const rng = new Rng(seed);
  const data = new Map<number, Uint8Array[]>();
  const shards: string[] = [];
  for (const [i, layers] of [[1, 2], [3]].entries()) {
    const tensors: GgufTensorSpec[] = [];
    for (const layer of layers) {
      data.set(
        layer,
        PARTS.map((p) => {
          const bytes = Uint8Array.from({ length: p.bytes * N_EXPERT }, () => rng.int(256));
          tensors.push({
            name: `blk.${layer}.${p.suffix}`,
            type: p.type,
            shape: [...p.shape, N_EXPERT],
            data: bytes,
          });
          return bytes;
        }),
      );
    }
    const path = `${dir}/m-0000${i + 1}-of-00002.gguf`;
    await writeGgufFile(path, {
      metadata: [
        ["general.architecture", gv.str("qwen3moe")],
        ["split.no", gv.u16(i)],
        ["split.count", gv.u16(2)],
      ],
      tensors,
    });
    shards.push(path);
  }
  return {
    dir,
    shards,
    expert(layer, e) {
      const slice = (p: number) =>
        data.get(layer)![p]!.subarray(e * PARTS[p]!.bytes, (e + 1) * PARTS[p]!.bytes);
      return [slice(0), slice(1), slice(3), slice(2)];
    },
  };
}

async function withPool(
  gpu: Gpu,
  opts: { budgetBytes: number; minSlots?: number; maxSlotsPerArena?: number },
  fn: (pool: ExpertPool, f: Fixture, src: GgufExpertSource) => void | Promise<void>,
): Promise<void> {
  const f = await makeFixture();
  const src = new GgufExpertSource(readGgufModel(f.shards[0]!));
  const pool = new ExpertPool(gpu, src, opts);
  try {
    await fn(pool, f, src);
  } finally {
    pool.destroy();
    src.close();
    await Deno.remove(f.dir, { recursive: true });
  }
}

/** Budget and stats invariants, checked after every call. */
function checkInvariants(pool: ExpertPool): void {
  // streaming: every group sees every arena; all fit: each layer's group its own
  const buffers = [...new Set(pool.groups.flatMap((g) => g.arenas.map((a) => a.buffer)))];
  assert.deepEqual(buffers, pool.buffers);
  if (pool.allFit) assert.equal(pool.groups.length, LAYERS.length, "a group a layer");
  assert.equal(pool.allocatedBytes, buffers.reduce((s, b) => s + b.size, 0));
  assert.equal(pool.allocatedBytes, pool.nSlots * SLOT_BYTES);
  assert.ok(
    pool.allocatedBytes <= pool.budgetBytes,
    `allocated ${pool.allocatedBytes} > budget ${pool.budgetBytes}`,
  );
  assert.equal(pool.budgetBytes, Math.max(pool.requestedBudgetBytes, pool.minBudgetBytes));
  assert.equal(pool.limitBytes, pool.budgetBytes);
  let resident = 0;
  for (const l of LAYERS) resident += pool.residentExperts(l).length;
  assert.equal(pool.residentBytes, resident * SLOT_BYTES);
  assert.ok(pool.residentBytes <= pool.allocatedBytes);
  assert.ok(pool.peakBytes >= pool.residentBytes && pool.peakBytes <= pool.allocatedBytes);
  const s = pool.stats.snapshot();
  assert.equal(s.hits + s.misses, s.lookups);
  assert.equal(s.bytesUploaded, s.misses * EXPERT_BYTES);
  assert.equal(s.prefetchBytes, s.prefetchUploads * EXPERT_BYTES);
  assert.equal(s.residentBytes, pool.residentBytes);
  for (const l of s.layers) assert.equal(l.hits + l.misses, l.lookups);
}

/** Reads the arenas and the table back (one sync) and checks both against the file. */
async function checkGpu(gpu: Gpu, pool: ExpertPool, f: Fixture): Promise<void> {
  const g = pool.groups[0]!;
  const got = await readback(gpu, [pool.residencyBuffer, ...pool.buffers]);
  const table = new Int32Array(got[0]!);
  assert.deepEqual(table, pool.residencyTable(), "GPU table = CPU mirror");
  assert.equal(table.length, 4 * N_EXPERT, "[nLayer, nExpert] with the dense layer 0");
  const seen = new Set<number>();
  for (let l = 0; l < 4; l++) {
    for (let e = 0; e < N_EXPERT; e++) {
      const slot = table[l * N_EXPERT + e]!;
      assert.equal(slot, LAYERS.includes(l) ? pool.slotOf(l, e) : -1);
      if (slot < 0) continue;
      assert.ok(slot < pool.nSlots && !seen.has(slot), `slot ${slot} of ${l}:${e}`);
      seen.add(slot);
      const { arena: a, byteOffset } = pool.slotLocation(slot);
      // the layer's view of that buffer
      const view = pool.arenasFor(l).find((x) => x.buffer === pool.buffers[a]);
      assert.ok(view, `slot ${slot} of ${l}:${e} is in an arena layer ${l} does not see`);
      const local = slot - view.idBase;
      assert.ok(local >= 0 && local < view.nSlots);
      assert.equal(byteOffset, local * SLOT_BYTES);
      f.expert(l, e).forEach((want, p) => {
        const arena = new Uint8Array(got[1 + a]!);
        const at = byteOffset + g.partOffsets[p]!;
        assert.deepEqual(arena.subarray(at, at + want.length), want, `${l}:${e} part ${p}`);
      });
    }
  }
}

/** A reference LRU: keys from least to most recent; `"full"` where the pool must refuse. */
class RefLru {
  order: string[] = [];
  constructor(readonly nSlots: number) {}
  ensure(layer: number, experts: number[], pinned: Set<string>) {
    const wanted = [...new Set(experts)];
    const isProtected = (k: string) => {
      const [l, x] = k.split(":").map(Number);
      return pinned.has(k) || (l === layer && wanted.includes(x!));
    };
    const missing = wanted.filter((e) => !this.order.includes(expertKey(layer, e)));
    if (missing.length > this.nSlots - this.order.filter(isProtected).length) return "full";
    for (const e of wanted) {
      const k = expertKey(layer, e);
      if (this.order.includes(k)) this.order = [...this.order.filter((x) => x !== k), k];
    }
    const evicted: [number, number][] = [];
    for (const e of missing) {
      if (this.order.length === this.nSlots) {
        const victim = this.order.find((k) => !isProtected(k))!;
        this.order = this.order.filter((k) => k !== victim);
        evicted.push(victim.split(":").map(Number) as [number, number]);
      }
      this.order.push(expertKey(layer, e));
    }
    return { uploaded: missing, evicted };
  }
}

/** The pool's LRU order as keys, least recent first. */
function lruKeys(pool: ExpertPool): string[] {
  const keyOfSlot = new Map<number, string>();
  for (const l of LAYERS) {
    for (const e of pool.residentExperts(l)) keyOfSlot.set(pool.slotOf(l, e), expertKey(l, e));
  }
  return (pool.policyOf(LAYERS[0]!) as LruPolicy).order().map((s) => keyOfSlot.get(s)!);
}

for (const fraction of [0, 0.1, 0.5, 1]) {
  gpuTest(
    `pool: random ensures at budget ${fraction * 100}% keep GPU bytes, table and LRU exact`,
    async (gpu) => {
      const minSlots = 4;
      await withPool(
        gpu,
        // 3 slots per arena: several arenas, the last one partial.
        {
          budgetBytes: Math.floor(21 * SLOT_BYTES * fraction),
          minSlots,
          maxSlotsPerArena: 3,
        },
        async (pool, f) => {
          const g = pool.groups[0]!;
          const budgetSlots = Math.floor(21 * fraction);
          assert.equal(pool.nSlots, Math.max(minSlots, budgetSlots));
          assert.equal(pool.budgetRaised, budgetSlots < minSlots);
          // all fit: each layer's 7 experts in arenas of its own
          assert.equal(g.arenas.length, Math.ceil((pool.allFit ? 7 : pool.nSlots) / 3));
          assert.equal(pool.buffers.length, pool.allFit ? 9 : g.arenas.length);
          assert.equal(pool.allResident, fraction === 1);
          const ref = new RefLru(pool.nSlots);
          const rng = new Rng(100 + fraction * 10);
          const gpuStats = gpu.stats.snapshot();
          let ensures = 0;
          let full = 0;
          let readbacks = 0;
          checkInvariants(pool);
          for (let step = 0; step < 40; step++) {
            const layer = LAYERS[rng.int(3)]!;
            const experts = Array.from({ length: 1 + rng.int(minSlots) }, () => rng.int(7));
            // Pin one resident expert of another layer now and then.
            const pinned = new Set<string>();
            if (rng.next() < 0.3 && ref.order.length > 0) {
              const k = ref.order[rng.int(ref.order.length)]!;
              if (!k.startsWith(`${layer}:`)) pinned.add(k);
            }
            const want = ref.ensure(layer, experts, pinned);
            ensures++;
            if (want === "full") {
              full++;
              assert.throws(() => pool.ensure(layer, experts, { pinned }), ExpertPoolFullError);
              continue;
            }
            const got = pool.ensure(layer, experts, { pinned });
            assert.deepEqual(got, want, `step ${step}: layer ${layer} experts ${experts}`);
            if (fraction === 1) assert.deepEqual(got.evicted, []);
            for (const k of pinned) {
              assert.ok(pool.slotOf(...(k.split(":").map(Number) as [number, number])) >= 0);
            }
            checkInvariants(pool);
            if (step % 4 === 3) {
              await checkGpu(gpu, pool, f);
              readbacks++;
            }
          }
          await checkGpu(gpu, pool, f);
          readbacks++;
          assert.deepEqual(lruKeys(pool), ref.order, "LRU order");
          assert.ok(full < ensures / 4, `${full} refusals`);
          const used = gpu.stats.since(gpuStats);
          assert.ok(used.flushes <= ensures, "at most one flush per ensure");
          assert.equal(used.submits, readbacks, "the pool submits no command buffers");
        },
      );
    },
  );
}

gpuTest(
  "pool: LRU evicts the least recently used, touch refreshes, pinned and requested experts stay",
  async (gpu) => {
    await withPool(gpu, { budgetBytes: 3 * SLOT_BYTES + 5 }, async (pool, f) => {
      assert.equal(pool.nSlots, 3);
      assert.deepEqual(pool.ensure(1, [0]), { uploaded: [0], evicted: [] });
      assert.deepEqual(pool.ensure(1, [1]), { uploaded: [1], evicted: [] });
      assert.deepEqual(pool.ensure(2, [2]), { uploaded: [2], evicted: [] });
      pool.touch(1, [0]); // order now 1:1, 2:2, 1:0
      assert.deepEqual(pool.ensure(3, [3]), { uploaded: [3], evicted: [[1, 1]] });
      // 2:2 is the LRU but pinned: 1:0 goes instead.
      assert.deepEqual(
        pool.ensure(3, [4], { pinned: new Set([expertKey(2, 2)]) }),
        { uploaded: [4], evicted: [[1, 0]] },
      );
      // Requested experts are never victims: 3:3 is LRU after 2:2 but requested.
      assert.deepEqual(pool.ensure(3, [3, 5]), { uploaded: [5], evicted: [[2, 2]] });
      assert.deepEqual(pool.ensure(3, [3, 4, 5]), { uploaded: [], evicted: [] });
      const s = pool.stats.snapshot();
      assert.equal(s.lookups, 11);
      assert.equal(s.hits, 5);
      assert.equal(s.misses, 6);
      assert.equal(s.evictions, 3);
      assert.equal(s.layers[3]!.hitRate, 4 / 7);
      checkInvariants(pool);
      await checkGpu(gpu, pool, f);
    });
  },
);

gpuTest(
  "pool: a request larger than the pool, or blocked by pins, is a clear error that changes nothing",
  async (gpu) => {
    await withPool(gpu, { budgetBytes: 0, minSlots: 3 }, async (pool, f) => {
      assert.equal(pool.nSlots, 3);
      pool.ensure(1, [0, 1, 2]);
      const before = pool.residencyTable();
      const stats = pool.stats.snapshot();
      assert.throws(
        () => pool.ensure(2, [0, 1, 2, 3]),
        (e: unknown) =>
          e instanceof ExpertPoolFullError &&
          /layer 2 needs 4 distinct experts at once but the pool has 3 slots/.test(e.message) &&
          /compute the layer in expert groups of at most 3/.test(e.message),
      );
      assert.throws(
        () => pool.ensure(2, [0, 1], { pinned: new Set(["1:0", "1:1"]) }),
        /2 experts to upload but only 1 of 3 slots are free or evictable/,
      );
      assert.deepEqual(pool.residencyTable(), before);
      assert.deepEqual(pool.stats.snapshot().lookups, stats.lookups);
      assert.throws(() => pool.ensure(0, [0]), /layer 0 has no routed experts/);
      assert.throws(() => pool.ensure(1, [7]), /expert 7 is out of range \[0, 7\)/);
      // Duplicates count once.
      assert.deepEqual(pool.ensure(2, [5, 5, 5]), { uploaded: [5], evicted: [[1, 0]] });
      checkInvariants(pool);
      await checkGpu(gpu, pool, f);
    });
  },
);

gpuTest(
  "pool: unreadable experts raise ExpertReadError, change nothing, and the pool keeps serving others",
  async (gpu) => {
    await withPool(gpu, { budgetBytes: 0, minSlots: 3 }, async (pool, f) => {
      pool.ensure(3, [0, 1]); // maps shard 2
      const size = (await Deno.stat(f.shards[1]!)).size;
      await Deno.truncate(f.shards[1]!, size - 64); // cuts layer 3 expert 6's bias
      const before = pool.residencyTable();
      const err = (() => {
        try {
          pool.ensure(3, [2, 6]);
        } catch (e) {
          return e;
        }
      })();
      assert.ok(err instanceof ExpertReadError, String(err));
      assert.deepEqual([err.file, err.layer, err.expert], [f.shards[1], 3, 6]);
      assert.deepEqual(pool.residencyTable(), before, "nothing evicted or uploaded");
      assert.equal(pool.stats.readErrors, 1);
      assert.deepEqual(pool.ensure(3, [2, 5]), { uploaded: [2, 5], evicted: [[3, 0]] });
      const pre = pool.prefetch(3, [6, 4]);
      assert.deepEqual(pre.uploaded, [4]);
      assert.deepEqual(pre.failed.map((x) => x.expert), [6]);
      checkInvariants(pool);
      await checkGpu(gpu, pool, f);
    });
  },
);

gpuTest(
  "pool: a deleted shard fails its experts only; the other shard's experts still load",
  async (gpu) => {
    const f = await makeFixture(5);
    const src = new GgufExpertSource(readGgufModel(f.shards[0]!));
    const pool = new ExpertPool(gpu, src, { budgetBytes: 0, minSlots: 2 });
    try {
      await Deno.remove(f.shards[1]!);
      assert.throws(() => pool.ensure(3, [1]), (e: unknown) => {
        assert.ok(e instanceof ExpertReadError);
        assert.deepEqual([e.file, e.layer, e.expert], [f.shards[1], 3, 1]);
        assert.match(e.message, /m-00002-of-00002\.gguf/);
        return true;
      });
      assert.deepEqual(pool.ensure(1, [1, 6]).uploaded, [1, 6]);
      checkInvariants(pool);
      await checkGpu(gpu, pool, f);
    } finally {
      pool.destroy();
      src.close();
      await Deno.remove(f.dir, { recursive: true });
    }
  },
);

gpuTest(
  "pool: prefetch is best effort and counted apart; preloadAll fills an all-resident pool",
  async (gpu) => {
    await withPool(gpu, { budgetBytes: 4 * SLOT_BYTES, minSlots: 2 }, async (pool, f) => {
      pool.ensure(1, [0, 1]);
      // 4 slots, 2 used: two free, then at most one eviction (1:0 is pinned, 1:1 is LRU-free).
      const r = pool.prefetch(2, [0, 1, 2, 3], { maxEvict: 1, pinned: new Set(["1:0"]) });
      assert.deepEqual(r.uploaded, [0, 1, 2]);
      assert.deepEqual(r.evicted, [[1, 1]]);
      assert.deepEqual(pool.residentExperts(1), [0]);
      // Nothing evictable: every slot is a prefetch request or pinned.
      assert.deepEqual(
        pool.prefetch(2, [0, 1, 2, 3], { pinned: new Set(["1:0"]) }).uploaded,
        [],
      );
      pool.touch(2, [0]); // a prefetched expert used
      assert.deepEqual(lruKeys(pool), ["1:0", "2:1", "2:2", "2:0"]);
      assert.deepEqual(pool.ensure(3, [0, 1]).evicted, [[1, 0], [2, 1]]);
      const s = pool.stats.snapshot();
      assert.equal(s.prefetchUploads, 3);
      assert.equal(s.prefetchHits, 1);
      assert.equal(s.lookups, 5);
      assert.equal(s.misses, 4);
      assert.equal(s.prefetchUnused, 1);
      checkInvariants(pool);
      await checkGpu(gpu, pool, f);
    });
    // slots round the Q8_0 down part up to 4 bytes: the file's bytes are 2 short of 21 slots
    await withPool(gpu, { budgetBytes: TOTAL_BYTES }, (pool) => {
      assert.equal(pool.nSlots, 20);
      assert.ok(!pool.allResident);
      assert.equal(pool.preloadAll(), 20, "preloading fills the budget, no more");
      assert.ok(pool.residentBytes <= pool.budgetBytes);
      assert.deepEqual(pool.residentExperts(3), [0, 1, 2, 3, 4, 5]);
      checkInvariants(pool);
      return Promise.resolve();
    });
    await withPool(gpu, { budgetBytes: 21 * SLOT_BYTES }, async (pool, f) => {
      assert.ok(pool.allResident);
      assert.equal(pool.preloadAll(), 21);
      assert.equal(pool.residentBytes, pool.allocatedBytes);
      assert.deepEqual(pool.ensure(2, [6, 3]), { uploaded: [], evicted: [] });
      assert.equal(pool.stats.snapshot().hitRate, 1);
      checkInvariants(pool);
      await checkGpu(gpu, pool, f);
    });
  },
);

gpuTest(
  "pool: arenas expose GpuWeight stacks per part with their idBase, within the binding limit",
  async (gpu) => {
    await withPool(
      gpu,
      { budgetBytes: 20 * SLOT_BYTES, maxSlotsPerArena: 8 },
      (pool) => {
        // streaming (20 slots for 21 experts): every layer sees every arena
        const arenas = pool.arenasFor(2);
        assert.deepEqual(arenas.map((a) => [a.idBase, a.nSlots]), [[0, 8], [8, 8], [16, 4]]);
        for (const a of arenas) {
          assert.deepEqual(Object.keys(a.weights), ["gate", "up", "down.bias", "down"]);
          const down = a.weights.down!;
          assert.equal(down.type.name, "Q8_0");
          assert.deepEqual([down.nCols, down.nRows, down.nMats, down.matStride, down.rowBytes], [
            32,
            5,
            a.nSlots,
            SLOT_BYTES,
            34,
          ]);
          // parts one after the other in a slot: gate, up, down.bias, down
          assert.deepEqual(a.parts.map((w) => w.chunks[0]!.byteOffset), [0, 768, 1536, 1664]);
          assert.equal(down.chunks[0]!.buffer, a.buffer);
          assert.equal(a.buffer.size, a.nSlots * SLOT_BYTES);
          assert.ok(a.buffer.size <= gpu.limits.maxStorageBufferBindingSize);
          const bias = a.weights["down.bias"]!;
          assert.deepEqual([bias.nCols, bias.nRows, bias.matStride], [32, 1, SLOT_BYTES]);
        }
        return Promise.resolve();
      },
    );
  },
);

gpuTest(
  "pool: when every expert fits, each layer's experts sit in arenas of their own",
  async (gpu) => {
    await withPool(gpu, { budgetBytes: 21 * SLOT_BYTES, maxSlotsPerArena: 4 }, (pool) => {
      assert.ok(pool.allFit);
      // layers 1, 2, 3 of 7 experts each: slots 0-6, 7-13, 14-20, arenas of at most 4
      assert.deepEqual(
        LAYERS.map((l) => pool.arenasFor(l).map((a) => [a.idBase, a.nSlots])),
        [[[0, 4], [4, 3]], [[7, 4], [11, 3]], [[14, 4], [18, 3]]],
      );
      assert.equal(pool.preloadAll(), 21);
      for (const l of LAYERS) {
        const arenas = pool.arenasFor(l);
        const first = arenas[0]!.idBase;
        const end = arenas.at(-1)!.idBase + arenas.at(-1)!.nSlots;
        const table = pool.residencyTable();
        for (let e = 0; e < 7; e++) {
          const slot = table[l * pool.nExpert + e]!;
          assert.ok(slot >= first && slot < end, `layer ${l} expert ${e} in slot ${slot}`);
        }
      }
      checkInvariants(pool);
      return Promise.resolve();
    });
  },
);

gpuTest("pool: residency writes are batched: one flush and few writes per ensure", async (gpu) => {
  await withPool(gpu, { budgetBytes: 0, minSlots: 4 }, (pool) => {
    pool.ensure(1, [0, 1, 2, 3]);
    const before = gpu.stats.snapshot();
    pool.ensure(3, [3, 4, 5, 6], { flush: false });
    pool.prefetch(2, [0], { flush: false });
    assert.equal(gpu.stats.since(before).flushes, 0);
    pool.flush();
    const used = gpu.stats.since(before);
    assert.equal(used.flushes, 1);
    // 5 experts × 4 parts + table runs (layer 3's row; layers 1 and 2 rows).
    assert.ok(used.bytesUploaded < 5 * SLOT_BYTES + 3 * N_EXPERT * 4 * 2);
    return Promise.resolve();
  });
});

gpuTest(
  "pool: mul_mat_id over the arenas (one dispatch per arena, idBase) computes each routed expert's product",
  async (gpu) => {
    // One layer, 7 experts: gate F32 [32, 6] and down Q8_0 [32, 5] (170-byte
    // slices at a 172-byte stride in the slots), valid weights this time.
    const dir = await Deno.makeTempDir({ prefix: "od-moe-pool-mm-" });
    const rng = new Rng(3);
    const random = () => rng.next();
    const gate = randomWeightBytes(GgmlType.F32, 32 * 6 * N_EXPERT, random);
    const down = randomWeightBytes(GgmlType.Q8_0, 32 * 5 * N_EXPERT, random);
    await writeGgufFile(`${dir}/m.gguf`, {
      metadata: [["general.architecture", gv.str("qwen3moe")]],
      tensors: [
        { name: "blk.0.ffn_gate_exps.weight", type: GgmlType.F32, shape: [32, 6, 7], data: gate },
        { name: "blk.0.ffn_down_exps.weight", type: GgmlType.Q8_0, shape: [32, 5, 7], data: down },
      ],
    });
    const src = GgufExpertSource.open(`${dir}/m.gguf`);
    const pool = new ExpertPool(gpu, src, { budgetBytes: 0, minSlots: 4, maxSlotsPerArena: 3 });
    try {
      pool.ensure(0, [0, 2, 4, 6]);
      pool.ensure(0, [1, 3, 5, 6]); // recycles slots: the stale bytes must not be read
      const routed = [5, 1, 6, 3];
      const slots = routed.map((e) => pool.slotOf(0, e));
      assert.deepEqual(pool.arenasFor(0).map((a) => [a.idBase, a.nSlots]), [[0, 3], [3, 1]]);
      assert.ok(new Set(slots.map((s) => s < 3)).size === 2, "both arenas used");
      const x = Float32Array.from({ length: 32 }, () => rng.normal());
      const xb = createBuffer(gpu, { label: "x", data: x });
      const ids = createBuffer(gpu, { label: "ids", data: new Uint32Array(slots) });
      const stepWords = new Uint32Array(STEP.length);
      stepWords[STEP.nTokens] = stepWords[STEP.nKv] = 1;
      const step = createBuffer(gpu, { label: "step", data: stepWords });
      const outs: GPUBuffer[] = [];
      const ops = [];
      for (const [name, nRows] of [["gate", 6], ["down", 5]] as const) {
        const y = createBuffer(gpu, { label: `y.${name}`, size: 4 * 4 * nRows });
        outs.push(y);
        for (const arena of pool.arenasFor(0)) {
          ops.push(
            ...await prepareMatmulId(gpu, {
              w: arena.weights[name]!,
              ids: { buffer: ids, offset: 0 },
              idBase: arena.idBase,
              nUsed: 4,
              x: { buffer: xb, offset: 0, stride: 32 },
              xPerSlot: false,
              y: { buffer: y, offset: 0, stride: 4 * nRows },
              step,
              maxTokens: 1,
              label: `mm.${name}.${arena.index}`,
            }),
          );
        }
      }
      const enc = gpu.device.createCommandEncoder();
      recordOps(enc, ops, 1);
      gpu.submit(enc);
      const [yGate, yDown] = (await readback(gpu, outs)).map((b) => new Float32Array(b));
      for (
        const [name, nRows, bytes, type, got] of [
          ["gate", 6, 768, GgmlType.F32, yGate!],
          ["down", 5, 170, GgmlType.Q8_0, yDown!],
        ] as const
      ) {
        routed.forEach((e, s) => {
          const stack = name === "gate" ? gate : down;
          const w = dequantize(type, stack.subarray(e * bytes, (e + 1) * bytes), 32 * nRows);
          for (let r = 0; r < nRows; r++) {
            let want = 0;
            for (let c = 0; c < 32; c++) want += w[r * 32 + c]! * x[c]!;
            const g = got[s * nRows + r]!;
            assert.ok(
              Math.abs(g - want) <= 1e-4 * (1 + Math.abs(want)),
              `${name} e${e} r${r}: ${g} vs ${want}`,
            );
          }
        });
      }
    } finally {
      pool.destroy();
      src.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
);

/** An in-memory source, as the converter's per-expert files would provide. */
class ArraySource implements ExpertSource {
  readonly layers: ExpertLayerShape[] = [];
  readonly data = new Map<string, Uint8Array[]>();
  constructor(shapes: { layer: number; nExpert: number; rows: number }[], rng: Rng) {
    for (const { layer, nExpert, rows } of shapes) {
      const f32 = requireGgmlType(GgmlType.F32);
      const part = (role: string, shape: number[]) => ({
        name: `blk.${layer}.ffn_${role}_exps.weight`,
        role,
        kind: "weight",
        type: f32,
        sliceShape: shape,
        sliceBytes: 4 * shape[0]! * shape[1]!,
      });
      const tensors = [part("gate", [8, rows]), part("down", [rows, 8])];
      this.layers.push({ layer, nExpert, tensors });
      for (let e = 0; e < nExpert; e++) {
        this.data.set(
          expertKey(layer, e),
          tensors.map((t) => Uint8Array.from({ length: t.sliceBytes }, () => rng.int(256))),
        );
      }
    }
  }
  expertParts(layer: number, expert: number): Uint8Array[] {
    return this.data.get(expertKey(layer, expert))!;
  }
  close(): void {}
  [Symbol.dispose](): void {}
}

gpuTest(
  "pool: layers with different expert shapes share one set of slots within one budget",
  async (gpu) => {
    const rng = new Rng(9);
    // Layer 0: 8 experts of 2 × 128 bytes; layer 2: 4 experts of 2 × 64 bytes.
    const src = new ArraySource([
      { layer: 0, nExpert: 8, rows: 4 },
      { layer: 2, nExpert: 4, rows: 2 },
    ], rng);
    const total = 8 * 256 + 4 * 128;
    const pool = new ExpertPool(gpu, src, { budgetBytes: total / 2, minSlots: 2 });
    try {
      assert.equal(pool.groups.length, 2);
      assert.equal(pool.nLayer, 3);
      assert.equal(pool.nExpert, 8);
      const [a, b] = pool.groups;
      assert.deepEqual([a!.layers, a!.usedSlotBytes, a!.partOffsets], [[0], 256, [0, 128]]);
      assert.deepEqual([b!.layers, b!.usedSlotBytes, b!.partOffsets], [[2], 128, [0, 64]]);
      // one slot size, the larger expert's: 5 slots in 1280 bytes, shared by both layers
      assert.deepEqual([pool.slotBytes, pool.nSlots, pool.allocatedBytes], [256, 5, 1280]);
      assert.equal(pool.minBudgetBytes, 512);
      assert.deepEqual(a!.arenas.map((x) => x.buffer), b!.arenas.map((x) => x.buffer));
      assert.throws(() => pool.arenasFor(1), /layer 1 has no routed experts/);
      // layer 0 fills every slot; layer 2 then takes 4 of them
      pool.ensure(0, [0, 1, 2, 3, 4]);
      assert.deepEqual(pool.ensure(2, [0, 1, 2, 3]).evicted.length, 4);
      assert.deepEqual(pool.residentExperts(0).length, 1);
      for (let step = 0; step < 30; step++) {
        const layer = rng.next() < 0.5 ? 0 : 2;
        const n = layer === 0 ? 8 : 4;
        pool.ensure(layer, [rng.int(n), rng.int(n)]);
        assert.ok(pool.residentBytes <= pool.budgetBytes);
        assert.ok(pool.peakBytes <= pool.budgetBytes);
      }
      const s = pool.stats.snapshot();
      assert.equal(s.hits + s.misses, s.lookups);
      assert.equal(s.bytesUploaded, s.layers[0]!.misses * 256 + s.layers[2]!.misses * 128);
      assert.equal(s.budgetBytes, total / 2);
      const got = await readback(gpu, [pool.residencyBuffer, ...pool.buffers]);
      const table = new Int32Array(got[0]!);
      assert.deepEqual(table, pool.residencyTable());
      const bytes = new Uint8Array(got[1]!);
      for (const g of pool.groups) {
        for (const layer of g.layers) {
          for (const e of pool.residentExperts(layer)) {
            const slot = table[layer * 8 + e]!;
            assert.ok(slot >= 0 && slot < pool.nSlots);
            src.expertParts(layer, e).forEach((want, p) => {
              const off = slot * pool.slotBytes + g.partOffsets[p]!;
              assert.deepEqual(bytes.subarray(off, off + want.length), want, `${layer}:${e}`);
            });
          }
        }
      }
    } finally {
      pool.destroy();
    }
    // a budget that holds every expert at its own size: one slot each, nothing padded
    const all = new ExpertPool(gpu, src, { budgetBytes: total, minSlots: 2 });
    try {
      assert.ok(all.allFit && all.allResident);
      assert.deepEqual([all.nSlots, all.allocatedBytes, all.slotsFor(0), all.slotsFor(2)], [
        12,
        total,
        8,
        4,
      ]);
      assert.equal(all.preloadAll(), 12);
      assert.equal(all.residentBytes, total);
      const [a, b] = all.groups;
      assert.deepEqual(a!.arenas.map((x) => [x.idBase, x.nSlots]), [[0, 8]]);
      assert.deepEqual(b!.arenas.map((x) => [x.idBase, x.nSlots]), [[8, 4]]);
      assert.equal(b!.arenas[0]!.weights.gate!.matStride, 128);
      assert.deepEqual(all.ensure(2, [0, 3]), { uploaded: [], evicted: [] });
      const got = await readback(gpu, [all.residencyBuffer, ...all.buffers]);
      const table = new Int32Array(got[0]!);
      for (const g of all.groups) {
        for (const layer of g.layers) {
          for (let e = 0; e < (layer === 0 ? 8 : 4); e++) {
            const { arena, byteOffset } = all.slotLocation(table[layer * 8 + e]!);
            const bytes = new Uint8Array(got[1 + arena]!);
            src.expertParts(layer, e).forEach((want, p) => {
              const off = byteOffset + g.partOffsets[p]!;
              assert.deepEqual(bytes.subarray(off, off + want.length), want, `${layer}:${e}`);
            });
          }
        }
      }
    } finally {
      all.destroy();
    }
  },
);

gpuTest("pool: a budget below one token's experts is raised to that minimum", async (gpu) => {
  await withPool(gpu, { budgetBytes: 2 * SLOT_BYTES, minSlots: 3 }, (pool) => {
    assert.ok(pool.budgetRaised);
    assert.deepEqual(
      [pool.requestedBudgetBytes, pool.minBudgetBytes, pool.budgetBytes, pool.nSlots],
      [2 * SLOT_BYTES, 3 * SLOT_BYTES, 3 * SLOT_BYTES, 3],
    );
    const s = pool.stats.snapshot();
    assert.deepEqual([s.requestedBudgetBytes, s.minBudgetBytes, s.budgetBytes], [
      2 * SLOT_BYTES,
      3 * SLOT_BYTES,
      3 * SLOT_BYTES,
    ]);
    return Promise.resolve();
  });
  await withPool(gpu, { budgetBytes: 5 * SLOT_BYTES, minSlots: 3 }, (pool) => {
    assert.ok(!pool.budgetRaised);
    assert.equal(pool.nSlots, 5);
    return Promise.resolve();
  });
  const f = await makeFixture();
  const src = new GgufExpertSource(readGgufModel(f.shards[0]!));
  try {
    assert.throws(
      () => new ExpertPool(gpu, src, { budgetBytes: 0, minSlots: 0 }),
      /minSlots must be an integer ≥ 1/,
    );
  } finally {
    src.close();
    await Deno.remove(f.dir, { recursive: true });
  }
});

gpuTest(
  "pool: listeners hear hits, loads, prefetches and evictions as they happen",
  async (gpu) => {
    await withPool(gpu, { budgetBytes: 0, minSlots: 2 }, (pool) => {
      const heard: string[] = [];
      const stop = pool.listen((e) => heard.push(`${e.kind} ${e.layer}:${e.expert}`));
      pool.ensure(1, [0, 1]);
      pool.ensure(1, [1, 2]); // 1 hit, 2 loaded into 0's slot
      pool.prefetch(2, [5], { maxEvict: 1 }); // evicts the least recent (1:1)
      assert.deepEqual(heard, [
        "load 1:0",
        "load 1:1",
        "hit 1:1",
        "evict 1:0",
        "load 1:2",
        "evict 1:1",
        "prefetch 2:5",
      ]);
      const s = pool.stats.snapshot();
      assert.equal(heard.filter((h) => h.startsWith("hit")).length, s.hits);
      assert.equal(heard.filter((h) => h.startsWith("load")).length, s.misses);
      stop();
      pool.ensure(2, [5]);
      assert.equal(heard.length, 7, "a removed listener hears nothing");
    });
  },
);
