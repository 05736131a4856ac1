/**
 * Prefetch and eviction: the predictive and least-stale policies' order, and on a generated
 * model with experts streaming — the same tokens with prefetch off, with the
 * gate lookahead and with a trained shadow model, under LRU, the
 * predictive and the least-stale policy; the pool within its budget; prefetch never evicting an
 * expert the current token still needs; statistics that add up; and fewer
 * stalls with prediction than without.
 */

import assert from "node:assert/strict";
import { gpuTest } from "../dev/gpu.ts";
import { type EvictionContext, LruPolicy } from "../src/experts/eviction.ts";
import {
  evictionPolicyFactory,
  LeastStalePolicy,
  PredictivePolicy,
} from "../src/experts/policy_predictive.ts";
import { loadModel } from "../src/model/model.ts";
import { generate } from "../src/generate/session.ts";
import { expertLayout } from "../src/experts/layout.ts";
import { readGgufModel } from "../src/gguf/reader.ts";
import { predictorDemoModel } from "../src/training/demo_model.ts";
import { collectRoutingData, syntheticPrompts } from "../src/training/collect.ts";
import { trainShadow } from "../src/training/trainer.ts";
import { saveShadow } from "../src/predictor/shadow.ts";

/** Slots holding (layer, expert) pairs. */
function context(slots: [number, number][]): EvictionContext {
  return {
    nSlots: slots.length,
    layerOf: (s) => slots[s]![0],
    expertOf: (s) => slots[s]![1],
  };
}

Deno.test("predictive policy: keeps predicted, evicts the stalest, then the furthest layer, then LRU", () => {
  // 4 layers; slots 0..5
  const ctx = context([[0, 1], [1, 1], [2, 1], [3, 1], [1, 2], [2, 2]]);
  const p = new PredictivePolicy(ctx, 4);
  for (const s of [0, 1, 2, 3, 4, 5]) p.touch(s);
  const none = () => false;
  // between tokens (cursor 3): layer 3 is needed last
  assert.equal(p.victim(none), 3);
  // repairing layer 1: layer 1's other experts are needed only by the next token
  p.setCursor(1);
  assert.equal(p.distance(2), 0);
  assert.equal(p.distance(1), 3);
  assert.equal(p.victim(none), 1, "layer 1, least recently used of its two");
  assert.equal(p.victim((s) => s === 1 || s === 4), 0, "then layer 0");
  p.setPredicted(new Set(["1:1", "1:2", "0:1"]));
  assert.equal(p.victim(none), 3, "predicted experts are kept while others remain");
  p.setPredicted(new Set());
  // a token later, slot 5 (layer 2) was used again; slot 2 (layer 2) was not
  p.nextToken();
  p.touch(5);
  p.nextToken();
  p.setCursor(0);
  assert.equal(p.staleness(5), 0, "used by the last visit of layer 2");
  assert.equal(p.staleness(2), 1, "one visit of layer 2 without it");
  assert.equal(p.victim((s) => s !== 2 && s !== 5), 2, "the stalest goes first");
  assert.equal(p.victim(() => true), -1);
});

Deno.test("least-stale policy: evicts the expert whose layer went unused longest, not LRU's nor the predictive policy's choice", () => {
  // 4 layers; slot 0 holds layer 3's expert 1, slot 1 layer 2's, slot 2 layer 1's
  const slots: [number, number][] = [[3, 1], [2, 1], [1, 1]];
  const ls = new LeastStalePolicy(context(slots), 4);
  const pr = new PredictivePolicy(context(slots), 4);
  const lru = new LruPolicy(slots.length);
  const each = (f: (p: LeastStalePolicy | PredictivePolicy) => void) => [ls, pr].forEach(f);
  // token 0: while layer 0 computes, layer 3's expert is prefetched (slot 0, used first);
  // layers 1 and 2 then use slots 2 and 1
  each((p) => p.setCursor(0));
  for (const [layer, slot] of [[0, 0], [1, 2], [2, 1]] as const) {
    each((p) => {
      p.setCursor(layer);
      p.touch(slot);
    });
    lru.touch(slot);
  }
  // token 1 is at layer 2 and used neither slot 2 (layer 1) nor slot 1 (layer 2);
  // layer 3 has not been visited since slot 0 was filled
  each((p) => p.nextToken());
  each((p) => p.setCursor(2));
  assert.deepEqual([0, 1, 2].map((s) => ls.staleness(s)), [0, 1, 1]);
  const none = () => false;
  assert.equal(lru.victim(none), 0, "LRU evicts the prefetched expert layer 3 is about to use");
  assert.equal(
    ls.victim(none),
    2,
    "least-stale: slots 1 and 2 are stalest, slot 2 used less recently",
  );
  assert.equal(ls.victim((s) => s === 2), 1);
  // the predictive policy breaks the tie by the distance to the next visit (layer 2 is furthest)
  assert.equal(pr.victim(none), 1);
  // predictions do not move the least-stale policy; they do move the predictive one
  each((p) => p.setPredicted(new Set(["1:1", "2:1"])));
  assert.equal(ls.victim(none), 2);
  assert.equal(pr.victim(none), 0);
  assert.equal(ls.victim(() => true), -1);
  // the engine's option names
  assert.ok(evictionPolicyFactory("least-stale", 4)(context(slots)) instanceof LeastStalePolicy);
  assert.throws(
    () => evictionPolicyFactory("mru" as "lru", 4),
    /evictionPolicy must be one of lru, predictive, least-stale, got "mru"/,
  );
});

function largestExpert(path: string): number {
  return Math.max(...expertLayout(readGgufModel(path)).map((l) => l.bytesPerExpert));
}

function expertBytes(path: string): number {
  return expertLayout(readGgufModel(path)).reduce((s, l) => s + l.nExpert * l.bytesPerExpert, 0);
}

gpuTest({
  name:
    "prefetch: same tokens off / lookahead / shadow × LRU / predictive / least-stale, within budget, pinned experts kept, fewer stalls",
  sanitizeResources: false,
  async fn(g) {
    const path = await predictorDemoModel();
    const dir = await Deno.makeTempDir();
    try {
      // a quickly trained shadow model: enough to predict, not to be the best
      const shadowPath = `${dir}/shadow.safetensors`;
      {
        const m = await loadModel({ model: path, gpu: g, nCtx: 128, maxBatch: 64, cacheSizeGB: 1 });
        try {
          const data = await collectRoutingData(
            m,
            syntheticPrompts(40, 64, m.config.nVocab, 21),
            { numSamples: 1000, newTokens: 0 },
          );
          const r = await trainShadow(g, data, { epochs: 2, batchSize: 64, lr: 5e-4 });
          await saveShadow(shadowPath, r.weights);
        } finally {
          m.close();
        }
      }
      const total = expertBytes(path);
      const prompt = [5, 17, 99, 230, 41, 7, 300, 12];
      const runs: { name: string; tokens: number[]; stalls: number }[] = [];
      for (const frac of [0.1, 0.25]) {
        for (const policy of ["lru", "predictive", "least-stale"] as const) {
          for (const predictor of ["off", "lookahead", "shadow"] as const) {
            const name = `${frac * 100}% ${policy} ${predictor}`;
            const model = await loadModel({
              model: path,
              gpu: g,
              nCtx: 128,
              maxBatch: 4,
              cacheSizeGB: (frac * total) / 2 ** 30,
              evictionPolicy: policy,
              enablePrefetch: predictor !== "off",
              predictorPath: predictor === "shadow" ? shadowPath : undefined,
            });
            try {
              const pool = model.pool;
              const limit = Math.max(
                Math.floor(frac * total),
                model.config.nExpertUsed * largestExpert(path),
              );
              // every prefetch keeps what it was told to keep, and the pool within its bytes
              const prefetch = pool.prefetch.bind(pool);
              let calls = 0;
              pool.prefetch = (layer, experts, o = {}) => {
                const r = prefetch(layer, experts, o);
                calls++;
                for (const key of o.pinned ?? []) {
                  const [l, e] = key.split(":").map(Number);
                  assert.ok(pool.slotOf(l!, e!) >= 0, `${name}: pinned ${key} was evicted`);
                }
                assert.ok(pool.residentBytes <= limit, `${name}: ${pool.residentBytes} > ${limit}`);
                return r;
              };
              const r = await generate(model, prompt, { maxTokens: 24 });
              const s = model.expertStats.snapshot();
              const p = model.prefetchStats!;
              assert.ok(s.peakBytes <= limit, `${name}: peak ${s.peakBytes} over ${limit}`);
              assert.equal(s.hits + s.misses, s.lookups, `${name}: hits + misses = lookups`);
              assert.equal(p.predictor, predictor);
              assert.equal(p.evictionPolicy, policy);
              assert.equal(p.tokens, r.tokens.length - 1, `${name}: every decoded token counted`);
              if (predictor === "off") {
                assert.equal(p.prefetchUploads, 0);
                assert.equal(calls, 0);
              } else {
                assert.ok(p.prefetchUploads > 0, `${name}: nothing prefetched`);
                assert.ok(p.prefetchAccuracy > 0 && p.prefetchAccuracy <= 1, `${name}: accuracy`);
                assert.ok(p.recallByDistance[0]! > 0.3, `${name}: recall ${p.recallByDistance[0]}`);
                assert.ok(p.prefetchHits + p.prefetchUnused <= p.prefetchUploads);
              }
              runs.push({ name, tokens: r.tokens, stalls: p.stalls });
            } finally {
              model.close();
            }
          }
        }
      }
      for (const run of runs) {
        assert.deepEqual(run.tokens, runs[0]!.tokens, `${run.name}: tokens differ`);
      }
      const stalls = (n: string) => runs.find((r) => r.name === n)!.stalls;
      console.log(runs.map((r) => `${r.name}: ${r.stalls} stalls`).join("; "));
      for (const frac of [10, 25]) {
        assert.ok(
          stalls(`${frac}% predictive lookahead`) < stalls(`${frac}% lru off`),
          `${frac}%: prediction and the predictive policy should stall less than LRU alone`,
        );
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
