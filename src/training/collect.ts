/**
 * `deno task collect`: runs the engine over prompts and records, per token,
 * the hidden state entering every layer's MoE step and the experts every
 * layer chose — the shadow predictor's training data.
 *
 * ```sh
 * deno task collect --model M.gguf (--prompts FILE | --synthetic) --num-samples N \
 *   --output data.safetensors [--new-tokens 32] [--prompt-len 16] [--temperature 0] \
 *   [--seed 1] [--cache-size-gb 4] [--max-batch 32] [--dtype f16|f32]
 * ```
 *
 * Each prompt (a line of FILE, tokenised with the model's tokenizer, or with
 * `--synthetic` random token ids) is continued by `--new-tokens` generated
 * tokens (greedy, or sampled on the GPU with `--temperature`); the whole
 * sequence is then run again in prompt-sized batches, reading the logged
 * hidden states and routes of every token. A sample is a token; collection
 * stops at `--num-samples`.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { readback } from "../gpu/buffers.ts";
import { loadModel, type Model } from "../model/model.ts";
import { Session } from "../generate/session.ts";
import { Tokenizer } from "../tokenizer/mod.ts";
import { Rng } from "../util/rng.ts";
import { dequantizeRows } from "../gguf/dequant.ts";
import { tensorName as tn, Tensors } from "../gguf/names.ts";
import { ffnNormOf } from "../predictor/lookahead.ts";
import { rmsNormalizeRows, type RoutingDataset, writeDataset } from "./data.ts";

/** Options of {@linkcode collectRoutingData}. */
export interface CollectOptions {
  /** Samples (tokens) to record at most. */
  numSamples: number;
  /** Tokens generated after each prompt (default 32). */
  newTokens?: number;
  /** 0 (default): greedy; otherwise sampling temperature on the GPU. */
  temperature?: number;
  /** Sampling seed (default 1). */
  seed?: number;
  /** Called after each sequence with the samples so far. */
  onProgress?: (samples: number, total: number) => void;
}

/**
 * Runs `model` over `prompts` (token ids) and records every token's hidden
 * states (normalised) and routes, sequence by sequence, until
 * `numSamples`. The model's context is reset before each prompt.
 */
export async function collectRoutingData(
  model: Model,
  prompts: readonly (readonly number[])[],
  o: CollectOptions,
): Promise<RoutingDataset> {
  const c = model.config;
  const L = c.nLayer;
  const E = c.nEmbd;
  const K = c.nExpertUsed;
  const s = model.transformer.state;
  const newTokens = o.newTokens ?? 32;
  const sampling = o.temperature ? { temperature: o.temperature, seed: o.seed ?? 1 } : undefined;
  const session = await Session.create(model, { sampler: sampling !== undefined });
  const hidden: Float32Array[] = [];
  const routes: Uint32Array[] = [];
  const sequence: number[] = [];
  const position: number[] = [];
  let n = 0;
  try {
    for (let p = 0; p < prompts.length && n < o.numSamples; p++) {
      const prompt = prompts[p]!;
      if (prompt.length === 0) continue;
      const room = model.nCtx - prompt.length;
      const gen = Math.max(0, Math.min(newTokens, room));
      model.reset();
      let seq = [...prompt];
      if (gen > 0) {
        const r = await session.generate(prompt, { maxTokens: gen, sampling });
        seq = [...prompt, ...r.tokens];
      }
      seq = seq.slice(0, Math.min(model.nCtx, o.numSamples - n));
      model.reset();
      for (let i = 0; i < seq.length; i += model.maxBatch) {
        const chunk = seq.slice(i, i + model.maxBatch);
        const T = chunk.length;
        await model.forward(chunk);
        const views = await readback(model.gpu, [
          { buffer: s.routes, offset: 0, size: 4 * T * L * K },
          ...s.hidden.map((b) => ({ buffer: b, offset: 0, size: 4 * T * E })),
        ]);
        const h = new Float32Array(T * L * E);
        views.slice(1).forEach((v, l) => {
          const rows = new Float32Array(v);
          for (let t = 0; t < T; t++) h.set(rows.subarray(t * E, (t + 1) * E), (t * L + l) * E);
        });
        hidden.push(rmsNormalizeRows(h, E));
        routes.push(new Uint32Array(views[0]!));
        for (let t = 0; t < T; t++) {
          sequence.push(p);
          position.push(i + t);
        }
        n += T;
      }
      o.onProgress?.(n, o.numSamples);
    }
  } finally {
    session.destroy();
    model.reset();
  }
  const cat = <A extends Float32Array | Uint32Array>(parts: A[], make: (n: number) => A): A => {
    const out = make(parts.reduce((a, b) => a + b.length, 0));
    let off = 0;
    for (const part of parts) {
      out.set(part as ArrayLike<number>, off);
      off += part.length;
    }
    return out;
  };
  return {
    nLayer: L,
    nEmbd: E,
    nExpert: c.nExpert,
    nExpertUsed: K,
    nSamples: n,
    hidden: cat(hidden, (k) => new Float32Array(k)),
    routes: cat(routes, (k) => new Uint32Array(k)),
    sequence: Int32Array.from(sequence),
    position: Int32Array.from(position),
    routers: await foldedRouters(model),
    info: {
      model: model.file.metadata.string("general.name", null) ?? "",
      architecture: c.arch,
      generation: o.temperature ? `temperature ${o.temperature}` : "greedy",
      new_tokens: String(newTokens),
    },
  };
}

/**
 * Every layer's router with its `ffn_norm` weight folded in, f32 [nLayer,
 * nExpert, nEmbd], read back from the GPU (dequantised when quantised); the
 * router's logit bias (GPT-OSS) is not included.
 */
export async function foldedRouters(model: Model): Promise<Float32Array> {
  const { nLayer: L, nExpert: N, nEmbd: E } = model.config;
  const out = new Float32Array(L * N * E);
  // leading dense blocks (DeepSeek) have no router: zeros
  for (let l = model.config.nLayerDenseLead ?? 0; l < L; l++) {
    const w = model.weights.matrix(tn(Tensors.ffnGateInp, l));
    const [norm, ...chunks] = await readback(model.gpu, [
      ffnNormOf(model.weights, l, model.config),
      ...w.chunks.map((c) => ({
        buffer: c.buffer,
        offset: c.byteOffset,
        size: c.nRows * w.rowBytes,
      })),
    ]);
    const g = new Float32Array(norm!);
    chunks.forEach((bytes, i) => {
      const c = w.chunks[i]!;
      const rows = dequantizeRows(w.type.id, new Uint8Array(bytes), w.nCols, 0, c.nRows);
      for (let r = 0; r < c.nRows; r++) {
        const o = (l * N + c.rowStart + r) * E;
        for (let j = 0; j < E; j++) out[o + j] = rows[r * E + j]! * g[j]!;
      }
    });
  }
  return out;
}

/** `n` random prompts of 1…`len` token ids below `nVocab`. */
export function syntheticPrompts(n: number, len: number, nVocab: number, seed = 1): number[][] {
  const rng = new Rng(seed);
  return Array.from({ length: n }, () => {
    const k = 1 + rng.int(len);
    return Array.from({ length: k }, () => rng.int(nVocab));
  });
}

/** A one-line progress bar on a terminal, a line every 10 % otherwise. */
export function progressBar(label: string): (done: number, total: number) => void {
  const tty = Deno.stderr.isTerminal();
  const enc = new TextEncoder();
  const t0 = performance.now();
  let lastTenth = -1;
  return (done, total) => {
    const frac = Math.min(1, total > 0 ? done / total : 1);
    const rate = done / Math.max(1e-3, (performance.now() - t0) / 1000);
    const width = 30;
    const fill = Math.round(frac * width);
    const text = `${label} [${"#".repeat(fill)}${" ".repeat(width - fill)}] ${done}/${total} ` +
      `${(frac * 100).toFixed(0)}% ${rate.toFixed(1)}/s`;
    if (tty) {
      Deno.stderr.writeSync(enc.encode(`\r${text}${frac >= 1 ? "\n" : ""}`));
    } else if (Math.floor(frac * 10) > lastTenth) {
      lastTenth = Math.floor(frac * 10);
      Deno.stderr.writeSync(enc.encode(`${text}\n`));
    }
  };
}

const USAGE =
  `usage: deno task collect --model M.gguf (--prompts FILE | --synthetic) --num-samples N
  --output data.safetensors [--new-tokens 32] [--prompt-len 16] [--temperature 0] [--seed 1]
  [--cache-size-gb 4] [--max-batch 32] [--dtype f16|f32]`;

async function main(args: string[]): Promise<void> {
  const { values: v } = parseArgs({
    args,
    options: {
      model: { type: "string" },
      prompts: { type: "string" },
      synthetic: { type: "boolean" },
      "num-samples": { type: "string", default: "4096" },
      output: { type: "string" },
      "new-tokens": { type: "string", default: "32" },
      "prompt-len": { type: "string", default: "16" },
      temperature: { type: "string", default: "0" },
      seed: { type: "string", default: "1" },
      "cache-size-gb": { type: "string", default: "4" },
      "max-batch": { type: "string", default: "32" },
      dtype: { type: "string", default: "f16" },
      help: { type: "boolean" },
    },
  });
  const fail = (msg: string): never => {
    console.error(`collect: ${msg}\n${USAGE}`);
    Deno.exit(2);
  };
  if (v.help) {
    console.log(USAGE);
    return;
  }
  if (!v.model) fail("--model is required");
  if (!v.output) fail("--output is required");
  if (!v.prompts === !v.synthetic) fail("give exactly one of --prompts FILE and --synthetic");
  const num = (k: keyof typeof v, min = 0): number => {
    const x = Number(v[k]);
    if (!Number.isFinite(x) || x < min) fail(`--${k} must be a number ≥ ${min}, got ${v[k]}`);
    return x;
  };
  const numSamples = num("num-samples", 1);
  const dtype = v.dtype!.toUpperCase();
  if (dtype !== "F16" && dtype !== "F32") fail(`--dtype must be f16 or f32, got ${v.dtype}`);
  const model = await loadModel({
    model: v.model!,
    cacheSizeGB: num("cache-size-gb"),
    maxBatch: num("max-batch", 1),
  });
  try {
    const seed = num("seed");
    let prompts: number[][];
    if (v.synthetic) {
      const len = num("prompt-len", 1);
      // enough prompts for the samples, each at least one token
      prompts = syntheticPrompts(numSamples, len, model.config.nVocab, seed);
    } else {
      const tok = Tokenizer.fromGguf(model.file.metadata);
      const lines = (await Deno.readTextFile(v.prompts!)).split("\n").filter((l) => l.trim());
      if (lines.length === 0) fail(`${v.prompts} holds no prompts (one per line)`);
      prompts = lines.map((l) => tok.encode(l));
    }
    const t0 = performance.now();
    const data = await collectRoutingData(model, prompts, {
      numSamples,
      newTokens: num("new-tokens"),
      temperature: num("temperature"),
      seed,
      onProgress: progressBar("collect"),
    });
    await writeDataset(v.output!, data, dtype as "F16" | "F32");
    console.log(JSON.stringify({
      output: v.output,
      samples: data.nSamples,
      sequences: new Set(data.sequence).size,
      layers: data.nLayer,
      nEmbd: data.nEmbd,
      experts: data.nExpert,
      ms: Math.round(performance.now() - t0),
    }));
  } finally {
    model.close();
  }
}

if (import.meta.main) await main(Deno.args);
