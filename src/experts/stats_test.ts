import assert from "node:assert/strict";
import { ExpertStats, LatencyRing } from "./stats.ts";

Deno.test("stats: latency percentiles are nearest-rank over the most recent samples", () => {
  const ring = new LatencyRing(100);
  assert.deepEqual(ring.summary(), { count: 0, p50Ms: 0, p95Ms: 0, meanMs: 0, maxMs: 0 });
  for (let i = 100; i >= 1; i--) ring.add(i);
  assert.deepEqual(ring.summary(), { count: 100, p50Ms: 50, p95Ms: 95, meanMs: 50.5, maxMs: 100 });
  for (let i = 0; i < 50; i++) ring.add(1000); // the oldest 50 (100…51) drop out
  const s = ring.summary();
  assert.equal(s.count, 100);
  assert.equal(s.p50Ms, 50);
  assert.equal(s.p95Ms, 1000);
  assert.equal(s.maxMs, 1000);
});

Deno.test("stats: hits, misses and uploads add up, per layer and overall; cold and warm are apart", () => {
  const stats = new ExpertStats(3);
  stats.recordMiss(1, 1000, 5, true);
  stats.recordMiss(1, 1000, 1, false);
  stats.recordMiss(2, 1000, 2, undefined);
  stats.recordHit(1);
  stats.recordHit(2);
  stats.recordPrefetch(1000, 3, true);
  stats.recordEviction(true);
  stats.recordEviction();
  stats.recordPrefetchHit();
  stats.recordToken({ syncs: 2, misses: 3 });
  stats.recordToken({ syncs: 1, misses: 0 });
  stats.setMemory({ residentBytes: 500, allocatedBytes: 800, budgetBytes: 600 });
  stats.setMemory({ residentBytes: 300, allocatedBytes: 800, budgetBytes: 600 });
  const s = stats.snapshot();
  assert.equal(s.lookups, 5);
  assert.equal(s.hits + s.misses, s.lookups);
  assert.equal(s.hitRate, 2 / 5);
  assert.equal(s.bytesUploaded, 3000);
  assert.equal(s.prefetchBytes, 1000);
  assert.deepEqual(s.layers.map((l) => [l.lookups, l.hits, l.misses]), [[0, 0, 0], [3, 1, 2], [
    2,
    1,
    1,
  ]]);
  assert.equal(s.layers[1]!.hitRate, 1 / 3);
  assert.deepEqual([s.evictions, s.prefetchUnused, s.prefetchHits], [2, 1, 1]);
  assert.equal(s.uploadLatency.cold.count, 2);
  assert.equal(s.uploadLatency.cold.maxMs, 5);
  assert.equal(s.uploadLatency.warm.count, 1);
  assert.equal(s.uploadLatency.all.count, 4);
  assert.deepEqual([s.tokens, s.syncsPerToken, s.missesPerToken, s.bytesPerToken], [
    2,
    1.5,
    1.5,
    2000,
  ]);
  assert.deepEqual([s.residentBytes, s.peakBytes, s.allocatedBytes], [300, 500, 800]);
  assert.doesNotThrow(() => JSON.stringify(s));
  stats.reset();
  const r = stats.snapshot();
  assert.deepEqual([r.lookups, r.tokens, r.uploadLatency.all.count, r.peakBytes], [0, 0, 0, 300]);
});
