/**
 * The soak bench, one bounded minute: a `serve` subprocess on converted
 * output with experts streaming, under normal, streamed, cancelled, hostile
 * and fault-injected requests (expert files truncated, deleted, replaced,
 * corrupted, then restored). Nothing crashes, no wrong answer is served as
 * a success, every restore recovers, and file descriptors and RSS stay flat.
 */

import assert from "node:assert/strict";
import { runSoakBench } from "../bench/soak.ts";
import { ensureDemoModel } from "../src/server/demo.ts";
import { gpuTest } from "../dev/gpu.ts";

gpuTest({
  name: "soak (CI minute): 0 crashes, 0 wrong answers, every restore recovers, flat fds and RSS",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const model = await ensureDemoModel({
      cacheDir: new URL("../.cache/od-moe", import.meta.url).pathname,
    });
    const lines: string[] = [];
    const r = await runSoakBench({ seconds: 20, seed: 7, model, log: (l) => lines.push(l) });
    const { samples, ...summary } = r;
    const text = JSON.stringify(summary);
    assert.equal(r.crashes, 0, text);
    assert.equal(r.wrongAnswers, 0, text);
    assert.equal(r.notRecovered, 0, text);
    assert.equal(r.unexpected, 0, text);
    assert.ok(r.requests >= 10, text);
    assert.ok((r.byKind.fault ?? 0) > 0, `no fault was injected: ${text}`);
    assert.ok(samples.length >= 10, `${samples.length} samples`);
    assert.ok(r.fds.end <= r.fds.start + 2, `fds ${r.fds.start} → ${r.fds.end}`);
    assert.ok(r.rss.growth < 0.15, `RSS ${r.rss.startMiB} → ${r.rss.endMiB} MiB`);
    assert.equal(r.gpu.allocatedEndMiB, r.gpu.allocatedStartMiB, "the pool's GPU memory is fixed");
  },
});
