/**
 * Shared parts of the llama.cpp parity tests (PARITY.md): a prompt whose
 * greedy run has no near-ties, and the comparison of the engine's logits and
 * greedy tokens with llama.cpp's, step by step and through `generate()`.
 *
 * @module
 */

import assert from "node:assert/strict";
import type { Gpu } from "../src/gpu/device.ts";
import { noGpuReason, requireGpu } from "../dev/gpu.ts";
import { loadModel, type LoadModelOptions, type Model } from "../src/model/model.ts";
import { generate } from "../src/generate/session.ts";
import { fixtureDequantized, fixtureModel, type FixtureOptions } from "../dev/fixtures.ts";
import { readGgufModel } from "../src/gguf/reader.ts";
import { expertLayout } from "../src/experts/layout.ts";
import { Rng } from "../src/util/rng.ts";
import { loadReference, referenceUnavailableReason } from "../dev/ref/llama_cpp.ts";

/** Prompt tokens of a parity run. */
export const PROMPT = 16;
/** Greedy tokens compared. */
export const GENERATE = 32;
/** PARITY.md: every greedy step's top-1/top-2 gap should clear the numeric noise. */
export const MIN_GAP = 0.003;

/** Index of the largest value. */
export function argmax(x: Float32Array): number {
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i]! > x[best]!) best = i;
  return best;
}

/** The logits' range (max − min) and top-1/top-2 gap. */
export function range(x: Float32Array): { range: number; gap: number } {
  let max = -Infinity, second = -Infinity, min = Infinity;
  for (const v of x) {
    if (v > max) {
      second = max;
      max = v;
    } else if (v > second) second = v;
    if (v < min) min = v;
  }
  return { range: max - min, gap: max - second };
}

/** A llama.cpp greedy run. */
export interface ReferenceRun {
  /** The prompt. */
  prompt: number[];
  /** Greedy tokens. */
  tokens: number[];
  /** Logits before each greedy token. */
  logits: Float32Array[];
  /** Smallest top-1/top-2 gap over the run, as a fraction of the range. */
  worst: number;
}

/** A prompt whose llama.cpp greedy run never has a near-tie, with that run. */
export function pickPrompt(
  refPath: string,
  nVocab: number,
  seed: number,
  o: { promptLength?: number; generate?: number } = {},
): ReferenceRun {
  const ref = loadReference().loadModel(refPath);
  try {
    let best: ReferenceRun | null = null;
    for (let attempt = 0; attempt < 8; attempt++) {
      const rng = new Rng(seed * 97 + attempt);
      const prompt = Array.from({ length: o.promptLength ?? PROMPT }, () => rng.int(nVocab));
      const run = ref.greedy(prompt, o.generate ?? GENERATE);
      const worst = Math.min(...run.logits.map((l) => {
        const r = range(l);
        return r.gap / r.range;
      }));
      if (!best || worst > best.worst) best = { prompt, ...run, worst };
      if (worst >= MIN_GAP) break;
    }
    return best!;
  } finally {
    ref.close();
  }
}

/** What {@linkcode compare} measured. */
export interface ParityResult {
  /** Largest |logit difference| over all steps, as a fraction of that step's range. */
  maxRel: number;
  /** Tokens that matched (all of them, or compare throws). */
  tokens: number;
  /** Smallest top-1/top-2 gap of the reference run. */
  worst: number;
}

/**
 * Runs `model` on a prompt picked with llama.cpp on `refPath` and asserts
 * PARITY.md's bar: every step's logits within 1% of llama.cpp's range and
 * the same greedy tokens, step by step (`forward`) and through `generate()`
 * (the GPU sampler fed back on the GPU).
 */
export async function compare(
  model: Model,
  refPath: string,
  label: string,
  seed: number,
  o: { promptLength?: number; generate?: number } = {},
): Promise<ParityResult> {
  const n = o.generate ?? GENERATE;
  const { prompt, tokens: refTokens, logits: refLogits, worst } = pickPrompt(
    refPath,
    model.config.nVocab,
    seed,
    o,
  );
  model.reset();
  let logits = await model.forward(prompt);
  const ours: number[] = [];
  let maxRel = 0;
  for (let step = 0; step < n; step++) {
    const want = refLogits[step]!;
    const { range: r } = range(want);
    let maxDiff = 0;
    for (let i = 0; i < want.length; i++) {
      maxDiff = Math.max(maxDiff, Math.abs(logits[i]! - want[i]!));
    }
    maxRel = Math.max(maxRel, maxDiff / r);
    assert.ok(
      maxDiff <= 0.01 * r,
      `${label} step ${step}: max |logit diff| ${maxDiff.toExponential(3)} > 1% of range ${
        r.toFixed(3)
      }`,
    );
    const tok = argmax(logits);
    ours.push(tok);
    if (step + 1 < n) logits = await model.forward([tok]);
  }
  assert.deepEqual(ours, refTokens, `${label}: greedy tokens differ from llama.cpp's`);
  model.reset();
  const gen = await generate(model, prompt, { maxTokens: n });
  assert.deepEqual(gen.tokens, refTokens, `${label}: generate() tokens differ from llama.cpp's`);
  console.log(
    `${label}: ${n} tokens match; max logit diff ${(maxRel * 100).toFixed(4)}% of range; ` +
      `smallest top-2 gap ${(worst * 100).toFixed(2)}% of range; ${
        gen.stats.syncsPerToken.toFixed(3)
      } syncs/token`,
  );
  return { maxRel, tokens: n, worst };
}

/** The test process's device (`dev/gpu.ts`); rejects with the reason when there is none. */
export function device(): Promise<Gpu> {
  try {
    return Promise.resolve(requireGpu());
  } catch (e) {
    return Promise.reject(e);
  }
}

/** One budget's run in {@linkcode checkBudgets}. */
export interface BudgetRun {
  /** Fraction of the expert bytes given as `cacheSizeGB`. */
  fraction: number;
  /** Expert misses (uploads on demand) during the run. */
  misses: number;
  /** Batches that stalled on a missing expert and were repaired. */
  stalls: number;
}

/**
 * DESIGN.md's "same output whatever the cache": greedy tokens at each expert
 * budget (a fraction of the model's expert bytes) equal those with every
 * expert resident; below 100% experts really stream, and the pool stays
 * within its budget (a hard cap, raised to top-k experts of the largest layer).
 */
export async function checkBudgets(
  path: string,
  fractions: readonly number[],
  o: { prompt: number[]; maxTokens: number; label: string },
): Promise<BudgetRun[]> {
  const total = expertLayout(readGgufModel(path)).reduce(
    (s, l) => s + l.nExpert * l.bytesPerExpert,
    0,
  );
  const run = async (cacheSizeGB: number) => {
    // maxBatch 1: one token per batch (tests/expert_budget_test.ts runs prompt batches)
    const model = await loadModel({
      model: path,
      gpu: await device(),
      nCtx: 64,
      maxBatch: 1,
      cacheSizeGB,
    });
    try {
      const r = await generate(model, o.prompt, { maxTokens: o.maxTokens });
      const s = model.expertStats.snapshot();
      const limit = model.pool.limitBytes;
      assert.ok(s.peakBytes <= limit, `${o.label}: pool peak ${s.peakBytes} > ${limit}`);
      assert.equal(s.hits + s.misses, s.lookups, `${o.label}: hits + misses = lookups`);
      return { tokens: r.tokens, misses: s.misses, stalls: r.stats.stalls };
    } finally {
      model.close();
    }
  };
  const resident = await run(4);
  assert.equal(resident.misses, 0, `${o.label}: with every expert resident nothing misses`);
  const out: BudgetRun[] = [];
  for (const fraction of fractions) {
    const r = await run((fraction * total) / 1024 ** 3);
    assert.deepEqual(
      r.tokens,
      resident.tokens,
      `${o.label} budget ${fraction * 100}%: tokens differ`,
    );
    if (fraction < 1) {
      assert.ok(r.misses > 0, `${o.label} budget ${fraction * 100}%: nothing streamed`);
    }
    out.push({ fraction, misses: r.misses, stalls: r.stalls });
  }
  console.log(
    `${o.label}: same ${o.maxTokens} tokens at budgets ${
      out.map((r) => `${r.fraction * 100}% (${r.misses} misses, ${r.stalls} stalls)`).join(", ")
    }`,
  );
  return out;
}

/** Options of {@linkcode parityRun}. */
export interface ParityRunOptions {
  /** Prompt batch size (default 16). */
  maxBatch?: number;
  /** Prompt tokens (default {@linkcode PROMPT}). */
  promptLength?: number;
  /** Greedy tokens to compare (default {@linkcode GENERATE}). */
  generate?: number;
  /** Config fields to break on purpose (spread over the file's config by the loader). */
  override?: object;
  /** Checks on the loaded model before the comparison. */
  check?: (model: Model) => void;
}

/**
 * Loads a fixture on the shared device and compares it with llama.cpp (on
 * the file itself for F32, on llama.cpp's all-F32 copy otherwise).
 */
export async function parityRun(
  opts: FixtureOptions,
  label: string,
  seed: number,
  o: ParityRunOptions = {},
): Promise<ParityResult> {
  const path = await fixtureModel(opts);
  const refPath = (opts.type ?? "F32") === "F32" ? path : await fixtureDequantized(opts);
  const model = await loadModel({
    model: path,
    gpu: await device(),
    nCtx: Math.max(64, (o.promptLength ?? PROMPT) + (o.generate ?? GENERATE) + 8),
    maxBatch: o.maxBatch ?? 16,
    configOverride: o.override as LoadModelOptions["configOverride"],
  });
  try {
    o.check?.(model);
    return await compare(model, refPath, label, seed, o);
  } finally {
    model.close();
  }
}

/**
 * Why the parity tests cannot run here — no llama.cpp reference, or no GPU
 * (they are then reported as ignored, not failed) — or null.
 */
export function parityUnavailableReason(): string | null {
  return referenceUnavailableReason() ??
    (noGpuReason === undefined ? null : `no GPU: ${noGpuReason}`);
}
