/**
 * Token selection on the GPU (`shaders/sample.wgsl`), so the sampled id is
 * written where the next token's embedding reads it and no readback sits
 * between two tokens:
 *
 * - {@linkcode prepareArgmax}: greedy argmax over one row, the last row or
 *   every row of a logits batch.
 * - {@linkcode prepareSampler}: llama.cpp's sampler chain (penalties →
 *   top-k → top-p → min-p → temperature → softmax → draw) in one dispatch,
 *   with a GPU-side history ring for the penalties and a counter-based RNG
 *   keyed by (seed, position), so the same seed gives the same tokens
 *   whatever the batching. The header of the shader says how top-k and
 *   top-p are found without sorting the vocabulary.
 *
 * `src/generate/sampler_cpu.ts` is the CPU reference of the same sampler
 * (token for token on the same logits and seed), built on
 * {@linkcode deriveSampler} so both read the same constants.
 *
 * @module
 */

import type { Gpu } from "../device.ts";
import { createBuffer, ParamsBuffer, upload } from "../buffers.ts";
import { getPipeline } from "../pipeline.ts";
import { bindFrom, checkInt, placeholder } from "./elementwise.ts";
import type { ActView, Op } from "./op.ts";

const WG_SIZE = 256;

/**
 * Threads of the sampler's workgroup. The draw sums the candidates in this
 * many contiguous chunks, and the CPU reference sums in the same order.
 */
export const SAMPLER_WG_SIZE: number = WG_SIZE;

/** Largest vocabulary the sampler ranks (ids fit 24 bits of its key). */
export const SAMPLER_MAX_VOCAB: number = 1 << 24;

/** An element of a GPU buffer: `buffer[index]` (4-byte units). */
export interface BufSlot {
  /** The buffer. */
  readonly buffer: GPUBuffer;
  /** Element index. */
  readonly index: number;
}

/**
 * Which logits rows to pick from: `"first"` (row 0 only, e.g. a logits
 * buffer of the last token alone), `"last"` (row nTokens − 1 of the batch,
 * read from the step buffer), `"all"` (every row t, written to index + t).
 */
export type ArgmaxRows = "first" | "last" | "all";

/** Options of {@linkcode prepareArgmax}. */
export interface ArgmaxOptions {
  /** Logits `[T, n]` (row stride from the view). */
  logits: ActView;
  /** Vocabulary size (row length). */
  n: number;
  /** Where the token id goes (u32); with `rows: "all"` row t goes to `index + t`. */
  out: BufSlot;
  /** Where the chosen logit goes (f32), likewise; omitted = not written. */
  maxLogit?: BufSlot;
  /** Rows to pick from; default `"first"`. */
  rows?: ArgmaxRows;
  /** The step buffer; required for `rows: "last"`. */
  step?: GPUBuffer;
  /** Name for errors and timings. */
  label: string;
}

// One params struct for both entry points (they share the file's bindings).
const PARAMS = {
  n: "u32",
  offset: "u32",
  stride: "u32",
  mode: "u32",
  outOffset: "u32",
  hasValue: "u32",
  valueOffset: "u32",
  histCap: "u32",
  greedy: "u32",
  invTemp: "f32",
  topK: "u32",
  topP: "f32",
  useMinP: "u32",
  logMinP: "f32",
  penalize: "u32",
  penaltyLastN: "u32",
  repeatPenalty: "f32",
  invRepeatPenalty: "f32",
  frequencyPenalty: "f32",
  presencePenalty: "f32",
  seed: "u32",
  negInf: "f32",
} as const;

type ParamValues = Record<keyof typeof PARAMS, number>;

/**
 * The params struct in a small read-only storage buffer (see the shader
 * header for why not a uniform), uploaded only when it changes; a
 * {@linkcode ParamsBuffer}, so dispatch checks its layout against the
 * shader's `Params`.
 */
function sampleParams(gpu: Gpu, label: string): ParamsBuffer<typeof PARAMS> {
  return new ParamsBuffer(gpu, label, PARAMS);
}

const SAMPLER_OFF = {
  histCap: 1,
  greedy: 1,
  invTemp: 0,
  topK: 0,
  topP: 1,
  useMinP: 0,
  logMinP: 0,
  penalize: 0,
  penaltyLastN: 0,
  repeatPenalty: 1,
  invRepeatPenalty: 1,
  frequencyPenalty: 0,
  presencePenalty: 0,
  seed: 0,
  negInf: -Infinity,
} as const;

/** Prepares greedy selection: the first index of the largest logit of each selected row. */
export async function prepareArgmax(gpu: Gpu, o: ArgmaxOptions): Promise<Op> {
  checkInt(o.label, "n", o.n, 1);
  const rows = o.rows ?? "first";
  if (rows === "last" && !o.step) {
    throw new TypeError(`${o.label}: rows "last" reads the batch size from the step buffer.`);
  }
  const kernel = await getPipeline(gpu, "sample", { entryPoint: "argmax", constants: { WG_SIZE } });
  const logits = bindFrom(gpu, o.logits.buffer, o.logits.offset, o.n);
  const out = bindFrom(gpu, o.out.buffer, o.out.index);
  const mx = o.maxLogit ? bindFrom(gpu, o.maxLogit.buffer, o.maxLogit.index) : undefined;
  const params = sampleParams(gpu, `${o.label}.params`);
  params.write({
    n: o.n,
    offset: logits.offset,
    stride: o.logits.stride,
    mode: rows === "first" ? 0 : rows === "last" ? 1 : 2,
    outOffset: out.offset,
    hasValue: mx ? 1 : 0,
    valueOffset: mx?.offset ?? 0,
    ...SAMPLER_OFF,
  });
  return {
    label: o.label,
    kernel,
    bindings: [
      logits.binding,
      o.step ?? placeholder(gpu, "read"),
      placeholder(gpu, "write"),
      out.binding,
      mx?.binding ?? placeholder(gpu, "write"),
      placeholder(gpu, "write"),
      params.buffer,
    ],
    workgroups: rows === "all" ? (nTokens: number) => nTokens : 1,
  };
}

/**
 * Sampling parameters with every value given (the generation layer fills
 * the defaults of `SamplingParams`), with llama.cpp's meanings:
 * temperature ≤ 0 = greedy; topK ≤ 0 (or ≥ the vocabulary) = off; topP ≥ 1
 * = off; minP ≤ 0 = off (above 1 it acts as 1); penalties off when
 * penaltyLastN = 0 or repeat = 1, frequency = presence = 0;
 * penaltyLastN = −1 = the whole history ring.
 */
export interface SamplerParams {
  /** Softmax temperature; ≤ 0 = greedy (argmax of the penalised logits). */
  temperature: number;
  /** Keep the k highest-ranked tokens; ≤ 0 = off. */
  topK: number;
  /** Keep the smallest top set whose probability reaches p; ≥ 1 = off. */
  topP: number;
  /** Drop tokens less likely than minP × the top one; ≤ 0 = off. */
  minP: number;
  /** Repetition penalty (> 0; 1 = off). */
  repeatPenalty: number;
  /** Subtracted once from the logit of each token in the window. */
  presencePenalty: number;
  /** Subtracted per occurrence in the window. */
  frequencyPenalty: number;
  /** Tokens the penalties look back over; 0 = off, −1 = the history capacity. */
  penaltyLastN: number;
  /** RNG seed (taken modulo 2³²). */
  seed: number;
}

/**
 * The sampler's constants as both the GPU kernel and the CPU reference use
 * them: f32 values computed once on the CPU (1/temperature, log minP,
 * 1/repeat), so that the two compute with the same numbers.
 */
export interface SamplerConstants {
  /** Pick the argmax (temperature ≤ 0, or 1/temperature not finite). */
  readonly greedy: boolean;
  /** f32(1 / temperature) (0 when greedy). */
  readonly invTemp: number;
  /** k, or 0 when off (≤ 0 or ≥ n). */
  readonly topK: number;
  /** f32(topP); ≥ 1 = off. */
  readonly topP: number;
  /** Whether min-p is on. */
  readonly useMinP: boolean;
  /** f32(log(min(minP, 1))). */
  readonly logMinP: number;
  /** Whether the penalties are on. */
  readonly penalize: boolean;
  /** Window length (0 when off). */
  readonly penaltyLastN: number;
  /** f32(repeatPenalty): multiplies logits ≤ 0. */
  readonly repeatPenalty: number;
  /** f32(1 / repeatPenalty): multiplies logits > 0. */
  readonly invRepeatPenalty: number;
  /** f32(frequencyPenalty). */
  readonly frequencyPenalty: number;
  /** f32(presencePenalty). */
  readonly presencePenalty: number;
  /** Seed as a u32. */
  readonly seed: number;
}

function finite(label: string, field: string, v: number): number {
  if (typeof v !== "number" || !Number.isFinite(v)) {
    throw new RangeError(`${label}: sampling ${field} = ${v} must be a finite number.`);
  }
  return v;
}

/**
 * Checks `p` and derives the constants for a vocabulary of `n` tokens and a
 * history ring of `historyCapacity` tokens. Throws a RangeError naming the
 * field for a value that is not a finite number, a non-integer topK,
 * penaltyLastN or seed, repeatPenalty ≤ 0, or a window longer than the ring.
 */
export function deriveSampler(
  p: SamplerParams,
  n: number,
  historyCapacity: number,
  label = "sampler",
): SamplerConstants {
  const f = Math.fround;
  const temperature = finite(label, "temperature", p.temperature);
  const topK = finite(label, "topK", p.topK);
  const topP = finite(label, "topP", p.topP);
  const minP = finite(label, "minP", p.minP);
  const repeat = finite(label, "repeatPenalty", p.repeatPenalty);
  const freq = finite(label, "frequencyPenalty", p.frequencyPenalty);
  const presence = finite(label, "presencePenalty", p.presencePenalty);
  const lastN = finite(label, "penaltyLastN", p.penaltyLastN);
  const seed = finite(label, "seed", p.seed);
  if (!Number.isInteger(topK)) throw new RangeError(`${label}: topK = ${topK} is not an integer.`);
  if (!Number.isInteger(seed)) throw new RangeError(`${label}: seed = ${seed} is not an integer.`);
  if (!(repeat > 0)) {
    throw new RangeError(`${label}: repeatPenalty = ${repeat} must be > 0 (1 = off).`);
  }
  if (!Number.isInteger(lastN) || lastN < -1 || lastN > historyCapacity) {
    throw new RangeError(
      `${label}: penaltyLastN = ${lastN} must be an integer in −1…${historyCapacity} ` +
        `(the history capacity; give the sampler a larger historyCapacity).`,
    );
  }
  const window = lastN === -1 ? historyCapacity : lastN;
  const invTemp = temperature > 0 ? f(1 / temperature) : 0;
  const greedy = !(temperature > 0) || !Number.isFinite(invTemp);
  return {
    greedy,
    invTemp: greedy ? 0 : invTemp,
    topK: topK > 0 && topK < n ? topK : 0,
    topP: f(topP),
    useMinP: minP > 0,
    logMinP: minP > 0 ? f(Math.log(Math.min(minP, 1))) : 0,
    penalize: window > 0 && !(repeat === 1 && freq === 0 && presence === 0),
    penaltyLastN: window,
    repeatPenalty: f(repeat),
    invRepeatPenalty: f(1 / repeat),
    frequencyPenalty: f(freq),
    presencePenalty: f(presence),
    seed: ((seed % 0x100000000) + 0x100000000) % 0x100000000,
  };
}

/** Which logits row {@linkcode prepareSampler} samples: row 0, or the batch's last row. */
export type SamplerRows = "first" | "last";

/** Options of {@linkcode prepareSampler}. */
export interface SamplerOptions {
  /** Logits: one f32 row `[n]` at the view's offset (or `[T, n]` rows with `rows: "last"`). */
  logits: ActView;
  /** Vocabulary size (row length), at most {@linkcode SAMPLER_MAX_VOCAB}. */
  n: number;
  /** Initial parameters (change them per request with `setParams`). */
  params: SamplerParams;
  /**
   * The step buffer: the RNG counter is the position of the sampled row's
   * token, `step[pos0] + step[nTokens] − 1`, and `rows: "last"` reads the row from it.
   */
  step: GPUBuffer;
  /** Where the sampled id goes (u32): the engine's token buffer, so the next step embeds it. */
  out: BufSlot;
  /** Where the sampled token's probability goes (f32; 1 when greedy); omitted = not written. */
  outProb?: BufSlot;
  /** Which row; default `"first"`. */
  rows?: SamplerRows;
  /** Tokens the history ring holds; default max(64, params.penaltyLastN). */
  historyCapacity?: number;
  /** Name for errors and timings. */
  label: string;
}

/** A prepared GPU sampler: its op and the per-request state it owns. */
export interface GpuSampler {
  /** The op to record after the logits (one dispatch of one workgroup). */
  readonly ops: readonly Op[];
  /**
   * The history ring, u32 `[1 + historyCapacity]`: `[0]` tokens appended so
   * far (count), `[1 + j % historyCapacity]` the j-th. The kernel appends
   * every sampled token.
   */
  readonly history: GPUBuffer;
  /** Tokens the ring holds. */
  readonly historyCapacity: number;
  /** The parameters in force. */
  readonly params: SamplerParams;
  /** Rewrites the params buffer (queue-ordered: takes effect from the next submit). */
  setParams(p: SamplerParams): void;
  /**
   * Samples logits row `row` of the logits view (rows `stride` apart) into
   * element `outIndex` after the `out` slot (queue-ordered, like `setParams`):
   * for a batch of several sequences whose rows change between windows.
   */
  retarget(row: number, outIndex: number): void;
  /** Writes the ring from the CPU: the request's prompt (or no tokens) as the history. */
  resetHistory(tokens: ArrayLike<number>): void;
  /** Frees the buffers the sampler owns. */
  destroy(): void;
}

/**
 * Prepares the full sampler over one logits row: the op writes the sampled
 * id to `out` and appends it to the history ring. Call `resetHistory` at
 * the start of each request (the prompt tokens, as llama.cpp's server does,
 * or none), `setParams` when its parameters differ.
 *
 * @example
 * ```ts ignore
 * const sampler = await prepareSampler(gpu, {
 *   logits: { buffer: logitsBuf, offset: 0, stride: nVocab },
 *   n: nVocab,
 *   params: { temperature: 0.8, topK: 40, topP: 0.95, minP: 0.05, repeatPenalty: 1,
 *     presencePenalty: 0, frequencyPenalty: 0, penaltyLastN: 64, seed: 42 },
 *   step, out: { buffer: tokens, index: 0 }, label: "sampler",
 * });
 * sampler.resetHistory(promptIds);
 * recordOps(encoder, [...forwardOps, ...sampler.ops], 1);
 * ```
 */
export async function prepareSampler(gpu: Gpu, o: SamplerOptions): Promise<GpuSampler> {
  checkInt(o.label, "n", o.n, 1);
  if (o.n > SAMPLER_MAX_VOCAB) {
    throw new RangeError(`${o.label}: n = ${o.n} is over ${SAMPLER_MAX_VOCAB} tokens.`);
  }
  const cap = o.historyCapacity ?? Math.max(64, o.params.penaltyLastN);
  checkInt(o.label, "historyCapacity", cap, 1);
  const kernel = await getPipeline(gpu, "sample", { entryPoint: "sample", constants: { WG_SIZE } });
  const rows = o.rows ?? "first";
  const logits = bindFrom(gpu, o.logits.buffer, o.logits.offset, o.n);
  const out = bindFrom(gpu, o.out.buffer, o.out.index);
  const prob = o.outProb ? bindFrom(gpu, o.outProb.buffer, o.outProb.index) : undefined;
  const history = createBuffer(gpu, {
    label: `${o.label}.history`,
    data: new Uint32Array(1 + cap),
  });
  const scratch = createBuffer(gpu, { label: `${o.label}.scratch`, size: 8 * o.n });
  const params = sampleParams(gpu, `${o.label}.params`);
  const fixed = {
    n: o.n,
    offset: logits.offset,
    stride: o.logits.stride,
    mode: rows === "first" ? 0 : 1,
    outOffset: out.offset,
    hasValue: prob ? 1 : 0,
    valueOffset: prob?.offset ?? 0,
    histCap: cap,
    negInf: -Infinity,
  };
  let current = { ...o.params };
  const write = (p: SamplerParams) => {
    const c = deriveSampler(p, o.n, cap, o.label);
    const values: ParamValues = {
      ...fixed,
      greedy: c.greedy ? 1 : 0,
      invTemp: c.invTemp,
      topK: c.topK,
      topP: c.topP,
      useMinP: c.useMinP ? 1 : 0,
      logMinP: c.logMinP,
      penalize: c.penalize ? 1 : 0,
      penaltyLastN: c.penaltyLastN,
      repeatPenalty: c.repeatPenalty,
      invRepeatPenalty: c.invRepeatPenalty,
      frequencyPenalty: c.frequencyPenalty,
      presencePenalty: c.presencePenalty,
      seed: c.seed,
    };
    params.write(values);
    current = { ...p };
  };
  write(o.params);
  return {
    ops: [{
      label: o.label,
      kernel,
      bindings: [
        logits.binding,
        o.step,
        history,
        out.binding,
        prob?.binding ?? placeholder(gpu, "write"),
        scratch,
        params.buffer,
      ],
      workgroups: 1,
    }],
    history,
    historyCapacity: cap,
    get params() {
      return current;
    },
    setParams: write,
    retarget(row: number, outIndex: number) {
      checkInt(o.label, "row", row, 0);
      checkInt(o.label, "outIndex", outIndex, 0);
      fixed.offset = logits.offset + row * o.logits.stride;
      fixed.outOffset = out.offset + outIndex;
      write(current);
    },
    resetHistory(tokens: ArrayLike<number>) {
      upload(gpu, history, historyRing(tokens, cap, o.label));
    },
    destroy() {
      params.buffer.destroy();
      history.destroy();
      scratch.destroy();
    },
  };
}

/**
 * The history ring `[count, ring…]` (u32 `[1 + capacity]`) holding `tokens`
 * as if appended one by one: token j at `1 + j % capacity`.
 */
export function historyRing(
  tokens: ArrayLike<number>,
  capacity: number,
  label = "sampler",
): Uint32Array {
  const ring = new Uint32Array(1 + capacity);
  ring[0] = tokens.length;
  for (let j = Math.max(0, tokens.length - capacity); j < tokens.length; j++) {
    const t = tokens[j]!;
    if (!Number.isInteger(t) || t < 0 || t > 0xffffffff) {
      throw new RangeError(`${label}: history token ${j} = ${t} is not a token id.`);
    }
    ring[1 + (j % capacity)] = t;
  }
  return ring;
}
