// The experts feed's throttling, coalescing and slow-client handling, on a
// CPU stand-in for the pool (an LRU over a few slots with the real
// ExpertStats): no GPU, so it can hammer the feed with thousands of events.
// tests/experts_feed_test.ts runs the feed over HTTP on the real pool.

import assert from "node:assert/strict";
import { ExpertStats } from "../experts/stats.ts";
import type { PoolEvent } from "../experts/pool.ts";
import { parseSse, readSse, type SseEvent } from "./sse.ts";
import {
  CHANGE,
  ExpertsFeed,
  type ExpertsFeedPool,
  type ExpertsSnapshotJson,
  MAX_QUEUED_FRAMES,
} from "./experts_feed.ts";

/** `nSlots` LRU slots over `nLayer` × `nExpert` experts of `bytes` each. */
class CpuPool implements ExpertsFeedPool {
  readonly stats: ExpertStats;
  readonly source: { layers: { layer: number; nExpert: number }[] };
  readonly budgetBytes = 0;
  readonly allResident = false;
  readonly #lru: string[] = [];
  readonly #listeners = new Set<(e: PoolEvent) => void>();

  constructor(
    readonly nLayer: number,
    readonly nExpert: number,
    readonly nSlots: number,
    readonly bytes = 1000,
  ) {
    this.stats = new ExpertStats(nLayer);
    this.source = {
      layers: Array.from({ length: nLayer }, (_, layer) => ({ layer, nExpert })),
    };
  }

  get listeners(): number {
    return this.#listeners.size;
  }
  get residentBytes(): number {
    return this.#lru.length * this.bytes;
  }
  get limitBytes(): number {
    return this.nSlots * this.bytes;
  }
  get allocatedBytes(): number {
    return this.limitBytes;
  }
  residentExperts(layer: number): number[] {
    return this.#lru.filter((k) => k.startsWith(`${layer}:`)).map((k) => Number(k.split(":")[1]))
      .sort((a, b) => a - b);
  }
  slotOf(layer: number, expert: number): number {
    return this.#lru.indexOf(`${layer}:${expert}`);
  }
  listen(l: (e: PoolEvent) => void): () => void {
    this.#listeners.add(l);
    return () => this.#listeners.delete(l);
  }
  #emit(kind: PoolEvent["kind"], layer: number, expert: number): void {
    for (const l of this.#listeners) l({ kind, layer, expert });
  }
  /** Looks an expert up: a hit, or a miss that loads it (evicting the least recent). */
  use(layer: number, expert: number): void {
    const k = `${layer}:${expert}`;
    const i = this.#lru.indexOf(k);
    if (i >= 0) {
      this.#lru.splice(i, 1);
      this.#lru.push(k);
      this.stats.recordHit(layer);
      this.#emit("hit", layer, expert);
      return;
    }
    if (this.#lru.length === this.nSlots) {
      const [l, e] = this.#lru.shift()!.split(":").map(Number);
      this.stats.recordEviction();
      this.#emit("evict", l!, e!);
    }
    this.#lru.push(k);
    this.stats.recordMiss(layer, this.bytes, 0, undefined);
    this.#emit("load", layer, expert);
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function collect(
  body: ReadableStream<Uint8Array>,
  into: SseEvent[],
): Promise<void> {
  try {
    for await (const e of readSse(body)) into.push(e);
  } catch {
    // cancelled
  }
}

/** Replays frames over the snapshots they follow: the residency the client would show. */
function replay(events: SseEvent[]): number[][] {
  let resident: Set<number>[] = [];
  for (const e of events) {
    const body = JSON.parse(e.data);
    if (e.event === "snapshot") {
      resident = (body as ExpertsSnapshotJson).resident.map((ids) => new Set(ids));
    } else {
      for (const [l, x, flags] of body.changes as [number, number, number][]) {
        if (flags & CHANGE.resident) resident[l]!.add(x);
        else resident[l]!.delete(x);
      }
    }
  }
  return resident.map((s) => [...s].sort((a, b) => a - b));
}

Deno.test("experts feed: a burst of events becomes few frames, one entry per expert", async () => {
  const pool = new CpuPool(4, 16, 12);
  const feed = new ExpertsFeed({ pool, prefetchStats: undefined }, { intervalMs: 50 });
  const events: SseEvent[] = [];
  const res = feed.subscribe();
  const reading = collect(res.body!, events);
  assert.equal(pool.listeners, 1, "listening while subscribed");
  let x = 7;
  const t0 = performance.now();
  // 20 000 lookups in bursts over ~300 ms
  for (let burst = 0; burst < 20; burst++) {
    for (let i = 0; i < 1000; i++) {
      x = (x * 1103515245 + 12345) % 2 ** 31;
      pool.use(x % 4, (x >> 8) % 16);
    }
    await sleep(15);
  }
  await sleep(120);
  const ms = performance.now() - t0;
  feed.close();
  await reading;
  assert.equal(pool.listeners, 0, "not listening once nobody is subscribed");
  assert.equal(events[0]!.event, "snapshot");
  const frames = events.slice(1).map((e) => JSON.parse(e.data));
  assert.ok(frames.length >= 2, `${frames.length} frames`);
  assert.ok(frames.length <= Math.ceil(ms / 50) + 1, `${frames.length} frames in ${ms} ms`);
  for (const f of frames) {
    const keys = f.changes.map(([l, e]: number[]) => `${l}:${e}`);
    assert.equal(new Set(keys).size, keys.length, "one entry per expert per frame");
    assert.ok(keys.length <= 4 * 16);
  }
  assert.deepEqual(replay(events), [0, 1, 2, 3].map((l) => pool.residentExperts(l)));
  const last = frames.at(-1)!;
  assert.equal(last.stats.lookups, 20_000);
  assert.equal(last.stats.hits + last.stats.misses, 20_000);
  const loads = frames.reduce(
    (s: number, f: { rates: { loads_per_s: number }; interval_ms: number }) =>
      s + f.rates.loads_per_s * f.interval_ms / 1000,
    0,
  );
  assert.ok(Math.abs(loads - last.stats.misses) < 0.01 * last.stats.misses + 1);
});

Deno.test("experts feed: quiet pool, no frames; a slow client is skipped, then resynchronised", async () => {
  const pool = new CpuPool(2, 8, 4);
  const feed = new ExpertsFeed({ pool, prefetchStats: undefined }, { intervalMs: 20 });
  const res = feed.subscribe();
  const reader = res.body!.getReader();
  await sleep(100);
  // only the snapshot is queued: nothing happened, nothing sent
  const first = await reader.read();
  assert.match(new TextDecoder().decode(first.value), /^event: snapshot\n/);
  // now the client stops reading while the pool keeps changing
  for (let round = 0; round < 4 * MAX_QUEUED_FRAMES; round++) {
    pool.use(round % 2, round % 8);
    await sleep(25);
  }
  // it reads again: what was queued (no more than the cap), then a fresh snapshot
  const dec = new TextDecoder();
  let text = "";
  const until = performance.now() + 2000;
  while (!text.includes("event: snapshot") && performance.now() < until) {
    const r = await Promise.race([reader.read(), sleep(500).then(() => null)]);
    if (!r || r.done) break;
    text += dec.decode(r.value, { stream: true });
  }
  pool.use(0, 0);
  await sleep(100);
  feed.close();
  for (;;) {
    const r = await reader.read();
    if (r.done) break;
    text += dec.decode(r.value, { stream: true });
  }
  const events = parseSse(text);
  const resync = events.findIndex((e) => e.event === "snapshot");
  assert.ok(resync >= 0, "resynchronised with a snapshot");
  assert.ok(resync <= MAX_QUEUED_FRAMES, `${resync} frames were queued`);
  assert.ok(events.slice(0, resync).every((e) => e.event === "experts"));
  assert.ok(events.length > resync + 1, "frames again after the snapshot");
  assert.deepEqual(replay(events.slice(resync)), [0, 1].map((l) => pool.residentExperts(l)));
});
