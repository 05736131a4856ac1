import assert from "node:assert/strict";
import { deriveSampler, type SamplerParams } from "../gpu/ops/sample.ts";
import { argmax, makeRng } from "../gpu/ops/cpu_ref.ts";
import {
  CpuSampler,
  DEFAULT_SAMPLING,
  pcgHash,
  resolveSampling,
  samplerDistribution,
  samplerUniform,
  sampleWith,
} from "./sampler_cpu.ts";

const f = Math.fround;

const OFF: SamplerParams = {
  temperature: 1,
  topK: 0,
  topP: 1,
  minP: 0,
  repeatPenalty: 1,
  presencePenalty: 0,
  frequencyPenalty: 0,
  penaltyLastN: 0,
  seed: 1,
};

function gaussian(rng: () => number): number {
  return Math.sqrt(-2 * Math.log(1 - rng())) * Math.cos(2 * Math.PI * rng());
}

function randomLogits(n: number, rng: () => number, scale = 2): Float32Array {
  return Float32Array.from({ length: n }, () => gaussian(rng) * scale);
}

interface TokenData {
  id: number;
  logit: number;
  p: number;
}

/**
 * llama.cpp's default chain transcribed from src/llama-sampler.cpp
 * (penalties → top_k → top_p → min_p → temp → dist's softmax) with float
 * arithmetic, sorting stably by id among equal logits. Returns the kept
 * tokens and their probabilities, or the greedy token.
 */
function llamaChain(
  logits: Float32Array,
  p: SamplerParams,
  window: number[],
): { greedy?: number; probs: Map<number, number> } {
  let cur: TokenData[] = Array.from(logits, (logit, id) => ({ id, logit, p: 0 }));
  const desc = (a: TokenData, b: TokenData) => b.logit - a.logit || a.id - b.id;
  // penalties
  const disabled = p.penaltyLastN === 0 ||
    (p.repeatPenalty === 1 && p.frequencyPenalty === 0 && p.presencePenalty === 0);
  if (!disabled) {
    const count = new Map<number, number>();
    for (const t of window) count.set(t, (count.get(t) ?? 0) + 1);
    for (const d of cur) {
      const c = count.get(d.id);
      if (c === undefined) continue;
      d.logit = d.logit <= 0 ? f(d.logit * p.repeatPenalty) : f(d.logit / p.repeatPenalty);
      d.logit = f(d.logit - f(f(c * p.frequencyPenalty) + p.presencePenalty));
    }
  }
  // top_k
  if (p.topK > 0) cur = cur.sort(desc).slice(0, Math.min(p.topK, cur.length));
  // top_p
  if (p.topP < 1) {
    const max = Math.max(...cur.map((d) => d.logit));
    let sum = 0;
    for (const d of cur) sum += d.p = f(Math.exp(d.logit - max));
    for (const d of cur) d.p = f(d.p / sum);
    cur.sort(desc);
    let cum = 0, last = cur.length;
    for (let i = 0; i < cur.length; i++) {
      cum = f(cum + cur[i]!.p);
      if (cum >= p.topP) {
        last = i + 1;
        break;
      }
    }
    cur = cur.slice(0, last);
  }
  // min_p (unsorted path; the max always passes)
  if (p.minP > 0) {
    const max = Math.max(...cur.map((d) => d.logit));
    const minLogit = f(max + f(Math.log(p.minP)));
    cur = cur.filter((d) => d.logit >= minLogit);
  }
  // temp
  if (p.temperature <= 0) {
    let best = cur[0]!;
    for (const d of cur) if (d.logit > best.logit) best = d;
    return { greedy: best.id, probs: new Map([[best.id, 1]]) };
  }
  for (const d of cur) d.logit = f(d.logit / p.temperature);
  // dist's softmax
  const max = Math.max(...cur.map((d) => d.logit));
  let sum = 0;
  for (const d of cur) sum += d.p = f(Math.exp(d.logit - max));
  return { probs: new Map(cur.map((d) => [d.id, d.p / sum])) };
}

Deno.test("sampler_cpu: the same kept tokens and probabilities as llama.cpp's chain", () => {
  const rng = makeRng(11);
  const n = 300;
  let checked = 0;
  for (const temperature of [0, 0.7, 1.5]) {
    for (const topK of [0, 1, 5, 40]) {
      for (const topP of [1, 0.9, 0.5]) {
        for (const minP of [0, 0.05, 0.2]) {
          for (const pen of [false, true]) {
            const params: SamplerParams = {
              temperature,
              topK,
              topP,
              minP,
              repeatPenalty: pen ? 1.3 : 1,
              presencePenalty: pen ? 0.5 : 0,
              frequencyPenalty: pen ? 0.2 : 0,
              penaltyLastN: pen ? 16 : 0,
              seed: 1,
            };
            const c = deriveSampler(params, n, 64);
            for (let rep = 0; rep < 3; rep++) {
              const logits = randomLogits(n, rng);
              // The history repeats some of the likeliest tokens.
              const top = Array.from(logits.keys()).sort((a, b) => logits[b]! - logits[a]!);
              const window = Array.from({ length: 16 }, () => top[Math.floor(rng() * 12)]!);
              const want = llamaChain(logits, params, window);
              const got = samplerDistribution(logits, c, window);
              const label = `${JSON.stringify(params)} rep ${rep}`;
              assert.equal(got.greedy, want.greedy, label);
              const total = got.weights.reduce((a, b) => a + b, 0);
              const kept = new Map<number, number>();
              got.ids.forEach((id, j) => {
                if (got.weights[j]! > 0) kept.set(id, got.weights[j]! / total);
              });
              assert.deepEqual(
                [...kept.keys()].sort((a, b) => a - b),
                [...want.probs.keys()].sort(
                  (a, b) => a - b,
                ),
                label,
              );
              for (const [id, pr] of want.probs) {
                assert.ok(Math.abs(kept.get(id)! - pr) < 1e-5, `${label}: p(${id})`);
              }
              checked++;
            }
          }
        }
      }
    }
  }
  assert.equal(checked, 648);
});

Deno.test("sampler_cpu: llama.cpp's chain on a 20k vocabulary (partial rankings)", () => {
  const rng = makeRng(12);
  const n = 20_000;
  let boundary = 0;
  for (
    const p of [
      { topK: 40, topP: 0.9 },
      { topK: 1000, topP: 0.5, minP: 0.01 },
      { topP: 0.5 },
      { topP: 0.99, temperature: 0.6 },
      { minP: 0.1, temperature: 1.3 },
    ]
  ) {
    const params = { ...OFF, ...p };
    const logits = randomLogits(n, rng, 2.5);
    const want = llamaChain(logits, params, []);
    const got = samplerDistribution(logits, deriveSampler(params, n, 8), []);
    const kept = new Set(Array.from(got.ids).filter((_, j) => got.weights[j]! > 0));
    const wanted = new Set(want.probs.keys());
    // llama.cpp sums thousands of f32 probabilities in a row, we sum in double: the
    // last token of a long top-p set may differ, nothing else.
    const diff = [...kept].filter((t) => !wanted.has(t))
      .concat([...wanted].filter((t) => !kept.has(t)));
    assert.ok(diff.length <= 1, `${JSON.stringify(p)}: ${diff.length} tokens differ`);
    for (const t of diff) {
      for (const u of new Set([...kept, ...wanted])) {
        assert.ok(logits[u]! >= logits[t]!, `${JSON.stringify(p)}: ${t} is not the boundary`);
      }
    }
    if (diff.length > 0) boundary++;
  }
  assert.ok(boundary <= 1);
});

Deno.test("sampler_cpu: greedy is the argmax of the penalised logits (ties → lower id)", () => {
  const logits = new Float32Array([1, 5, NaN, 5, -2, 4.9]);
  const greedy = deriveSampler({ ...OFF, temperature: 0 }, logits.length, 8);
  assert.equal(sampleWith(logits, greedy, [], 0).token, 1);
  assert.equal(sampleWith(logits, greedy, [], 0).token, argmax(logits).index);
  assert.equal(sampleWith(logits, greedy, [], 0).prob, 1);
  // A repeat penalty of 2 on token 1 (5 → 2.5) makes token 3 the top; on 1 and 3, token 5.
  const pen = deriveSampler({ ...OFF, temperature: 0, repeatPenalty: 2, penaltyLastN: 4 }, 6, 8);
  assert.equal(sampleWith(logits, pen, [1], 0).token, 3);
  assert.equal(sampleWith(logits, pen, [1, 3, 1], 0).token, 5);
  // Negative logits are multiplied: −2 · 2 = −4, so it stays below 1.
  const dist = samplerDistribution(new Float32Array([-2, 1]), pen, [0]);
  assert.equal(dist.greedy, 1);
  // Every logit −∞ or NaN: token 0, as argmax.
  const dead = new Float32Array([-Infinity, NaN, -Infinity]);
  assert.equal(sampleWith(dead, deriveSampler(OFF, 3, 8), [], 0).token, 0);
  // +∞ wins.
  const inf = new Float32Array([3, Infinity, 2]);
  assert.equal(sampleWith(inf, deriveSampler(OFF, 3, 8), [], 5).token, 1);
});

Deno.test("sampler_cpu: frequency and presence penalties subtract c·f + p for tokens in the window", () => {
  const logits = new Float32Array([2, 2, 2]);
  const c = deriveSampler(
    { ...OFF, frequencyPenalty: 0.5, presencePenalty: 0.25, penaltyLastN: 8 },
    3,
    8,
  );
  const d = samplerDistribution(logits, c, [0, 0, 1]);
  // l0 = 2 − (2·0.5 + 0.25) = 0.75, l1 = 2 − 0.75 = 1.25, l2 = 2.
  const w = Array.from(d.weights);
  const e = [Math.exp(0.75 - 2), Math.exp(1.25 - 2), 1];
  const s = e.reduce((a, b) => a + b, 0), sw = w.reduce((a, b) => a + b, 0);
  for (let i = 0; i < 3; i++) assert.ok(Math.abs(w[i]! / sw - e[i]! / s) < 1e-6);
});

/** Chi-square of the counts against `p` below its 0.999 quantile; p = 0 tokens never drawn. */
function assertFrequencies(tokens: number[], p: number[], what: string): void {
  const counts = new Array(p.length).fill(0);
  for (const t of tokens) counts[t]++;
  let chi2 = 0, dof = -1;
  for (let i = 0; i < p.length; i++) {
    if (p[i] === 0) {
      assert.equal(counts[i], 0, `${what}: token ${i} has probability 0 but was drawn`);
      continue;
    }
    const e = p[i]! * tokens.length;
    chi2 += (counts[i] - e) ** 2 / e;
    dof++;
  }
  const q999: Record<number, number> = {
    1: 10.8,
    2: 13.8,
    3: 16.3,
    4: 18.5,
    5: 20.5,
    6: 22.5,
    7: 24.3,
    8: 26.1,
    9: 27.9,
  };
  assert.ok(chi2 < q999[dof]!, `${what}: chi² = ${chi2.toFixed(1)} (${dof} dof), counts ${counts}`);
}

function softmax(x: ArrayLike<number>, t = 1): number[] {
  const m = Math.max(...Array.from(x));
  const e = Array.from(x, (v) => Math.exp((v - m) / t));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / s);
}

Deno.test("sampler_cpu: frequencies follow the softmax (T = 1, T = 0.5) and the truncations", () => {
  const logits = new Float32Array([2, 1.5, 1, 0.5, 0, -0.5, -1, -4, -6, 1.2]);
  const draws = 40_000;
  const run = (p: Partial<SamplerParams>) => {
    const c = deriveSampler({ ...OFF, ...p }, logits.length, 8);
    return Array.from({ length: draws }, (_, pos) => sampleWith(logits, c, [], pos).token);
  };
  assertFrequencies(run({ seed: 3 }), softmax(logits), "T = 1");
  assertFrequencies(run({ seed: 4, temperature: 0.5 }), softmax(logits, 0.5), "T = 0.5");
  // top-k 4: ids 0, 1, 9, 2 (logits 2, 1.5, 1.2, 1), renormalised.
  const k4 = softmax([2, 1.5, 1, 0, 0, 0, 0, 0, 0, 1.2]).map((v, i) =>
    [0, 1, 2, 9].includes(i) ? v : 0
  );
  const s4 = k4.reduce((a, b) => a + b, 0);
  assertFrequencies(run({ seed: 5, topK: 4 }), k4.map((v) => v / s4), "top-k 4");
  // min-p 0.04: the floor is 2 + ln 0.04 ≈ −1.22, so ids 7 and 8 never come.
  const mp = softmax(logits).map((v, i) => i === 7 || i === 8 ? 0 : v);
  const sm = mp.reduce((a, b) => a + b, 0);
  assertFrequencies(run({ seed: 6, minP: 0.04 }), mp.map((v) => v / sm), "min-p 0.04");
  // top-p 0.5: sorted probabilities 0.343, 0.208, 0.154… cross 0.5 at the second token.
  const tp = run({ seed: 7, topP: 0.5 });
  assert.deepEqual([...new Set(tp)].sort(), [0, 1]);
});

Deno.test("sampler_cpu: same seed → same tokens; other seeds or positions → other tokens", () => {
  const rng = makeRng(5);
  const logits = Array.from({ length: 20 }, () => randomLogits(500, rng, 1.5));
  const seq = (seed: number, pos0 = 0) => {
    const s = new CpuSampler({ ...OFF, topK: 100, topP: 0.95, seed });
    return logits.map((l, k) => s.sample(l, pos0 + k).token);
  };
  assert.deepEqual(seq(42), seq(42));
  assert.notDeepEqual(seq(42), seq(43));
  assert.notDeepEqual(seq(42), seq(42, 1));
  // A seed is taken modulo 2³².
  assert.deepEqual(seq(2 ** 32 + 42), seq(42));
  // The uniform is a 24-bit fraction in [0, 1), spread evenly.
  let sum = 0;
  for (let pos = 0; pos < 20_000; pos++) {
    const u = samplerUniform(9, pos);
    assert.ok(u >= 0 && u < 1 && Number.isInteger(u * 2 ** 24));
    sum += u;
  }
  assert.ok(Math.abs(sum / 20_000 - 0.5) < 0.01);
  // PCG-RXS-M-XS of 0 and 1 (the shader computes the same u32 arithmetic).
  assert.equal(pcgHash(0), 129708002);
  assert.equal(pcgHash(1), 2831084092);
});

Deno.test("sampler_cpu: top-k 1 is the argmax; the minP floor is never drawn", () => {
  const rng = makeRng(17);
  for (let r = 0; r < 50; r++) {
    const logits = randomLogits(1000, rng, 3);
    const c = deriveSampler({ ...OFF, temperature: 1.5, topK: 1, seed: r }, 1000, 8);
    assert.equal(sampleWith(logits, c, [], r).token, argmax(logits).index);
    const m = deriveSampler({ ...OFF, temperature: 2, minP: 0.2, seed: r }, 1000, 8);
    const floor = Math.max(...logits) + Math.log(0.2);
    for (let pos = 0; pos < 40; pos++) {
      const t = sampleWith(logits, m, [], pos).token;
      assert.ok(logits[t]! >= floor - 1e-6, `token ${t} below the min-p floor`);
    }
  }
});

Deno.test("sampler_cpu: the history ring wraps and the penalties see only the window", () => {
  const n = 50;
  const logits = Float32Array.from({ length: n }, (_, i) => 10 - i * 0.1);
  const s = new CpuSampler(
    { ...OFF, temperature: 0, presencePenalty: 100, penaltyLastN: 4 },
    4,
  );
  const toks = Array.from({ length: 13 }, (_, k) => s.sample(logits, k).token);
  assert.deepEqual(toks, [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1, 2]);
  assert.deepEqual(s.history, [4, 0, 1, 2]);
  assert.equal(s.count, 13);
  // A long prompt: only its last 4 tokens are held, and they are penalised.
  s.resetHistory(Array.from({ length: 30 }, (_, i) => i % 10));
  assert.deepEqual(s.history, [6, 7, 8, 9]);
  assert.equal(s.count, 30);
  assert.equal(s.sample(logits, 30).token, 0);
  s.resetHistory([0, 1, 2, 3]);
  assert.equal(s.sample(logits, 4).token, 4);
  // A window shorter than the ring: penaltyLastN 2 of a ring of 4.
  s.setParams({ ...OFF, temperature: 0, presencePenalty: 100, penaltyLastN: 2 });
  s.resetHistory([0, 1, 2, 3]);
  assert.equal(s.sample(logits, 4).token, 0);
});

Deno.test("sampler_cpu: resolveSampling fills the documented defaults; bad values are refused", () => {
  const r = resolveSampling({ temperature: 0.3, seed: 9 });
  assert.deepEqual(r, { ...DEFAULT_SAMPLING, temperature: 0.3, seed: 9 });
  assert.deepEqual(DEFAULT_SAMPLING, {
    temperature: 0.8,
    topK: 40,
    topP: 0.95,
    minP: 0.05,
    repeatPenalty: 1,
    presencePenalty: 0,
    frequencyPenalty: 0,
    penaltyLastN: 64,
  });
  const a = resolveSampling(), b = resolveSampling();
  assert.ok(Number.isInteger(a.seed) && a.seed >= 0 && a.seed < 2 ** 32);
  assert.notEqual(a.seed, b.seed);
  assert.throws(() => new CpuSampler({ ...OFF, penaltyLastN: 65 }, 64), /penaltyLastN/);
  assert.throws(() => deriveSampler({ ...OFF, temperature: NaN }, 10, 8), /temperature/);
  assert.throws(() => deriveSampler({ ...OFF, repeatPenalty: -1 }, 10, 8), /repeatPenalty/);
  assert.throws(() => deriveSampler({ ...OFF, seed: 1.5 }, 10, 8), /seed/);
  // −1 = the whole ring; topK ≥ n is off; a tiny temperature is still a temperature.
  assert.equal(deriveSampler({ ...OFF, penaltyLastN: -1 }, 10, 8).penaltyLastN, 8);
  assert.equal(deriveSampler({ ...OFF, topK: 10 }, 10, 8).topK, 0);
  assert.equal(deriveSampler({ ...OFF, temperature: 1e-3 }, 10, 8).greedy, false);
  assert.equal(deriveSampler({ ...OFF, temperature: 1e-45 }, 10, 8).greedy, true);
});
