/**
 * `deno task bench [name…] [--quick] [--model FILE.gguf]`: runs the
 * benchmarks — all of them, or those named — one after another (never two
 * at once: they share the machine) and prints each one's JSON report as one
 * line on stdout (JSON Lines; `| jq .` reads it), with a one-line summary
 * per bench on stderr. `--quick` takes small sizes (about two minutes on a
 * 2-core machine with a software adapter); `--model` benches a given GGUF
 * in `decode` and `cache_hit_rate` instead of their generated models.
 * `deno task bench decode FLAGS…` passes the decode bench its own flags
 * (`--preset qwen3-30b-a3b --layers 4 --type Q4_K_M --prompt-tokens 64`…,
 * see `bench/decode.ts`). `deno task bench gpu` is the GPU check
 * (`bench/gpu.ts`: installs the Vulkan loader where an NVIDIA GPU needs it,
 * parity tests, decode at two presets against llama.cpp's GPU builds, one
 * table); a plain `deno task bench` does not run it.
 *
 * | name | what it measures | reference in the same run |
 * |---|---|---|
 * | `matmul` | quantised matvec/matmul GB/s | f32 copy kernel, copyBufferToBuffer |
 * | `expert_fetch` | disk/page cache → GPU slot per expert | raw pread, writeBuffer from memory |
 * | `decode` | prefill and decode tokens/s, syncs/token, weight GB/s, profile | llama.cpp, memcpy |
 * | `cache_hit_rate` | hit rate and tokens/s at several cache budgets (+ SVG chart) | 100% budget, llama.cpp |
 * | `mla_attention` | latent attention at Kimi-K2's shape, heads grouped per workgroup | the per-head kernel |
 * | `soak` | crashes, wrong answers, RSS/fds/GPU memory under normal, hostile and fault-injected requests (60 s quick, 10 min) | the fault-free answers of the same server |
 * | `perplexity` | held-out perplexity of the trained demo model (data/) | llama.cpp, the model card |
 *
 * A bench that fails prints `{"bench": name, "error": …}` and the others
 * still run; the exit code is then 1.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { acquireGpu } from "../src/gpu/device.ts";
import { DEFAULT_TYPES, runMatmulBench } from "./matmul.ts";
import { runExpertFetchBench } from "./expert_fetch.ts";
import { decodeOptions, decodeSummary, runDecodeBench } from "./decode.ts";
import {
  cacheHitRateOptions,
  cacheHitRateSummary,
  runCacheHitRateBench,
} from "./cache_hit_rate.ts";
import { prefetchBenchOptions, prefetchSummary, runPrefetchBench } from "./prefetch.ts";
import { runServerLoadBench, serverLoadSummary } from "./server_load.ts";
import { type MlaAttentionResult, runMlaAttentionBench } from "./mla_attention.ts";
import { runSoakBench, soakSummary } from "./soak.ts";
import { runPerplexityBench } from "./perplexity.ts";
import { note } from "./_util.ts";
import { type GpuBenchRow, gpuCheckOptions, runGpuCheck } from "./gpu.ts";

type Report = Record<string, unknown>;

interface Bench {
  run(quick: boolean, model: string | undefined): Promise<Report>;
  summary(r: Report): string;
}

function fmt(x: unknown): string {
  return typeof x === "number" ? String(Number(x.toPrecision(3))) : String(x);
}

/** The benchmarks, in the order they run. */
export const BENCHES: Record<string, Bench> = {
  matmul: {
    async run(quick) {
      const gpu = await acquireGpu();
      try {
        return await runMatmulBench(gpu, {
          rows: quick ? 2048 : 4096,
          cols: quick ? 2048 : 4096,
          prefillRows: quick ? 1024 : 2048,
          prefillCols: quick ? 1024 : 2048,
          tokens: quick ? 64 : 128,
          iters: quick ? 3 : 10,
          types: quick ? ["Q8_0", "Q4_K", "IQ2_XXS", "IQ1_S"] : [...DEFAULT_TYPES],
        });
      } finally {
        gpu.destroy();
      }
    },
    summary(r) {
      const rows = r.results as {
        type: string;
        kind: string;
        weightGBps: number;
        ratioToCopy: number;
      }[];
      return "matmul: " +
        rows.map((x) =>
          `${x.type} ${x.kind} ${fmt(x.weightGBps)} GB/s (${fmt(x.ratioToCopy)}× copy)`
        ).join(", ");
    },
  },
  expert_fetch: {
    async run(quick) {
      return {
        bench: "expert_fetch",
        ...await runExpertFetchBench({
          layers: quick ? 1 : 2,
          experts: quick ? 16 : 64,
          embd: quick ? 1024 : 2048,
          ff: quick ? 512 : 768,
          type: "Q8_0",
          rounds: quick ? 1 : 3,
        }),
      };
    },
    summary(r) {
      const ratios = r.ratios as Record<string, number>;
      return "expert_fetch: " + Object.entries(ratios).map(([k, v]) => `${k} ${fmt(v)}`).join(", ");
    },
  },
  decode: {
    run(quick, model) {
      return runDecodeBench({ ...decodeOptions([], quick), model });
    },
    summary: decodeSummary,
  },
  cache_hit_rate: {
    run(quick, model) {
      return runCacheHitRateBench({ ...cacheHitRateOptions([], quick), model });
    },
    summary: cacheHitRateSummary,
  },
  prefetch: {
    run(quick) {
      return runPrefetchBench(prefetchBenchOptions(quick));
    },
    summary: prefetchSummary,
  },
  perplexity: {
    run(quick) {
      return runPerplexityBench({ chunks: quick ? 1 : undefined });
    },
    summary: (r) =>
      `perplexity on ${r.scored} held-out tokens: od-moe ${fmt(r.engine)}, llama.cpp ${
        fmt(r.llama_cpp)
      }, model card ${fmt(r.card_engine)}`,
  },
  server_load: {
    run(quick) {
      return runServerLoadBench({
        clients: quick ? 4 : 8,
        durationS: quick ? 10 : 20,
        maxTokens: 8,
        endpoint: "generate",
        stream: false,
        maxQueue: 16,
      });
    },
    summary: serverLoadSummary,
  },
  mla_attention: {
    async run(quick) {
      const gpu = await acquireGpu();
      try {
        return await runMlaAttentionBench(gpu, {
          contexts: quick ? [256] : [512, 2048],
          tokens: quick ? [1] : [1, 16],
          iters: quick ? 2 : 5,
        });
      } finally {
        gpu.destroy();
      }
    },
    summary: (r) =>
      (r.results as MlaAttentionResult[]).map((x) =>
        `${x.keys} keys × ${x.tokens}: ${fmt(x.speedup)}× (${x.headsPerWorkgroup} heads/workgroup)`
      ).join(", "),
  },
  soak: {
    async run(quick) {
      const { samples: _, ...r } = await runSoakBench({ seconds: quick ? 60 : 600 });
      return r;
    },
    summary: soakSummary,
  },
};

async function main(): Promise<number> {
  if (Deno.args[0] === "gpu") {
    // `deno task bench gpu [flags]`: the GPU check (bench/gpu.ts); never part of a plain run
    const report = await runGpuCheck(gpuCheckOptions(Deno.args.slice(1)));
    const rows = report.rows as GpuBenchRow[];
    return rows.some((r) => r.error && !r.error.startsWith("skipped")) ? 1 : 0;
  }
  if (Deno.args[0] === "decode" && Deno.args.length > 1) {
    // `deno task bench decode --preset NAME [--layers N] …`: the decode bench's own flags
    const t0 = performance.now();
    const report = await runDecodeBench(decodeOptions(Deno.args.slice(1)));
    const wallS = Number(((performance.now() - t0) / 1e3).toFixed(1));
    console.log(JSON.stringify({ ...report, bench: "decode", wall_s: wallS }));
    note(`${decodeSummary(report)} [${wallS} s]`);
    return 0;
  }
  const { values, positionals } = parseArgs({
    args: Deno.args,
    options: {
      quick: { type: "boolean" },
      model: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
    allowPositionals: true,
    strict: true,
  });
  const names = Object.keys(BENCHES);
  if (values.help) {
    console.log(`usage: deno task bench [${names.join("|")} …] [--quick] [--model FILE.gguf]`);
    return 0;
  }
  for (const p of positionals) {
    if (!(p in BENCHES)) throw new Error(`unknown bench "${p}"; benches: ${names.join(", ")}`);
  }
  const chosen = positionals.length ? names.filter((n) => positionals.includes(n)) : names;
  let failed = 0;
  for (const name of chosen) {
    note(`== ${name}${values.quick ? " (quick)" : ""}`);
    const t0 = performance.now();
    try {
      const report = await BENCHES[name]!.run(Boolean(values.quick), values.model);
      const wallS = Number(((performance.now() - t0) / 1e3).toFixed(1));
      console.log(
        JSON.stringify({ ...report, bench: name, quick: Boolean(values.quick), wall_s: wallS }),
      );
      note(`${BENCHES[name]!.summary(report)} [${wallS} s]`);
    } catch (e) {
      failed++;
      const error = e instanceof Error ? e.message : String(e);
      console.log(JSON.stringify({ bench: name, error }));
      note(`${name}: FAILED: ${error}`);
    }
  }
  return failed ? 1 : 0;
}

if (import.meta.main) {
  try {
    Deno.exit(await main());
  } catch (e) {
    console.error(`bench: ${e instanceof Error ? e.message : String(e)}`);
    Deno.exit(2);
  }
}
