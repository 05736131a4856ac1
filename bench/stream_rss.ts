/**
 * Process memory while a real-shape model streams its experts: the
 * resident anonymous memory (heap, and on a software adapter the GPU
 * buffers themselves) against the base weights and the expert budget, and
 * the file-backed memory (the memory-mapped GGUF's pages: page cache,
 * reclaimable) — over several requests, so growth shows. The reference in
 * the same run: the bytes the pool uploaded.
 *
 * ```sh
 * deno run -A bench/stream_rss.ts [--preset qwen3-30b-a3b] [--layers 2] [--type Q4_K_M]
 *   [--cache-size-gb 0.25] [--requests 4] [--max-tokens 24]
 * ```
 *
 * The preset file is generated like the decode bench's (`dev/presets.ts`)
 * when it is not cached yet. Progress to stderr, one JSON report to stdout.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { presetOptions } from "../dev/presets.ts";
import { fixtureModel, type FixtureType } from "../dev/fixtures.ts";
import { Engine } from "../src/generate/engine.ts";
import { note, numFlag, roundNumbers } from "./_util.ts";

const MIB = 2 ** 20;

/** Resident memory of this process from `/proc/self/status`, bytes. */
function memory(): { rss: number; anon: number; file: number } {
  const s = Deno.readTextFileSync("/proc/self/status");
  const kb = (f: string) => Number(new RegExp(`${f}:\\s+(\\d+) kB`).exec(s)?.[1] ?? NaN) * 1024;
  return { rss: kb("VmRSS"), anon: kb("RssAnon"), file: kb("RssFile") };
}

if (import.meta.main) {
  const { values: v } = parseArgs({
    args: Deno.args,
    options: {
      preset: { type: "string", default: "qwen3-30b-a3b" },
      layers: { type: "string", default: "2" },
      type: { type: "string", default: "Q4_K_M" },
      "cache-size-gb": { type: "string" },
      requests: { type: "string", default: "4" },
      "max-tokens": { type: "string", default: "24" },
    },
    strict: true,
  });
  const path = await fixtureModel({
    ...presetOptions(v.preset, Number(v.layers)),
    type: v.type as FixtureType,
  });
  const cacheSizeGB = numFlag("cache-size-gb", v["cache-size-gb"], 0.25);
  const start = memory();
  const e = await Engine.load({ model: path, cacheSizeGB, nCtx: 512, parallel: 1 });
  try {
    const loaded = memory();
    const baseBytes = e.model.weights.bytes;
    const poolBytes = e.model.pool.limitBytes;
    const rows = [];
    for (let i = 0; i < Number(v.requests); i++) {
      await e.generate({
        prompt: `Request ${i}: the history of the world in one sentence:`,
        maxTokens: Number(v["max-tokens"]),
        sampling: { temperature: 0 },
      });
      const m = memory();
      const uploaded = e.model.expertStats.snapshot().bytesUploaded;
      rows.push({
        request: i + 1,
        anonMiB: m.anon / MIB,
        fileMiB: m.file / MIB,
        uploadedMiB: uploaded / MIB,
      });
      note(
        `stream_rss: after request ${i + 1}: anon ${(m.anon / MIB).toFixed(0)} MiB, file ` +
          `${(m.file / MIB).toFixed(0)} MiB, experts uploaded ${(uploaded / MIB).toFixed(0)} MiB`,
      );
    }
    const last = rows[rows.length - 1]!;
    console.log(JSON.stringify(roundNumbers({
      bench: "stream_rss",
      file: path.split("/").pop(),
      fileMiB: (await Deno.stat(path)).size / MIB,
      adapter: e.model.gpu.adapterInfo.description || e.model.gpu.adapterInfo.vendor,
      baseWeightsMiB: baseBytes / MIB,
      expertPoolMiB: poolBytes / MIB,
      startMiB: { anon: start.anon / MIB, file: start.file / MIB },
      loadedMiB: { anon: loaded.anon / MIB, file: loaded.file / MIB },
      requests: rows,
      /** Anonymous memory beyond the base weights and the pool (on a software adapter both are in it). */
      anonOverBaseAndPoolMiB: last.anonMiB - (baseBytes + poolBytes) / MIB,
      anonGrowthOverRequestsMiB: last.anonMiB - rows[0]!.anonMiB,
    })));
  } finally {
    e.close();
  }
}
