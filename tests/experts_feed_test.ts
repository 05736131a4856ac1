/**
 * `GET /v1/experts` and `GET /v1/experts/events` over HTTP with the real
 * engine on the demo model at a quarter of its experts' bytes (experts stream): the
 * snapshot's shape and counters, frames that replayed over the snapshot
 * give the pool's residency, rates that add up to the counters, frames no
 * closer than the interval, shutdown with a stream open, 503 while
 * loading, the API key.
 */

import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { startServer } from "../src/server/app.ts";
import { ensureDemoModel } from "../src/server/demo.ts";
import { readSse, type SseEvent } from "../src/server/sse.ts";
import { Engine } from "../src/generate/engine.ts";
import { CHANGE, type ExpertsSnapshotJson } from "../src/server/experts_feed.ts";
import { readGgufModel } from "../src/gguf/reader.ts";
import { expertLayout } from "../src/experts/layout.ts";
import { gpuTest } from "../dev/gpu.ts";

const REPO = fileURLToPath(new URL("../", import.meta.url)).replace(/\/$/, "");

interface Frame {
  t_ms: number;
  interval_ms: number;
  changes: [number, number, number][];
  stats: ExpertsSnapshotJson["stats"];
  rates: { loads_per_s: number; upload_mb_per_s: number; lookups_per_s: number };
}

gpuTest({
  name: "experts feed: snapshot, throttled frames that replay to the pool's state",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn(_gpu, t) {
    const model = await ensureDemoModel({ cacheDir: `${REPO}/.cache/od-moe` });
    const layout = expertLayout(readGgufModel(model));
    // a quarter of the experts (8 of 32 slots): the budget is a hard cap, so the smallest (top-k
    // slots) would evict every layer's experts before the next token comes back to it
    const budget = layout.reduce((s, l) => s + l.nExpert * l.bytesPerExpert, 0) / 4;
    const engine = await Engine.load({ model, nCtx: 256, cacheSizeGB: budget / 2 ** 30 });
    const server = await startServer({ engine, port: 0 });
    const { url } = server;
    try {
      await t.step("GET /v1/experts: layers, resident experts, counters", async () => {
        const r = await fetch(`${url}/v1/experts`);
        assert.equal(r.status, 200);
        const s: ExpertsSnapshotJson = await r.json();
        assert.deepEqual(s.layers, [0, 1, 2, 3].map((layer) => ({ layer, n_expert: 8 })));
        assert.equal(s.n_expert, 8);
        assert.equal(s.all_resident, false);
        assert.equal(s.resident.length, 4);
        assert.equal(s.stats.budget_bytes, budget);
        assert.ok(s.stats.limit_bytes > 0 && s.stats.allocated_bytes <= s.stats.limit_bytes);
        const n = s.resident.flat().length;
        assert.equal(s.stats.resident_bytes, n * (s.stats.allocated_bytes / 8), "8 slots");
      });

      await t.step("events: replaying the frames gives the pool's residency", async () => {
        const ac = new AbortController();
        const r = await fetch(`${url}/v1/experts/events`, { signal: ac.signal });
        assert.equal(r.status, 200);
        assert.match(r.headers.get("content-type")!, /text\/event-stream/);
        const got: SseEvent[] = [];
        const reading = (async () => {
          try {
            for await (const e of readSse(r.body!)) got.push(e);
          } catch {
            // aborted below
          }
        })();
        const until = async (cond: () => boolean) => {
          const t0 = performance.now();
          while (!cond()) {
            if (performance.now() - t0 > 10_000) throw new Error("timed out");
            await new Promise((r) => setTimeout(r, 20));
          }
        };
        await until(() => got.length >= 1);
        assert.equal(got[0]!.event, "snapshot");
        const snap: ExpertsSnapshotJson = JSON.parse(got[0]!.data);
        const g = await fetch(`${url}/generate`, {
          method: "POST",
          body: JSON.stringify({ prompt: "The cat sat on", max_tokens: 16, temperature: 0 }),
        });
        const out = await g.json();
        assert.ok(out.stats.expert_loads > 0, "experts were loaded");
        const after: ExpertsSnapshotJson = await (await fetch(`${url}/v1/experts`)).json();
        // the last frame covers the end of the generation
        await until(() => {
          const f = got.at(-1)!;
          return f.event === "experts" &&
            (JSON.parse(f.data) as Frame).stats.lookups === after.stats.lookups;
        });
        ac.abort();
        await reading;
        const frames = got.slice(1).map((e) => {
          assert.equal(e.event, "experts");
          return JSON.parse(e.data) as Frame;
        });
        assert.ok(frames.length >= 1);
        // replay
        const resident = snap.resident.map((ids) => new Set(ids));
        const seen = { hit: 0, loaded: 0, evicted: 0 };
        for (const f of frames) {
          for (const [layer, expert, flags] of f.changes) {
            if (flags & CHANGE.resident) resident[layer]!.add(expert);
            else resident[layer]!.delete(expert);
            if (flags & CHANGE.hit) seen.hit++;
            if (flags & CHANGE.loaded) seen.loaded++;
            if (flags & CHANGE.evicted) seen.evicted++;
          }
        }
        assert.deepEqual(resident.map((s) => [...s].sort((a, b) => a - b)), after.resident);
        assert.ok(seen.hit > 0 && seen.loaded > 0 && seen.evicted > 0, JSON.stringify(seen));
        // throttled: one entry per expert per frame, frames no closer than the interval
        for (const f of frames) {
          const keys = f.changes.map(([l, e]) => `${l}:${e}`);
          assert.equal(new Set(keys).size, keys.length);
        }
        for (let i = 1; i < frames.length; i++) {
          assert.ok(frames[i]!.t_ms - frames[i - 1]!.t_ms >= snap.interval_ms - 1);
        }
        // rates × time add up to the counters' growth
        const loads = frames.reduce((s, f) => s + f.rates.loads_per_s * f.interval_ms / 1000, 0);
        const grew = after.stats.misses - snap.stats.misses + after.stats.prefetch_uploads -
          snap.stats.prefetch_uploads;
        assert.ok(Math.abs(loads - grew) <= 0.02 * grew + 0.5, `${loads} vs ${grew}`);
        assert.equal(frames.at(-1)!.stats.misses, after.stats.misses);
      });

      await t.step("shutdown ends an open stream", async () => {
        const r = await fetch(`${url}/v1/experts/events`);
        const reader = r.body!.getReader();
        await reader.read(); // the snapshot
        const t0 = performance.now();
        await server.close({ graceMs: 0 });
        assert.ok(performance.now() - t0 < 5000);
        for (;;) if ((await reader.read()).done) break;
      });
    } finally {
      await server.close({ graceMs: 0 });
    }

    await t.step("503 while the model loads; 401 without the API key", async () => {
      let release!: () => void;
      const gate = new Promise<void>((r) => release = r);
      const loading = await startServer({
        port: 0,
        waitForModel: false,
        apiKey: "k",
        load: () => gate.then(() => engine), // owned: closed with this server
      });
      try {
        const auth = { authorization: "Bearer k" };
        const r = await fetch(`${loading.url}/v1/experts`, { headers: auth });
        assert.equal(r.status, 503);
        assert.equal((await r.json()).error.type, "model_loading");
        release();
        await loading.ready;
        const no = await fetch(`${loading.url}/v1/experts/events`);
        assert.equal(no.status, 401);
        await no.body?.cancel();
        const ok = await fetch(`${loading.url}/v1/experts`, { headers: auth });
        assert.equal(ok.status, 200);
        await ok.body?.cancel();
      } finally {
        release();
        await loading.close({ graceMs: 0 });
      }
    });
  },
});
