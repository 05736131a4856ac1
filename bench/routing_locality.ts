/**
 * How much structure real routing has: the trained demo model
 * (data/kjv-moe-Q8_0.gguf) against the random-weight demo model of the same
 * MoE shape (4 layers, 8 experts, top-2), both reading the same held-out
 * text (each with its own tokenizer; teacher-forced, so the routes are those
 * of real text, not of the model's own greedy loops).
 *
 * Reported per model:
 * - expert reuse between consecutive tokens, per layer: the share of token
 *   t's chosen experts that token t − 1 also chose in that layer (a router
 *   with no memory gives top-k / experts = 0.25 on average);
 * - the share of routed slots each expert takes, per layer (balance);
 * - the hit rate of an LRU expert cache, simulated on the recorded routes,
 *   at budgets of 10/25/50/100% of the experts (one pool over all layers;
 *   a token's experts of a layer are looked up before the next layer's).
 *
 * ```sh
 * deno run -A bench/routing_locality.ts [--chunks 8] [--chunk 128]
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";
import { loadModel } from "../src/model/model.ts";
import { loadTokenizer } from "../src/tokenizer/mod.ts";
import { collectRoutingData } from "../src/training/collect.ts";
import { ensureDemoModel } from "../src/server/demo.ts";
import { acquireGpu, type Gpu } from "../src/gpu/device.ts";
import { chunks, DEMO_MODEL_PATH, HELDOUT_PATH, heldoutStream } from "./perplexity.ts";
import { intFlag, note, roundNumbers } from "./_util.ts";

/** Routes of a run: `routes[(t * nLayer + l) * k + j]`, tokens grouped in sequences. */
export interface RouteTrace {
  nLayer: number;
  nExpert: number;
  k: number;
  routes: Uint32Array;
  sequence: Int32Array;
}

/** Per layer, the mean share of a token's experts that the previous token (same sequence) chose. */
export function consecutiveReuse(r: RouteTrace): number[] {
  const { nLayer: L, k } = r;
  const n = r.sequence.length;
  const out: number[] = [];
  for (let l = 0; l < L; l++) {
    let shared = 0, pairs = 0;
    for (let t = 1; t < n; t++) {
      if (r.sequence[t] !== r.sequence[t - 1]) continue;
      const prev = r.routes.subarray(((t - 1) * L + l) * k, ((t - 1) * L + l + 1) * k);
      const cur = r.routes.subarray((t * L + l) * k, (t * L + l + 1) * k);
      for (const e of cur) if (prev.includes(e)) shared++;
      pairs++;
    }
    out.push(pairs ? shared / (pairs * k) : NaN);
  }
  return out;
}

/** Per layer, each expert's share of the routed slots. */
export function expertShares(r: RouteTrace): number[][] {
  const { nLayer: L, nExpert: E, k } = r;
  const n = r.sequence.length;
  return Array.from({ length: L }, (_, l) => {
    const c = new Array<number>(E).fill(0);
    for (let t = 0; t < n; t++) {
      for (let j = 0; j < k; j++) c[r.routes[(t * L + l) * k + j]!]!++;
    }
    return c.map((x) => x / (n * k));
  });
}

/** Hit rate of an LRU cache of `slots` experts (over all layers) replaying the trace. */
export function lruHitRate(r: RouteTrace, slots: number): number {
  const { nLayer: L, k } = r;
  const n = r.sequence.length;
  const lru = new Map<number, true>(); // insertion order = recency
  let hits = 0, lookups = 0;
  for (let t = 0; t < n; t++) {
    for (let l = 0; l < L; l++) {
      for (let j = 0; j < k; j++) {
        const key = l * r.nExpert + r.routes[(t * L + l) * k + j]!;
        lookups++;
        if (lru.has(key)) {
          hits++;
          lru.delete(key);
        } else if (lru.size >= slots) {
          lru.delete(lru.keys().next().value!);
        }
        lru.set(key, true);
      }
    }
  }
  return hits / lookups;
}

async function trace(path: string, gpu: Gpu, nChunks: number, chunk: number): Promise<RouteTrace> {
  const tok = loadTokenizer(path);
  const cs = chunks(heldoutStream(tok, await Deno.readTextFile(HELDOUT_PATH)), chunk, nChunks);
  const model = await loadModel({ model: path, gpu, nCtx: chunk, maxBatch: 64 });
  try {
    const d = await collectRoutingData(model, cs, { numSamples: nChunks * chunk, newTokens: 0 });
    return {
      nLayer: d.nLayer,
      nExpert: d.nExpert,
      k: d.nExpertUsed,
      routes: d.routes,
      sequence: d.sequence,
    };
  } finally {
    model.close();
  }
}

/** Runs the comparison; the JSON report. */
export async function runRoutingLocalityBench(
  o: { chunks?: number; chunk?: number; gpu?: Gpu } = {},
): Promise<Record<string, unknown>> {
  const nChunks = o.chunks ?? 8, chunk = o.chunk ?? 128;
  const gpu = o.gpu ?? await acquireGpu();
  const models = {
    trained: DEMO_MODEL_PATH,
    random: await ensureDemoModel(),
  };
  const budgets = [0.1, 0.25, 0.5, 1];
  const out: Record<string, unknown> = { bench: "routing_locality", chunks: nChunks, chunk };
  for (const [name, path] of Object.entries(models)) {
    const r = await trace(path, gpu, nChunks, chunk);
    const total = r.nLayer * r.nExpert;
    const shares = expertShares(r);
    out[name] = {
      model: path,
      layers: r.nLayer,
      experts: r.nExpert,
      top_k: r.k,
      tokens: r.sequence.length,
      reuse_per_layer: consecutiveReuse(r),
      reuse_if_memoryless: r.k / r.nExpert,
      expert_share_min: Math.min(...shares.flat()),
      expert_share_max: Math.max(...shares.flat()),
      lru_hit_rate: Object.fromEntries(
        budgets.map((b) => [String(b), lruHitRate(r, Math.max(r.k, Math.round(b * total)))]),
      ),
    };
  }
  return roundNumbers(out, 4);
}

if (import.meta.main) {
  const { values: v } = parseArgs({
    args: Deno.args,
    options: { chunks: { type: "string" }, chunk: { type: "string" } },
  });
  const r = await runRoutingLocalityBench({
    chunks: intFlag("chunks", v.chunks, 8),
    chunk: intFlag("chunk", v.chunk, 128, 2),
  });
  for (const name of ["trained", "random"]) {
    const m = r[name] as Record<string, unknown>;
    note(
      `${name}: reuse per layer ${
        JSON.stringify(m.reuse_per_layer)
      } (memoryless ${m.reuse_if_memoryless}); LRU hit rate ${JSON.stringify(m.lru_hit_rate)}`,
    );
  }
  console.log(JSON.stringify(r));
}
