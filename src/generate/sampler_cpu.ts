/**
 * The token sampler on the CPU: the reference of the GPU sampler
 * (`src/gpu/ops/sample.ts`, `shaders/sample.wgsl`) and a fallback where no
 * GPU sampler runs. Same chain as llama.cpp's default (penalties → top-k →
 * top-p → min-p → temperature → softmax → draw), same constants
 * ({@linkcode deriveSampler}), same counter-based random number per
 * (seed, position), and the draw's sums in the GPU's order, so both pick the
 * same token for the same logits, history and seed (they could differ only
 * when a cut or the draw falls within float rounding of a boundary, where
 * `exp` or the top-p masses of the two sides differ in the last bits; none
 * in 14 400 random draws). Rankings are partial where they can be: a heap
 * for top-k and for the head of the top-p walk (~10 ms a token at 152k
 * tokens with llama.cpp's defaults; ~40 ms with top-k off and a flat top-p
 * set, which needs a full sort).
 *
 * @example
 * ```ts
 * import { CpuSampler, resolveSampling } from "./sampler_cpu.ts";
 *
 * const sampler = new CpuSampler(resolveSampling({ temperature: 0.7, seed: 1 }));
 * sampler.resetHistory([1, 2, 3]);
 * const { token } = sampler.sample(new Float32Array([0.1, 2, 0.5, -1]), 3);
 * console.log(token);
 * ```
 *
 * @module
 */

import {
  deriveSampler,
  SAMPLER_WG_SIZE,
  type SamplerConstants,
  type SamplerParams,
} from "../gpu/ops/sample.ts";
import type { SamplingParams } from "./types.ts";

const f = Math.fround;
const FLT_MAX = 3.4028234663852886e38;
const ID_MASK = 0xffffff;
const ID_PACK = 1 << 21;

/** The defaults of `SamplingParams` (llama.cpp's common defaults), seed aside. */
export const DEFAULT_SAMPLING: Readonly<Omit<SamplerParams, "seed">> = Object.freeze({
  temperature: 0.8,
  topK: 40,
  topP: 0.95,
  minP: 0.05,
  repeatPenalty: 1,
  presencePenalty: 0,
  frequencyPenalty: 0,
  penaltyLastN: 64,
});

/**
 * `p` with the documented defaults filled in; a missing seed becomes a
 * random u32, drawn here, so that a request keeps one seed throughout.
 */
export function resolveSampling(p: SamplingParams = {}): SamplerParams {
  const seed = p.seed ?? crypto.getRandomValues(new Uint32Array(1))[0]!;
  return {
    temperature: p.temperature ?? DEFAULT_SAMPLING.temperature,
    topK: p.topK ?? DEFAULT_SAMPLING.topK,
    topP: p.topP ?? DEFAULT_SAMPLING.topP,
    minP: p.minP ?? DEFAULT_SAMPLING.minP,
    repeatPenalty: p.repeatPenalty ?? DEFAULT_SAMPLING.repeatPenalty,
    presencePenalty: p.presencePenalty ?? DEFAULT_SAMPLING.presencePenalty,
    frequencyPenalty: p.frequencyPenalty ?? DEFAULT_SAMPLING.frequencyPenalty,
    penaltyLastN: p.penaltyLastN ?? DEFAULT_SAMPLING.penaltyLastN,
    seed,
  };
}

/** The PCG-RXS-M-XS hash of a u32 (as the shader's `pcg`). */
export function pcgHash(v: number): number {
  const state = (Math.imul(v >>> 0, 747796405) + 2891336453) >>> 0;
  const word = Math.imul(((state >>> ((state >>> 28) + 4)) ^ state) >>> 0, 277803737) >>> 0;
  return ((word >>> 22) ^ word) >>> 0;
}

/**
 * The sampler's uniform number for (seed, position): `pcg(pcg(seed) +
 * position)`, its top 24 bits as a float in [0, 1), exact in f32.
 */
export function samplerUniform(seed: number, position: number): number {
  const h = pcgHash((pcgHash(seed) + (position >>> 0)) >>> 0);
  return (h >>> 8) / 16777216;
}

/** A sampled token. */
export interface SampleResult {
  /** Token id. */
  token: number;
  /** Its probability in the distribution it was drawn from (1 when greedy). */
  prob: number;
}

const keyBuf = new Float32Array(1);
const keyBits = new Uint32Array(keyBuf.buffer);

function sanitize(v: number): number {
  if (v !== v) return -Infinity;
  if (v === 0) return 0;
  return Math.min(f(v), FLT_MAX);
}

// Orderable bits of an f32 (as the shader's ordKey).
function ordKey(v: number): number {
  keyBuf[0] = v;
  const b = keyBits[0]!;
  return (b >>> 31) !== 0 ? (~b) >>> 0 : (b | 0x80000000) >>> 0;
}

// Whether (key, id) ranks at or above the cut (the shader's keyGE).
function atOrAbove(key: number, id: number, cut: Cut): boolean {
  return key > cut.hi || (key === cut.hi && ID_MASK - id >= cut.lo);
}

interface Cut {
  hi: number;
  lo: number;
}

/**
 * The distribution a draw is made from: the candidates in id order (after
 * top-k) with their weights exp((l − M)/T) (0 for those that top-p or
 * min-p cut), or the greedy token.
 */
export interface SamplerDistribution {
  /** The token when the choice is greedy (temperature ≤ 0, or every logit −∞). */
  greedy?: number;
  /** Candidate ids, ascending. */
  ids: Uint32Array;
  /** Their unnormalised weights (f32), 0 for cut tokens. */
  weights: Float32Array;
}

/**
 * The penalised, truncated, tempered distribution of {@linkcode sampleWith}
 * (everything but the draw): `window` holds the tokens the penalties look
 * at (the last `c.penaltyLastN` of the history, any order).
 */
export function samplerDistribution(
  logits: ArrayLike<number>,
  c: SamplerConstants,
  window: readonly number[],
): SamplerDistribution {
  const n = logits.length;
  const work = new Float32Array(n);
  for (let i = 0; i < n; i++) work[i] = sanitize(logits[i]!);
  if (c.penalize && window.length > 0) {
    const counts = new Map<number, number>();
    for (const t of window) counts.set(t, (counts.get(t) ?? 0) + 1);
    for (const [t, count] of counts) {
      if (t >= n) continue;
      let l = work[t]!;
      l = l <= 0 ? f(l * c.repeatPenalty) : f(l * c.invRepeatPenalty);
      l = f(l - f(f(count * c.frequencyPenalty) + c.presencePenalty));
      work[t] = sanitize(l);
    }
  }
  let arg = 0;
  for (let i = 1; i < n; i++) if (work[i]! > work[arg]!) arg = i;
  const max = work[arg]!;
  if (c.greedy || max < -FLT_MAX) {
    return { greedy: arg, ids: Uint32Array.of(arg), weights: Float32Array.of(1) };
  }
  const keys = new Uint32Array(n);
  for (let i = 0; i < n; i++) keys[i] = ordKey(work[i]!);

  // top-k: the k highest-ranked ids, back in id order.
  let ids: Uint32Array = Uint32Array.from({ length: n }, (_, i) => i);
  if (c.topK > 0) ids = headByRank(ids, keys, c.topK).sort();
  const m = ids.length;

  // top-p: Z over the list in the GPU's chunk order, then the ranked walk
  // over a head of the ranking that grows until the walk ends inside it.
  const cut: Cut = { hi: 0, lo: 0 };
  if (c.topP < 1) {
    const e = (id: number) => f(Math.exp(f(work[id]! - max)));
    const z = chunkSum(m, (j) => e(ids[j]!));
    const limit = f(c.topP * z);
    for (let head = 256;; head = head < 4096 ? 4096 : m) {
      const ranked = headByRank(ids, keys, head);
      // The mass before each token in double precision: the GPU's bucket sums are
      // nearly exact, a long f32 running sum (llama.cpp's) is not.
      let before = 0, r = 1;
      for (; r < ranked.length; r++) {
        before += e(ranked[r - 1]!);
        if (!(before < limit)) break;
      }
      if (r < ranked.length || ranked.length === m) {
        const last = ranked[r - 1]!;
        cut.hi = keys[last]!;
        cut.lo = ID_MASK - last;
        break;
      }
    }
  }
  if (c.useMinP) {
    const minHi = ordKey(sanitize(f(max + c.logMinP)));
    if (minHi > cut.hi || (minHi === cut.hi && 0 >= cut.lo)) {
      cut.hi = minHi;
      cut.lo = 0;
    }
  }
  const weights = new Float32Array(m);
  for (let j = 0; j < m; j++) {
    const id = ids[j]!;
    if (atOrAbove(keys[id]!, id, cut)) weights[j] = Math.exp(f(f(work[id]! - max) * c.invTemp));
  }
  return { ids, weights };
}

/**
 * Draws from a {@linkcode samplerDistribution} with the uniform number of
 * (seed, position), walking the candidates in id order with the GPU's
 * chunked f32 sums.
 */
export function drawFrom(d: SamplerDistribution, seed: number, position: number): SampleResult {
  if (d.greedy !== undefined) return { token: d.greedy, prob: 1 };
  const q = d.weights, m = q.length;
  const ch = Math.ceil(m / SAMPLER_WG_SIZE);
  const parts = new Float32Array(SAMPLER_WG_SIZE);
  for (let t = 0; t < SAMPLER_WG_SIZE; t++) {
    let s = 0;
    for (let j = Math.min(t * ch, m); j < Math.min(t * ch + ch, m); j++) s = f(s + q[j]!);
    parts[t] = s;
  }
  let total = 0;
  for (const s of parts) total = f(total + s);
  const goal = f(samplerUniform(seed, position) * total);
  let pick = -1, excl = 0;
  for (let t = 0; t < SAMPLER_WG_SIZE && pick < 0; t++) {
    const next = f(excl + parts[t]!);
    if (parts[t]! > 0 && next > goal) {
      let r = 0;
      for (let j = t * ch; j < Math.min(t * ch + ch, m); j++) {
        r = f(r + q[j]!);
        if (q[j]! > 0 && f(excl + r) > goal) {
          pick = j;
          break;
        }
      }
    }
    excl = next;
  }
  if (pick < 0) {
    pick = m - 1;
    while (pick > 0 && !(q[pick]! > 0)) pick--;
  }
  return { token: d.ids[pick]!, prob: f(q[pick]! / total) };
}

/**
 * Samples one token from `logits` (f32 `[n]`) with the constants of
 * {@linkcode deriveSampler}: `window` holds the tokens the penalties look
 * at (the last `c.penaltyLastN` of the history, any order), `position` is
 * the RNG counter (the position of the logits' token).
 */
export function sampleWith(
  logits: ArrayLike<number>,
  c: SamplerConstants,
  window: readonly number[],
  position: number,
): SampleResult {
  return drawFrom(samplerDistribution(logits, c, window), c.seed, position);
}

// The `k` highest-ranked of `ids` (higher key, then lower id first), in rank
// order: a min-heap of the best k so far, O(n log k), or a sort when k is large.
function headByRank(ids: Uint32Array, keys: Uint32Array, k: number): Uint32Array {
  const byRank = (a: number, b: number) => keys[b]! - keys[a]! || a - b;
  if (k * 16 >= ids.length) {
    if (keys.length > ID_PACK) return ids.slice().sort(byRank).subarray(0, k);
    // key·2²¹ + (2²¹ − 1 − id) is exact in a double and sorts natively.
    const packed = Float64Array.from(ids, (id) => keys[id]! * ID_PACK + (ID_PACK - 1 - id));
    packed.sort();
    const out = new Uint32Array(Math.min(k, ids.length));
    for (let r = 0; r < out.length; r++) {
      out[r] = ID_PACK - 1 - (packed[packed.length - 1 - r]! % ID_PACK);
    }
    return out;
  }
  // below(a, b): a ranks after b.
  const below = (a: number, b: number) => keys[a]! < keys[b]! || (keys[a] === keys[b] && a > b);
  const heap = new Uint32Array(k);
  let size = 0;
  const siftDown = (i: number) => {
    for (;;) {
      const l = 2 * i + 1, r = l + 1;
      let w = i;
      if (l < size && below(heap[l]!, heap[w]!)) w = l;
      if (r < size && below(heap[r]!, heap[w]!)) w = r;
      if (w === i) return;
      const t = heap[i]!;
      heap[i] = heap[w]!;
      heap[w] = t;
      i = w;
    }
  };
  for (const id of ids) {
    if (size < k) {
      let i = size++;
      heap[i] = id;
      while (i > 0) {
        const p = (i - 1) >> 1;
        if (!below(heap[i]!, heap[p]!)) break;
        const t = heap[i]!;
        heap[i] = heap[p]!;
        heap[p] = t;
        i = p;
      }
    } else if (below(heap[0]!, id)) {
      heap[0] = id;
      siftDown(0);
    }
  }
  return heap.sort(byRank);
}

// Σ weight(j) for j < m: WG_SIZE contiguous chunks summed in order, then the chunk sums.
function chunkSum(m: number, weight: (j: number) => number): number {
  const ch = Math.ceil(m / SAMPLER_WG_SIZE);
  let total = 0;
  for (let t = 0; t < SAMPLER_WG_SIZE; t++) {
    let s = 0;
    for (let j = Math.min(t * ch, m); j < Math.min(t * ch + ch, m); j++) s = f(s + weight(j));
    total = f(total + s);
  }
  return total;
}

/**
 * A stateful CPU sampler: parameters, a history ring like the GPU's, and
 * `sample` appending each token it picks.
 */
export class CpuSampler {
  /** Tokens the history ring holds. */
  readonly historyCapacity: number;
  #params: SamplerParams;
  #ring: number[] = [];
  #count = 0;

  /** A sampler with `params`; the ring holds `historyCapacity` tokens (default max(64, penaltyLastN)). */
  constructor(params: SamplerParams, historyCapacity?: number) {
    this.historyCapacity = historyCapacity ?? Math.max(64, params.penaltyLastN);
    if (!Number.isInteger(this.historyCapacity) || this.historyCapacity < 1) {
      throw new RangeError(`CpuSampler: historyCapacity = ${this.historyCapacity} must be ≥ 1.`);
    }
    deriveSampler(params, 1, this.historyCapacity, "CpuSampler");
    this.#params = { ...params };
  }

  /** The parameters in force. */
  get params(): SamplerParams {
    return this.#params;
  }

  /** Replaces the parameters (checked as the GPU sampler does). */
  setParams(p: SamplerParams): void {
    deriveSampler(p, 1, this.historyCapacity, "CpuSampler");
    this.#params = { ...p };
  }

  /** Sets the history to `tokens` (e.g. the prompt). */
  resetHistory(tokens: ArrayLike<number>): void {
    this.#ring = Array.from(tokens).slice(-this.historyCapacity);
    this.#count = tokens.length;
  }

  /** Tokens appended so far (prompt included). */
  get count(): number {
    return this.#count;
  }

  /** The ring's tokens, oldest first (at most `historyCapacity`). */
  get history(): readonly number[] {
    return this.#ring;
  }

  /** Samples from `logits` at `position` (the RNG counter) and appends the token. */
  sample(logits: ArrayLike<number>, position: number): SampleResult {
    const c = deriveSampler(this.#params, logits.length, this.historyCapacity, "CpuSampler");
    const window = c.penaltyLastN > 0 ? this.#ring.slice(-c.penaltyLastN) : [];
    const r = sampleWith(logits, c, window, position);
    this.#ring.push(r.token);
    if (this.#ring.length > this.historyCapacity) this.#ring.shift();
    this.#count++;
    return r;
  }
}
