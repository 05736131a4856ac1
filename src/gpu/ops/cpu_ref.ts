/**
 * CPU references of the non-matmul kernels of a MoE forward pass, written
 * to follow llama.cpp's CPU path (ggml-cpu `ops.cpp`, `llama-graph.cpp`):
 * the same formulas and the same f32 roundings where ggml rounds, with
 * sums accumulated in float64 (ggml's `ggml_float`). The GPU kernels are
 * tested against these, and model-level tests run whole forward passes on
 * the CPU with them.
 *
 * Layouts are dense unless a stride says otherwise: activations `[T, …]`
 * row-major, one token per row.
 *
 * Also a seeded random generator and an array comparison for tests.
 *
 * @module
 */

const f = Math.fround;

// ---------------------------------------------------------------- helpers

/** A seeded uniform generator in [0, 1) (mulberry32): the same seed, the same numbers. */
export function makeRng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** `n` f32 values uniform in `[center − scale, center + scale)`. */
export function randomArray(n: number, rng: () => number, scale = 1, center = 0): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = center + (rng() * 2 - 1) * scale;
  return out;
}

/** How far `got` is from `want`. */
export interface Closeness {
  /** Every element within `atol + rtol·|want|` (and NaN only where `want` is NaN). */
  readonly ok: boolean;
  /** Largest absolute difference. */
  readonly maxAbs: number;
  /** Index of the worst element relative to its tolerance. */
  readonly worst: number;
  /** One line describing the worst element. */
  readonly message: string;
}

/** Compares two arrays element-wise with tolerance `atol + rtol·|want|`. */
export function compareArrays(
  got: ArrayLike<number>,
  want: ArrayLike<number>,
  atol: number,
  rtol = 0,
): Closeness {
  if (got.length !== want.length) {
    return {
      ok: false,
      maxAbs: Infinity,
      worst: -1,
      message: `length ${got.length} ≠ ${want.length}`,
    };
  }
  let maxAbs = 0, worst = -1, worstRatio = -1;
  let ok = true;
  for (let i = 0; i < want.length; i++) {
    const g = got[i]!, w = want[i]!;
    const d = Math.abs(g - w);
    const tol = atol + rtol * Math.abs(w);
    const ratio = Number.isNaN(d) ? (Number.isNaN(w) && Number.isNaN(g) ? 0 : Infinity) : d / tol;
    if (ratio > 1) ok = false;
    if (d > maxAbs) maxAbs = d;
    if (ratio > worstRatio) {
      worstRatio = ratio;
      worst = i;
    }
  }
  const message = worst < 0
    ? "empty"
    : `worst [${worst}]: got ${got[worst]}, want ${want[worst]} (max |Δ| ${
      maxAbs.toExponential(3)
    }, tol ${atol} + ${rtol}·|want|)`;
  return { ok, maxAbs, worst, message };
}

/** Numerically stable softmax as ggml computes it: f32 exps, float64 sum, f32 scale. */
export function softmax(x: ArrayLike<number>): Float32Array {
  let max = -Infinity;
  for (let i = 0; i < x.length; i++) max = Math.max(max, x[i]!);
  const out = new Float32Array(x.length);
  let sum = 0;
  for (let i = 0; i < x.length; i++) {
    out[i] = f(Math.exp(f(x[i]! - max)));
    sum += out[i]!;
  }
  const inv = f(1 / sum);
  for (let i = 0; i < x.length; i++) out[i] = f(out[i]! * inv);
  return out;
}

/** ggml's `silu`: `x / (1 + e^−x)` in f32. */
export function silu(x: number): number {
  return f(x / f(1 + f(Math.exp(-x))));
}

/** ggml's `sigmoid`: `1 / (1 + e^−x)` in f32. */
export function sigmoid(x: number): number {
  return f(1 / f(1 + f(Math.exp(-x))));
}

/**
 * ggml's CPU GELU (tanh form) with its f16 lookup table: 0 for x ≤ −10,
 * x for x ≥ 10, else the f32 formula at f16(x), rounded to f16.
 */
export function gelu(x: number): number {
  if (x <= -10) return 0;
  if (x >= 10) return f(x);
  const h = Math.f16round(x);
  const inner = f(f(0.79788456080286535587989211986876 * h) * f(1 + f(f(f(0.044715) * h) * h)));
  return Math.f16round(f(f(0.5 * h) * f(1 + f(Math.tanh(inner)))));
}

// ---------------------------------------------------------------- norm

/**
 * RMSNorm of each row of length `n`: `y = x / sqrt(mean(x²) + eps) · w`
 * (ggml `rms_norm` then `mul`), rows back to back.
 */
export function rmsNorm(
  x: Float32Array,
  n: number,
  eps: number,
  weight?: ArrayLike<number>,
): Float32Array {
  const y = new Float32Array(x.length);
  for (let r = 0; r * n < x.length; r++) {
    let sum = 0;
    for (let i = 0; i < n; i++) sum += f(x[r * n + i]! * x[r * n + i]!);
    const mean = f(sum / n);
    const scale = f(1 / f(Math.sqrt(f(mean + f(eps)))));
    for (let i = 0; i < n; i++) {
      const v = f(x[r * n + i]! * scale);
      y[r * n + i] = weight ? f(v * weight[i]!) : v;
    }
  }
  return y;
}

// ---------------------------------------------------------------- rope

/** RoPE pairing: adjacent pairs (ggml mode 0: llama, deepseek2) or halves (mode 2: neox, qwen). */
export type RopeMode = "normal" | "neox";

/** RoPE hyperparameters as ggml's `rope_ext` takes them. */
export interface RopeParams {
  /** Tokens (rows). */
  nTokens: number;
  /** Heads per token. */
  nHeads: number;
  /** Width of one head. */
  headDim: number;
  /** Elements between heads; default `headDim`. */
  headStride?: number;
  /** Elements between tokens; default `nHeads · headStride`. */
  tokenStride?: number;
  /** Dimensions rotated per head (ggml `n_dims`), even. */
  nRot: number;
  /** First rotated dimension within a head (ggml `n_offs`); default 0. */
  dimOffset?: number;
  /** Position of the first token; token t is at `pos0 + t`. */
  pos0: number;
  /** Pairing. */
  mode: RopeMode;
  /** Frequency base. */
  freqBase: number;
  /** Frequency scale; default 1. */
  freqScale?: number;
  /** YaRN extrapolation mix; default 0 (off). */
  extFactor?: number;
  /** Magnitude scale of cos/sin; default 1. */
  attnFactor?: number;
  /** YaRN beta fast; default 32. */
  betaFast?: number;
  /** YaRN beta slow; default 1. */
  betaSlow?: number;
  /** Original training context (YaRN); default 0. */
  nCtxOrig?: number;
  /** Per-pair frequency divisors (`rope_freqs`), `[nRot / 2]`. */
  freqFactors?: ArrayLike<number>;
}

/** ggml's `ggml_rope_yarn_corr_dims`: the YaRN ramp's first and last dimension pair, in f32. */
export function ropeYarnCorrDims(
  nDims: number,
  nCtxOrig: number,
  freqBase: number,
  betaFast: number,
  betaSlow: number,
): [number, number] {
  const dim = (nRot: number) =>
    f(
      f(nDims * f(Math.log(f(nCtxOrig / f(f(f(nRot) * 2) * f(Math.PI)))))) /
        f(2 * f(Math.log(f(freqBase)))),
    );
  const start = Math.floor(dim(betaFast));
  const end = Math.ceil(dim(betaSlow));
  return [Math.max(0, start), Math.min(nDims - 1, end)];
}

/** The f32 constants a RoPE kernel needs, derived once from the hyperparameters as ggml does. */
export interface RopeConstants {
  /** `freq_base^(−2 / nRot)`: the angle ratio between consecutive pairs. */
  thetaScale: number;
  /** YaRN ramp start and end (finite). */
  corr0: number;
  /** YaRN ramp end. */
  corr1: number;
  /** cos/sin scale without YaRN: `attnFactor`. */
  mscale: number;
  /** cos/sin scale with YaRN: `attnFactor · (1 + 0.1·ln(1 / freqScale))`. */
  mscaleExt: number;
}

/** Derives {@linkcode RopeConstants} (f32) from RoPE hyperparameters. */
export function ropeConstants(p: {
  nRot: number;
  freqBase: number;
  freqScale?: number;
  attnFactor?: number;
  betaFast?: number;
  betaSlow?: number;
  nCtxOrig?: number;
}): RopeConstants {
  const freqScale = f(p.freqScale ?? 1);
  const attnFactor = f(p.attnFactor ?? 1);
  const [c0, c1] = ropeYarnCorrDims(
    p.nRot,
    p.nCtxOrig ?? 0,
    p.freqBase,
    p.betaFast ?? 32,
    p.betaSlow ?? 1,
  );
  // ±1e30 behaves as ±Infinity in the ramp and keeps the kernel's params finite.
  const finite = (v: number) => Math.max(-1e30, Math.min(1e30, v));
  return {
    thetaScale: f(Math.pow(f(p.freqBase), f(-2 / p.nRot))),
    corr0: finite(c0),
    corr1: finite(c1),
    mscale: attnFactor,
    mscaleExt: f(attnFactor * f(1 + f(f(0.1) * f(Math.log(f(1 / freqScale)))))),
  };
}

/** ggml's `rope_yarn` for pair `i`: [cos, sin] of the corrected angle, scaled. */
function ropeYarn(
  thetaExtrap: number,
  i: number,
  freqScale: number,
  extFactor: number,
  c: RopeConstants,
): [number, number] {
  const thetaInterp = f(freqScale * thetaExtrap);
  let theta = thetaInterp;
  let mscale = c.mscale;
  if (extFactor !== 0) {
    const y = f(f(i - c.corr0) / Math.max(f(0.001), f(c.corr1 - c.corr0)));
    const ramp = f(1 - Math.min(1, Math.max(0, y)));
    const rampMix = f(ramp * extFactor);
    theta = f(f(thetaInterp * f(1 - rampMix)) + f(thetaExtrap * rampMix));
    mscale = c.mscaleExt;
  }
  return [f(f(Math.cos(theta)) * mscale), f(f(Math.sin(theta)) * mscale)];
}

/** RoPE (ggml `rope_ext`, forward) applied to a copy of `x` `[T, nHeads, headDim]`. */
export function rope(x: Float32Array, p: RopeParams): Float32Array {
  const out = x.slice();
  const headStride = p.headStride ?? p.headDim;
  const tokenStride = p.tokenStride ?? p.nHeads * headStride;
  const d0 = p.dimOffset ?? 0;
  const half = p.nRot / 2;
  const freqScale = f(p.freqScale ?? 1);
  const extFactor = f(p.extFactor ?? 0);
  const c = ropeConstants(p);
  for (let t = 0; t < p.nTokens; t++) {
    const cache: [number, number][] = [];
    let theta = f(p.pos0 + t);
    for (let i = 0; i < half; i++) {
      const ff = p.freqFactors ? p.freqFactors[i]! : 1;
      cache.push(ropeYarn(f(theta / ff), i, freqScale, extFactor, c));
      theta = f(theta * c.thetaScale);
    }
    for (let h = 0; h < p.nHeads; h++) {
      const base = t * tokenStride + h * headStride + d0;
      for (let i = 0; i < half; i++) {
        const [cos, sin] = cache[i]!;
        const j0 = p.mode === "normal" ? base + 2 * i : base + i;
        const j1 = p.mode === "normal" ? j0 + 1 : j0 + half;
        const x0 = x[j0]!, x1 = x[j1]!;
        out[j0] = f(f(x0 * cos) - f(x1 * sin));
        out[j1] = f(f(x0 * sin) + f(x1 * cos));
      }
    }
  }
  return out;
}

// ---------------------------------------------------------------- attention

/** Shapes and options of {@linkcode attention}. */
export interface AttentionParams {
  /** Query tokens. */
  nTokens: number;
  /** Query heads. */
  nHead: number;
  /** Key/value heads; q head h reads kv head `h / (nHead / nHeadKv)`. */
  nHeadKv: number;
  /** Key (and query) head width. */
  dK: number;
  /** Value head width. */
  dV: number;
  /** Position of the first query token; token t sees keys `0 … pos0 + t`. */
  pos0: number;
  /** Multiplies q·k (after the soft cap). */
  scale: number;
  /** Sliding window: key k visible iff `0 ≤ q − k < window`; 0 = off. */
  window?: number;
  /** One logit per head added to the softmax denominator (GPT-OSS sinks). */
  sinks?: ArrayLike<number>;
  /** `s = cap · tanh(s / cap)` before the scale; 0 = off. */
  softcap?: number;
  /** Elements between cache positions of K; default `nHeadKv · dK`. */
  kRowStride?: number;
  /** Elements between cache positions of V; default `nHeadKv · dV`. */
  vRowStride?: number;
}

/**
 * Causal attention of q `[T, nHead, dK]` against caches K `[nKv, nHeadKv, dK]`
 * and V `[nKv, nHeadKv, dV]` (row strides configurable, so V may be a
 * prefix of K's rows as in MLA). Returns `[T, nHead, dV]`. Follows ggml's
 * non-flash path: f32 scores, masked softmax with sinks, then `V·p`.
 */
export function attention(
  q: Float32Array,
  k: Float32Array,
  v: Float32Array,
  p: AttentionParams,
): Float32Array {
  const { nTokens, nHead, nHeadKv, dK, dV } = p;
  const kRow = p.kRowStride ?? nHeadKv * dK;
  const vRow = p.vRowStride ?? nHeadKv * dV;
  const group = nHead / nHeadKv;
  const window = p.window ?? 0;
  const softcap = f(p.softcap ?? 0);
  const scale = f(p.scale);
  const out = new Float32Array(nTokens * nHead * dV);
  for (let t = 0; t < nTokens; t++) {
    const qPos = p.pos0 + t;
    const first = window > 0 ? Math.max(0, qPos - window + 1) : 0;
    for (let h = 0; h < nHead; h++) {
      const kvh = Math.floor(h / group);
      const qBase = (t * nHead + h) * dK;
      const scores: number[] = [];
      for (let j = first; j <= qPos; j++) {
        let s = 0;
        for (let d = 0; d < dK; d++) s += q[qBase + d]! * k[j * kRow + kvh * dK + d]!;
        s = f(s);
        if (softcap > 0) s = f(softcap * f(Math.tanh(f(s / softcap))));
        scores.push(f(s * scale));
      }
      let max = -Infinity;
      for (const s of scores) max = Math.max(max, s);
      const sink = p.sinks ? f(p.sinks[h]!) : undefined;
      if (sink !== undefined) max = Math.max(max, sink);
      const e = scores.map((s) => f(Math.exp(f(s - max))));
      let sum = e.reduce((a, b) => a + b, 0);
      if (sink !== undefined) sum += f(Math.exp(f(sink - max)));
      const inv = f(1 / sum);
      const oBase = (t * nHead + h) * dV;
      for (let d = 0; d < dV; d++) {
        let acc = 0;
        for (let j = 0; j < e.length; j++) {
          acc += f(e[j]! * inv) * v[(first + j) * vRow + kvh * dV + d]!;
        }
        out[oBase + d] = f(acc);
      }
    }
  }
  return out;
}

// ---------------------------------------------------------------- router

/**
 * How router logits become expert probabilities: `softmax` over all experts,
 * `sigmoid` per expert (DeepSeek-V3), or `topk_softmax` (llama.cpp's
 * SOFTMAX_WEIGHT, GPT-OSS): top-k of the raw logits, softmax over the k chosen.
 */
export type Gating = "softmax" | "sigmoid" | "topk_softmax";

/** Options of {@linkcode route}. */
export interface RouterParams {
  /** Experts per layer. */
  nExpert: number;
  /** Experts chosen per token (K). */
  k: number;
  /** Probability function. */
  gating: Gating;
  /** Renormalise the chosen weights to sum to 1. */
  normalize?: boolean;
  /** Multiply the weights (skipped when 0 or 1, as llama.cpp does). */
  scale?: number;
  /** Added to the logits first (`ffn_gate_inp.bias`, GPT-OSS), `[nExpert]`. */
  logitBias?: ArrayLike<number>;
  /** Added to the probabilities for selection only (`exp_probs_b`, DeepSeek-V3), `[nExpert]`. */
  selectionBias?: ArrayLike<number>;
  /** Expert groups (group-limited routing when > 1). */
  nGroup?: number;
  /** Groups kept: those with the largest sum of their top-2 selection scores. */
  nGroupUsed?: number;
  /** i32 `[nLayer, nExpert]`: pool slot of each expert or −1 when absent. */
  residency?: Int32Array;
  /** Layer index into `residency`. */
  layer?: number;
}

/** One absent expert chosen by one token. */
export interface MissRecord {
  /** Layer. */
  layer: number;
  /** Token index within the batch. */
  token: number;
  /** Expert id. */
  expert: number;
}

/** The router's decision for a batch. */
export interface Routes {
  /** `[T, K]` chosen experts, best first (ties: lower id first). */
  ids: Uint32Array;
  /** `[T, K]` their weights. */
  weights: Float32Array;
  /** `[T, K]` pool slots (the ids when no residency table; 0xffffffff for a miss). */
  slots: Uint32Array;
  /** Chosen experts whose slot is −1, in (token, rank) order. */
  misses: MissRecord[];
  /** `[T, nExpert]` the unbiased probabilities. */
  probs: Float32Array;
}

/** Indices of the `k` largest values, largest first, ties broken by lower index. */
export function topK(values: ArrayLike<number>, k: number): number[] {
  const idx = Array.from({ length: values.length }, (_, i) => i);
  idx.sort((a, b) => values[b]! - values[a]! || a - b);
  return idx.slice(0, k);
}

/** MoE routing of logits `[T, nExpert]`, as llama.cpp's `build_moe_ffn` computes it. */
export function route(logits: Float32Array, p: RouterParams): Routes {
  const { nExpert: n, k } = p;
  const nTokens = logits.length / n;
  const ids = new Uint32Array(nTokens * k);
  const weights = new Float32Array(nTokens * k);
  const slots = new Uint32Array(nTokens * k);
  const probs = new Float32Array(nTokens * n);
  const misses: MissRecord[] = [];
  for (let t = 0; t < nTokens; t++) {
    const x = Float32Array.from(
      logits.subarray(t * n, (t + 1) * n),
      (v, e) => p.logitBias ? f(v + p.logitBias[e]!) : v,
    );
    const prob = p.gating === "softmax" ? softmax(x) : p.gating === "sigmoid" ? x.map(sigmoid) : x;
    probs.set(prob, t * n);
    const sel = Float32Array.from(prob, (v, e) => p.selectionBias ? f(v + p.selectionBias[e]!) : v);
    const nGroup = p.nGroup ?? 1;
    if (nGroup > 1) {
      const g = n / nGroup;
      const scores: number[] = [];
      for (let gi = 0; gi < nGroup; gi++) {
        const top = topK(sel.subarray(gi * g, (gi + 1) * g), 2);
        scores.push(top.reduce((s, i) => f(s + sel[gi * g + i]!), 0));
      }
      const keep = new Set(topK(scores, p.nGroupUsed ?? nGroup));
      for (let e = 0; e < n; e++) if (!keep.has(Math.floor(e / g))) sel[e] = -Infinity;
    }
    const chosen = topK(sel, k);
    let w = chosen.map((e) => prob[e]!);
    if (p.gating === "topk_softmax") w = [...softmax(w)];
    if (p.normalize) {
      const sum = Math.max(f(w.reduce((a, b) => a + b, 0)), 6.103515625e-5);
      w = w.map((v) => f(v / sum));
    }
    const scale = p.scale ?? 0;
    if (scale !== 0 && scale !== 1) w = w.map((v) => f(v * scale));
    chosen.forEach((e, r) => {
      ids[t * k + r] = e;
      weights[t * k + r] = w[r]!;
      let slot = e;
      if (p.residency) {
        slot = p.residency[(p.layer ?? 0) * n + e]!;
        if (slot < 0) {
          misses.push({ layer: p.layer ?? 0, token: t, expert: e });
          slot = 0xffffffff;
        }
      }
      slots[t * k + r] = slot;
    });
  }
  return { ids, weights, slots, misses, probs };
}

// ---------------------------------------------------------------- moe combine

/** Options of {@linkcode moeCombine}. */
export interface CombineParams {
  /** Experts per token. */
  k: number;
  /** Row width (nEmbd). */
  n: number;
  /** Shared expert output `[T, n]`. */
  shared?: Float32Array;
  /** Shared expert gate logits `[T]`: `shared · sigmoid(gate)`. */
  sharedGate?: Float32Array;
  /** Residual `[T, n]` added last. */
  residual?: Float32Array;
}

/**
 * `out[t] = Σ_k w[t,k]·y[t,k] (+ shared[t]·σ(gate[t])) (+ residual[t])`,
 * summed in f32 in the order llama.cpp adds the views.
 */
export function moeCombine(y: Float32Array, w: Float32Array, p: CombineParams): Float32Array {
  const { k, n } = p;
  const nTokens = w.length / k;
  const out = new Float32Array(nTokens * n);
  for (let t = 0; t < nTokens; t++) {
    const g = p.sharedGate ? sigmoid(p.sharedGate[t]!) : 1;
    for (let i = 0; i < n; i++) {
      let acc = f(y[(t * k) * n + i]! * w[t * k]!);
      for (let r = 1; r < k; r++) acc = f(acc + f(y[(t * k + r) * n + i]! * w[t * k + r]!));
      if (p.shared) {
        const s = p.sharedGate ? f(p.shared[t * n + i]! * g) : p.shared[t * n + i]!;
        acc = f(acc + s);
      }
      if (p.residual) acc = f(acc + p.residual[t * n + i]!);
      out[t * n + i] = acc;
    }
  }
  return out;
}

// ---------------------------------------------------------------- gated units

/** `silu(g) · u`, element-wise. */
export function swiglu(g: Float32Array, u: Float32Array): Float32Array {
  return g.map((v, i) => f(silu(v) * u[i]!));
}

/** GPT-OSS: `g′·σ(alpha·g′)·(u′ + 1)`, `g′ = min(g, limit)`, `u′ = clamp(u, ±limit)`. */
export function swigluOai(
  g: Float32Array,
  u: Float32Array,
  alpha: number,
  limit: number,
): Float32Array {
  const a = f(alpha), l = f(limit);
  return g.map((v, i) => {
    const x = Math.min(v, l);
    const y = Math.min(Math.max(u[i]!, -l), l);
    const glu = f(x / f(1 + f(Math.exp(f(a * -x)))));
    return f(glu * f(y + 1));
  });
}

/** `gelu(g) · u` with {@linkcode gelu}. */
export function geglu(g: Float32Array, u: Float32Array): Float32Array {
  return g.map((v, i) => f(gelu(v) * u[i]!));
}

/** ggml `add_id`: `y[t, r] = x[t, r] + bias[ids[t, r]]` for rows of length `n`, `k` per token. */
export function addId(
  x: Float32Array,
  bias: Float32Array,
  ids: ArrayLike<number>,
  n: number,
): Float32Array {
  return x.map((v, i) => f(v + bias[ids[Math.floor(i / n)]! * n + (i % n)]!));
}

// ---------------------------------------------------------------- sampling

/** The index of the largest value (the first of equal ones) and the value. */
export function argmax(x: ArrayLike<number>): { index: number; value: number } {
  let index = 0, value = x[0] ?? NaN;
  for (let i = 1; i < x.length; i++) {
    if (x[i]! > value) {
      value = x[i]!;
      index = i;
    }
  }
  return { index, value };
}
