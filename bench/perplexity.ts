/**
 * Perplexity of the trained demo model (data/kjv-moe-Q8_0.gguf) on its
 * held-out text, with od-moe and with llama.cpp on the same file and tokens,
 * compared with the figure on the model card (data/kjv-moe-Q8_0.json).
 *
 * The protocol (also the model card's): every held-out chapter becomes
 * BOS + its tokens + EOS; the chapters are concatenated and cut into
 * consecutive chunks of `chunk` tokens; each chunk is evaluated from an
 * empty context and every position after its first is scored. Perplexity is
 * exp(mean negative log-likelihood).
 *
 *     deno run -A bench/perplexity.ts [--chunks N] [--chunk T] [--model FILE.gguf]
 *
 * @module
 */

import { parseArgs } from "node:util";
import { loadModel, type Model } from "../src/model/model.ts";
import { loadTokenizer, type Tokenizer } from "../src/tokenizer/mod.ts";
import type { Gpu } from "../src/gpu/device.ts";
import { loadReference } from "../dev/ref/llama_cpp.ts";
import { intFlag, note, roundNumbers } from "./_util.ts";

const DATA = new URL("../data/", import.meta.url);

/** The trained demo model's file. */
export const DEMO_MODEL_PATH: string = decodeURIComponent(
  new URL("kjv-moe-Q8_0.gguf", DATA).pathname,
);
/** Its machine-readable model card (training summary and measured perplexities). */
export const DEMO_CARD_PATH: string = decodeURIComponent(
  new URL("kjv-moe-Q8_0.json", DATA).pathname,
);
/** The held-out chapters, one per line (never trained on). */
export const HELDOUT_PATH: string = decodeURIComponent(new URL("kjv-heldout.txt", DATA).pathname);

/** The token stream of the protocol: BOS + chapter + EOS for every line of `text`. */
export function heldoutStream(tok: Tokenizer, text: string): number[] {
  const bos = tok.bos, eos = tok.eos;
  if (bos === null || eos === null) {
    throw new Error("perplexity: the tokenizer has no BOS or EOS token (the protocol needs both)");
  }
  const out: number[] = [];
  for (const line of text.split("\n")) {
    if (line === "") continue;
    out.push(bos, ...tok.encode(line, { addSpecial: false }), eos);
  }
  return out;
}

/** The first `nChunks` chunks of `chunk` tokens of `stream` (all of them when omitted). */
export function chunks(stream: readonly number[], chunk: number, nChunks?: number): number[][] {
  const n = Math.min(Math.floor(stream.length / chunk), nChunks ?? Infinity);
  return Array.from({ length: n }, (_, i) => stream.slice(i * chunk, (i + 1) * chunk));
}

/** −log softmax(logits)[target], in float64. */
export function negLogProb(logits: ArrayLike<number>, target: number): number {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) max = Math.max(max, logits[i]!);
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i]! - max);
  return Math.log(sum) + max - logits[target]!;
}

/** A perplexity and what it was measured on. */
export interface Perplexity {
  /** exp(mean negative log-likelihood). */
  ppl: number;
  /** Tokens scored. */
  scored: number;
}

function finish(nll: number, scored: number): Perplexity {
  return { ppl: Math.exp(nll / scored), scored };
}

/** od-moe's perplexity: each chunk from an empty context, fed one token at a time. */
export async function enginePerplexity(model: Model, cs: readonly number[][]): Promise<Perplexity> {
  let nll = 0, scored = 0;
  for (const c of cs) {
    model.reset();
    let logits = await model.forward([c[0]!]);
    for (let i = 1; i < c.length; i++) {
      nll += negLogProb(logits, c[i]!);
      scored++;
      if (i + 1 < c.length) logits = await model.forward([c[i]!]);
    }
  }
  model.reset();
  return finish(nll, scored);
}

/** llama.cpp's perplexity: each chunk evaluated as one batch from an empty context. */
export function referencePerplexity(
  logitsOf: (tokens: number[]) => Float32Array[],
  cs: readonly number[][],
): Perplexity {
  let nll = 0, scored = 0;
  for (const c of cs) {
    const all = logitsOf(c);
    for (let i = 1; i < c.length; i++) {
      nll += negLogProb(all[i - 1]!, c[i]!);
      scored++;
    }
  }
  return finish(nll, scored);
}

/** The measured figures of the model card that a run can be compared with. */
export interface DemoCard {
  /** Chunk length of the protocol. */
  chunk: number;
  /** Perplexity of the first chunks, by od-moe and llama.cpp on the committed file. */
  subset: { chunks: number; scored: number; engine: number; llamaCpp: number };
  /** llama.cpp on every held-out chunk of the committed file. */
  full: { chunks: number; scored: number; llamaCpp: number };
}

/** Reads the figures of data/kjv-moe-Q8_0.json. */
export function readDemoCard(path = DEMO_CARD_PATH): DemoCard {
  const j = JSON.parse(Deno.readTextFileSync(path));
  const p = j?.perplexity;
  if (typeof p?.chunk !== "number" || typeof p?.subset?.engine !== "number") {
    throw new Error(`${path}: no perplexity.chunk / perplexity.subset.engine figures`);
  }
  return p as DemoCard;
}

/** Options of {@linkcode runPerplexityBench}. */
export interface PerplexityBenchOptions {
  /** The GGUF (default the trained demo model). */
  model?: string;
  /** Chunks scored by od-moe (default the card's subset). */
  chunks?: number;
  /** Chunk length (default the card's). */
  chunk?: number;
  /** A device to use. */
  gpu?: Gpu;
}

/** od-moe vs llama.cpp (and the card) on the first chunks of the held-out text. */
export async function runPerplexityBench(
  o: PerplexityBenchOptions = {},
): Promise<Record<string, unknown>> {
  const path = o.model ?? DEMO_MODEL_PATH;
  const card = path === DEMO_MODEL_PATH ? readDemoCard() : undefined;
  const chunk = o.chunk ?? card?.chunk ?? 128;
  const nChunks = o.chunks ?? card?.subset.chunks ?? 4;
  const tok = loadTokenizer(path);
  const cs = chunks(heldoutStream(tok, Deno.readTextFileSync(HELDOUT_PATH)), chunk, nChunks);
  const ref = loadReference().loadModel(path, { nCtx: chunk });
  let llama: Perplexity;
  try {
    llama = referencePerplexity((t) => ref.logits(t), cs);
  } finally {
    ref.close();
  }
  const model = await loadModel({ model: path, gpu: o.gpu, nCtx: chunk });
  const t0 = performance.now();
  let engine: Perplexity;
  try {
    engine = await enginePerplexity(model, cs);
  } finally {
    model.close();
  }
  const seconds = (performance.now() - t0) / 1000;
  return roundNumbers({
    bench: "perplexity",
    model: path,
    chunk,
    chunks: cs.length,
    scored: engine.scored,
    engine: engine.ppl,
    llama_cpp: llama.ppl,
    ratio_engine_to_llama_cpp: engine.ppl / llama.ppl,
    card_engine: card && card.subset.chunks === cs.length && card.chunk === chunk
      ? card.subset.engine
      : null,
    engine_tokens_per_s: engine.scored / seconds,
  }, 6);
}

if (import.meta.main) {
  const { values: v } = parseArgs({
    args: Deno.args,
    options: { chunks: { type: "string" }, chunk: { type: "string" }, model: { type: "string" } },
  });
  const r = await runPerplexityBench({
    model: v.model,
    chunks: v.chunks === undefined ? undefined : intFlag("chunks", v.chunks, 4),
    chunk: v.chunk === undefined ? undefined : intFlag("chunk", v.chunk, 128, 2),
  });
  note(`perplexity: od-moe ${r.engine}, llama.cpp ${r.llama_cpp} over ${r.scored} tokens`);
  console.log(JSON.stringify(r));
}
