/**
 * Synthetic MoE models: GGUF files with seeded random weights, laid out and
 * described exactly as llama.cpp expects converted models of each supported
 * architecture to be. Tests generate them (nothing can be downloaded), and the
 * server serves one as its built-in demo model.
 *
 * Weights are drawn so that the model's outputs are informative rather than
 * flat: projections are N(0, 1/fan_in) so activations keep unit scale, norms
 * are near 1 with some jitter (so an engine that skips one is caught), the
 * router's logits have a spread of several units (so expert choices are
 * rarely near-ties), and the output head is scaled so the logits have a
 * chosen standard deviation (so greedy choices have clear top-1/top-2 gaps).
 *
 * Each tensor draws from its own random stream, seeded from the spec's seed
 * and the tensor's name: the same spec gives the same bytes, and changing one
 * tensor's shape (the vocabulary size, say) leaves the others unchanged. F32
 * and F16 files of one spec hold the same values up to rounding.
 *
 * ```ts
 * import { demoModelSpec, syntheticModel } from "./synthetic.ts";
 * import { serializeGguf } from "../gguf/writer.ts";
 * const bytes = serializeGguf(syntheticModel(demoModelSpec()));
 * ```
 *
 * @module
 */

import { Keys, Tensors } from "../gguf/names.ts";
import { GgmlType } from "../gguf/types.ts";
import { type GgufValue, gv } from "../gguf/value.ts";
import type { GgufLazyTensorSpec, GgufWriteSpec } from "../gguf/writer.ts";
import { f32ToF16Array } from "../gguf/f16.ts";
import { Rng } from "../util/rng.ts";
import { builtinTokenizer, type TokenizerMetadata } from "./vocab.ts";
import type { ModelConfig, TensorPlanEntry } from "./config.ts";
import {
  type ArchOnlyField,
  type ArchSpec,
  type Init,
  normalInit,
  type ResolvedSyntheticSpec,
} from "./arch.ts";
import { archSpec, type SyntheticArch, syntheticArchitectures } from "./registry.ts";

export type { SyntheticArch } from "./registry.ts";

/** The architectures the generator writes: every registered one with generator hints. */
export const SYNTHETIC_ARCHS: readonly SyntheticArch[] = syntheticArchitectures();

/** The weight types the generator writes itself (quantised types come from llama.cpp's quantiser). */
export type SyntheticWeightType = "F32" | "F16";

/** Everything that defines a synthetic model. */
export interface SyntheticSpec {
  /** `general.architecture`: one of {@linkcode SYNTHETIC_ARCHS} (`llama` = Mixtral-style experts). */
  arch: SyntheticArch;
  /** `general.name` (default `"od-moe synthetic <arch>"`). */
  name?: string;
  /** Hidden size. */
  nEmbd: number;
  /** Number of transformer blocks. */
  nLayer: number;
  /** Query heads. */
  nHead: number;
  /** Key/value heads; must divide `nHead` (`olmoe`: equal it; `deepseek2`: 1, the shared latent). */
  nHeadKv: number;
  /**
   * Per-head size of q, k and v (default `nEmbd / nHead`). Written as
   * `attention.key_length`, `attention.value_length` and
   * `rope.dimension_count`. `qwen2moe` and `olmoe` require
   * `nHead * headDim === nEmbd`. Unused by `deepseek2` (see the MLA fields).
   */
  headDim?: number;
  /**
   * Dimensions of each head that RoPE rotates (`rope.dimension_count`;
   * default `headDim`; even, at most `headDim`). Unused by `deepseek2`
   * (`qkRopeDim`).
   */
  ropeDim?: number;
  /** Width of one routed expert's FFN. */
  nFfExp: number;
  /** Width of the shared expert (`qwen2moe`, `qwen35moe`, `qwen3next`: required). */
  nFfShexp?: number;
  /** `qwen35moe`, `qwen3next`: the gated DeltaNet layers' shape, required. */
  ssm?: SyntheticSsm;
  /** `qwen35moe`, `qwen3next`: block i is full attention iff (i + 1) % interval == 0 (default 4). */
  fullAttnInterval?: number;
  /** `qwen3next`: write the older converters' fused `ssm_in` instead of `attn_qkv` + `attn_gate`. */
  legacyInProj?: boolean;
  /** `deepseek2`: rank of the q compression; 0 = the V2-Lite shape, one `attn_q` (default 0). */
  qLoraRank?: number;
  /** `deepseek2`: width of the cached latent (`kv_lora_rank`), required. */
  kvLoraRank?: number;
  /** `deepseek2`: per-head width of the non-rotated q/k part, required. */
  qkNopeDim?: number;
  /** `deepseek2`: per-head width of the rotated part (`rope.dimension_count`), required, even. */
  qkRopeDim?: number;
  /** `deepseek2`: per-head value width, required. */
  vHeadDim?: number;
  /** `deepseek2`: leading blocks with a dense FFN instead of experts (default 0). */
  nLayerDenseLead?: number;
  /** `deepseek2`: width of that dense FFN (`feed_forward_length`). */
  nFf?: number;
  /** `deepseek2`: shared experts, each `nFfExp` wide (default 1; llama.cpp needs ≥ 1). */
  nExpertShared?: number;
  /** `deepseek2`: router probabilities, `expert_gating_func` (default softmax). */
  gating?: "softmax" | "sigmoid";
  /** `deepseek2`: renormalise the top-k weights (`expert_weights_norm`, default false). */
  expertWeightsNorm?: boolean;
  /** `deepseek2`: the routed scaling factor (`expert_weights_scale`; 0 = not written). */
  expertWeightsScale?: number;
  /** `deepseek2`: expert groups for group-limited routing (default 1 = none). */
  nExpertGroups?: number;
  /** `deepseek2`: groups a token may route into. */
  nExpertGroupsUsed?: number;
  /** `deepseek2`: write the selection-only expert bias `exp_probs_b` (default false). */
  expProbsBias?: boolean;
  /**
   * `deepseek2`: the `general.architecture` written, for files of other
   * models that llama.cpp runs with the deepseek2 graph (`"mistral4"`,
   * Mistral-Small-4; default `"deepseek2"`). Keys take its prefix.
   */
  archName?: string;
  /**
   * `deepseek2`: multi-token-prediction blocks after the `nLayer` trunk
   * blocks (`nextn_predict_layers`, GLM-4.7-Flash has 1; default 0). Each is
   * a full MoE block plus its `nextn.*` tensors; `block_count` counts them.
   */
  nNextn?: number;
  /** YaRN scaling factor (`rope.scaling.factor` with type yarn; 0 = no scaling, the default). */
  yarnFactor?: number;
  /** YaRN's original context (`rope.scaling.original_context_length`). */
  yarnOrigCtx?: number;
  /** `deepseek2`: HF's `mscale_all_dim` (written × 0.1 as `rope.scaling.yarn_log_multiplier`; 0 = none). */
  yarnMscaleAllDim?: number;
  /** `gpt-oss`: the sliding window of its even blocks, required. */
  slidingWindow?: number;
  /** Routed experts per layer. */
  nExpert: number;
  /** Experts chosen per token (top-k). */
  nExpertUsed: number;
  /** `context_length`: the training context. */
  nCtx: number;
  /** `rope.freq_base`. */
  ropeBase: number;
  /** `attention.layer_norm_rms_epsilon`. */
  rmsEps: number;
  /**
   * Omit `output.weight` so that llama.cpp uses `token_embd.weight` as the
   * output head (`llama` and `qwen3moe`; `qwen2moe` requires `output.weight`).
   */
  tiedOutput?: boolean;
  /** Type of the matrices (default `"F32"`); norms, biases and routers stay F32. */
  weightType?: SyntheticWeightType;
  /** Seed of every random stream. */
  seed: number;
  /** The tokenizer (default: {@linkcode builtinTokenizer}). */
  vocab?: TokenizerMetadata;
  /** Standard deviation of the output logits (default 4). */
  logitStd?: number;
  /** Standard deviation of the router logits (default 3). */
  routerStd?: number;
}

/** The gated DeltaNet layers' shape (`qwen35moe`, `qwen3next`). */
export interface SyntheticSsm {
  /** Conv kernel width (`ssm.conv_kernel`). */
  convKernel: number;
  /** Width of each q/k/v head and of the state (`ssm.state_size`). */
  stateSize: number;
  /** Value heads (`ssm.time_step_rank`). */
  nVHeads: number;
  /** q/k heads (`ssm.group_count`), dividing nVHeads. */
  nKHeads: number;
}

/** One tensor the generator writes: its name and ggml shape. */
export interface SyntheticTensorInfo {
  /** Full tensor name (`blk.0.ffn_up_exps.weight`). */
  readonly name: string;
  /** ggml dimension order: `shape[0]` is the row length. */
  readonly shape: readonly number[];
}

/** Standard deviation of the token embeddings of a model with a tied output head. */
const TIED_EMBD_STD = 0.1;

/** `enum llama_ftype` values for the types the generator writes. */
const FILE_TYPE: Record<SyntheticWeightType, number> = { F32: 0, F16: 1 };

/** Every arch-only spec field, for the "applies to … only" check. */
const ARCH_ONLY_FIELDS: readonly ArchOnlyField[] = [
  "nFfShexp",
  "qLoraRank",
  "kvLoraRank",
  "qkNopeDim",
  "qkRopeDim",
  "vHeadDim",
  "nLayerDenseLead",
  "nFf",
  "nExpertShared",
  "gating",
  "expertWeightsNorm",
  "expertWeightsScale",
  "nExpertGroups",
  "nExpertGroupsUsed",
  "expProbsBias",
  "yarnMscaleAllDim",
  "archName",
  "nNextn",
  "slidingWindow",
  "ssm",
  "fullAttnInterval",
  "legacyInProj",
];

/** The spec of `arch` if the generator writes it, else a RangeError listing those it does. */
function syntheticArch(arch: string): ArchSpec & { synthetic: NonNullable<ArchSpec["synthetic"]> } {
  const a = (SYNTHETIC_ARCHS as readonly string[]).includes(arch) ? archSpec(arch) : undefined;
  if (!a?.synthetic) {
    throw new RangeError(
      `unsupported synthetic architecture "${arch}"; supported: ${SYNTHETIC_ARCHS.join(", ")}`,
    );
  }
  return a as ArchSpec & { synthetic: NonNullable<ArchSpec["synthetic"]> };
}

/**
 * The spec with its defaults filled in, checked against what llama.cpp
 * accepts for the architecture (the arch file's `synthetic.check`).
 *
 * @throws a `RangeError` naming the field and the rule it breaks.
 */
export function resolveSyntheticSpec(spec: SyntheticSpec): ResolvedSyntheticSpec {
  const bad = (msg: string): never => {
    throw new RangeError(`synthetic ${spec.arch} model: ${msg}`);
  };
  const arch = syntheticArch(spec.arch);
  const hints = arch.synthetic;
  const positive = [
    "nEmbd",
    "nLayer",
    "nHead",
    "nHeadKv",
    "nFfExp",
    "nExpert",
    "nExpertUsed",
    "nCtx",
  ] as const;
  for (const k of positive) {
    const v = spec[k];
    if (!Number.isInteger(v) || v < 1) bad(`${k} must be a positive integer, got ${v}`);
  }
  if (spec.nHead % spec.nHeadKv !== 0) {
    bad(`nHeadKv (${spec.nHeadKv}) must divide nHead (${spec.nHead})`);
  }
  const headDim = spec.headDim ?? spec.nEmbd / spec.nHead;
  if (!Number.isInteger(headDim) || headDim < 2 || headDim % 2 !== 0) {
    bad(
      `headDim must be an even integer ≥ 2 (RoPE rotates pairs), got ${headDim}` +
        (spec.headDim === undefined ? ` (nEmbd ${spec.nEmbd} / nHead ${spec.nHead})` : ""),
    );
  }
  const ropeDim = spec.ropeDim ?? headDim;
  if (!Number.isInteger(ropeDim) || ropeDim < 2 || ropeDim % 2 !== 0 || ropeDim > headDim) {
    bad(`ropeDim must be an even integer in 2…headDim (${headDim}), got ${ropeDim}`);
  }
  const takes = new Set(hints.fields ?? []);
  const foreign = ARCH_ONLY_FIELDS.filter((f) => spec[f] !== undefined && !takes.has(f));
  if (foreign.length > 0) {
    const owners = SYNTHETIC_ARCHS.filter((a) =>
      foreign.some((f) => archSpec(a).synthetic?.fields?.includes(f))
    );
    bad(
      `${foreign.join(", ")} apply to ${owners.join(", ")} only` +
        (foreign.includes("nFfShexp")
          ? ` (${spec.arch} has no shared expert in llama.cpp; leave nFfShexp unset)`
          : ""),
    );
  }
  const yarnFactor = spec.yarnFactor ?? 0;
  if (yarnFactor !== 0 && !(yarnFactor > 1 && (spec.yarnOrigCtx ?? 0) >= 1)) {
    bad(`YaRN needs yarnFactor > 1 and yarnOrigCtx ≥ 1`);
  }
  if (spec.nExpertUsed > spec.nExpert) {
    bad(`nExpertUsed (${spec.nExpertUsed}) exceeds nExpert (${spec.nExpert})`);
  }
  if (!(spec.ropeBase > 0)) bad(`ropeBase must be > 0, got ${spec.ropeBase}`);
  if (!(spec.rmsEps > 0)) bad(`rmsEps must be > 0, got ${spec.rmsEps}`);
  const weightType = spec.weightType ?? "F32";
  if (!(weightType in FILE_TYPE)) {
    bad(`weightType must be F32 or F16 (quantise with llama.cpp for others), got ${weightType}`);
  }
  const vocab = spec.vocab ?? builtinTokenizer();
  if (vocab.nTokens < 1) bad("the vocabulary is empty");
  const defined = Object.fromEntries(Object.entries(spec).filter(([, v]) => v !== undefined));
  const nExpertGroups = spec.nExpertGroups ?? 1;
  const s: ResolvedSyntheticSpec = {
    nFfShexp: 0,
    qLoraRank: 0,
    kvLoraRank: 0,
    qkNopeDim: 0,
    qkRopeDim: 0,
    vHeadDim: 0,
    nLayerDenseLead: 0,
    nFf: 0,
    nExpertShared: 0,
    gating: "softmax",
    expertWeightsNorm: false,
    expertWeightsScale: 0,
    nExpertGroups,
    nExpertGroupsUsed: nExpertGroups,
    expProbsBias: false,
    archName: spec.arch,
    nNextn: 0,
    yarnOrigCtx: 0,
    yarnMscaleAllDim: 0,
    slidingWindow: 0,
    ssm: { convKernel: 0, stateSize: 0, nVHeads: 0, nKHeads: 0 },
    fullAttnInterval: 4,
    legacyInProj: false,
    tiedOutput: false,
    logitStd: 4,
    routerStd: 3,
    name: `od-moe synthetic ${spec.arch}`,
    ...hints.defaults,
    ...defined as SyntheticSpec,
    headDim,
    ropeDim,
    yarnFactor,
    weightType,
    vocab,
  };
  hints.check?.(s, bad);
  if (s.tiedOutput) {
    const output = arch.tensorPlan(hints.config(s)).find((t) => t.name === OUTPUT);
    if (!output?.optional) {
      bad(`llama.cpp's ${spec.arch} requires output.weight: tiedOutput is not supported`);
    }
  }
  return s;
}

const OUTPUT = `${Tensors.output}.weight`;

interface PlannedTensor extends SyntheticTensorInfo {
  init: Init;
  /** Matrices take the weight type; norms, biases (even 2-D expert biases) and routers stay F32. */
  matrix: boolean;
}

/** `blk.3.ffn_up_exps.weight` → its `Tensors` template and suffix. */
function tensorBase(name: string): { base: string; suffix: string } {
  const dot = name.lastIndexOf(".");
  return {
    base: name.slice(0, dot).replace(/^blk\.\d+\./, "blk.{bid}."),
    suffix: name.slice(dot + 1),
  };
}

/**
 * The generator's default draw: unit-scale projections (fan-in = the row
 * length), norms near 1 with jitter (more on q/k norms), biases N(0, 0.5²),
 * the router's logits spread by `routerStd`, and the head scaled for
 * `logitStd` (the output norm carries the scale).
 */
function defaultInit(
  t: { base: string; suffix: string; shape: readonly number[] },
  s: ResolvedSyntheticSpec,
): Init {
  // A tied head scores each token by its embedding's dot product with the
  // final state, in which the current token's own embedding is a large part:
  // at full scale the model would only ever repeat its input.
  const embdStd = s.tiedOutput ? TIED_EMBD_STD : 1;
  if (t.base === Tensors.tokenEmbd) return { kind: "normal", std: embdStd };
  if (t.base === Tensors.outputNorm) {
    // rows of the head have unit norm (untied: N(0, 1/nEmbd)) or norm embdStd·√nEmbd (tied)
    const scale = s.tiedOutput ? s.logitStd / (embdStd * Math.sqrt(s.nEmbd)) : s.logitStd;
    return { kind: "norm", scale, jitter: 0.1 };
  }
  if (t.suffix === "bias") return { kind: "normal", std: 0.5 };
  if (t.base === Tensors.attnQNorm || t.base === Tensors.attnKNorm) {
    return { kind: "norm", scale: 1, jitter: 0.2 };
  }
  if (t.base.endsWith("norm")) return { kind: "norm", scale: 1, jitter: 0.1 };
  if (t.base === Tensors.ffnGateInp) return normalInit(t.shape[0]!, s.routerStd);
  return normalInit(t.shape[0]!);
}

/** The tensors to write: the arch's plan (optional ones as its hints say) and its extras. */
function plan(s: ResolvedSyntheticSpec): PlannedTensor[] {
  const arch = syntheticArch(s.arch);
  const hints = arch.synthetic;
  const c: ModelConfig = hints.config(s);
  const planned: TensorPlanEntry[] = [...arch.tensorPlan(c), ...(hints.extraTensors?.(c) ?? [])];
  const entries = hints.fileTensors?.(planned, s) ?? planned;
  return entries
    .filter((t) =>
      !t.optional || (t.name === OUTPUT ? !s.tiedOutput : hints.writeOptional?.(t.name, s))
    )
    .map((t) => {
      const { base, suffix } = tensorBase(t.name);
      const info = { base, suffix, shape: t.shape };
      return {
        name: t.name,
        shape: t.shape,
        init: hints.init?.(info, s) ?? defaultInit(info, s),
        // tensors the engine holds as f32 (conv kernels) stay F32 like llama.cpp's converter writes them
        matrix: t.shape.length >= 2 && base !== Tensors.ffnGateInp && suffix === "weight" &&
          !t.asF32,
      };
    });
}

/**
 * The tensors a spec produces, in file order, with their shapes (no data).
 *
 * @throws like {@linkcode resolveSyntheticSpec}.
 */
export function syntheticTensors(spec: SyntheticSpec): SyntheticTensorInfo[] {
  return plan(resolveSyntheticSpec(spec)).map(({ name, shape }) => ({ name, shape }));
}

/** The hyperparameters of a spec, as the arch file derives them (what the file says). */
export function syntheticConfig(spec: SyntheticSpec): ModelConfig {
  const s = resolveSyntheticSpec(spec);
  return syntheticArch(s.arch).synthetic.config(s);
}

/** FNV-1a of a string, to give each tensor its own random stream. */
function hashName(name: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < name.length; i++) {
    h ^= name.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

/**
 * How the generator draws one tensor's values: any stretch of them can be
 * drawn on its own ({@linkcode syntheticValues}), so a writer may make a
 * tensor piece by piece, or in parallel, and get the bytes of the whole.
 */
export interface SyntheticValueSource {
  /** The distribution. */
  readonly init: Init;
  /** The tensor's random stream (from its name and the spec's seed). */
  readonly seed: number;
}

/** One tensor of {@linkcode syntheticTensorSources}. */
export interface SyntheticTensorSource extends SyntheticTensorInfo, SyntheticValueSource {
  /** A matrix (takes the weight type); norms, biases and routers are not. */
  readonly matrix: boolean;
}

/**
 * The metadata and tensors of {@linkcode syntheticModelLazy} with the
 * recipe of each tensor's values instead of its bytes: for writers that
 * convert them on the way (the quantising writer of `dev/quant_stream.ts`).
 * The metadata's file type is the spec's `weightType`.
 *
 * @throws like {@linkcode resolveSyntheticSpec}.
 */
export function syntheticTensorSources(
  spec: SyntheticSpec,
): { metadata: [string, GgufValue][]; tensors: SyntheticTensorSource[] } {
  const s = resolveSyntheticSpec(spec);
  return {
    metadata: syntheticMetadata(s),
    tensors: plan(s).map((t) => ({
      name: t.name,
      shape: t.shape,
      matrix: t.matrix,
      init: t.init,
      seed: tensorSeed(t.name, s.seed),
    })),
  };
}

/** Mulberry32's state step: its state after `k` draws is `seed + k·STEP`. */
const RNG_STEP = 0x6d2b79f5;

/**
 * Values `offset … offset + n − 1` of a tensor as the generator draws them
 * (the same floats as drawing the whole tensor and slicing it). `offset`
 * must be even: values come in Box–Muller pairs.
 */
export function syntheticValues(
  source: SyntheticValueSource,
  offset: number,
  n: number,
): Float32Array<ArrayBuffer> {
  if (offset % 2 !== 0) throw new RangeError(`syntheticValues: offset ${offset} is odd`);
  // Each value takes one draw; jump the stream to draw `offset`.
  const rng = new Rng((source.seed + Math.imul(offset, RNG_STEP)) >>> 0);
  return fillValues(source.init, n, rng);
}

function tensorSeed(name: string, seed: number): number {
  return (hashName(name) ^ Math.imul(seed >>> 0, 0x9e3779b1)) >>> 0;
}

function fillValues(init: Init, n: number, rng: Rng): Float32Array<ArrayBuffer> {
  const out = new Float32Array(n);
  if (init.kind === "uniform") {
    for (let i = 0; i < n; i++) out[i] = init.lo + (init.hi - init.lo) * rng.next();
    return out;
  }
  const std = init.kind === "normal" ? init.std : init.jitter;
  const mean = init.kind === "normal" ? 0 : 1;
  const scale = init.kind === "normal" ? 1 : init.scale;
  // Box–Muller, both outputs used.
  for (let i = 0; i < n; i += 2) {
    const r = Math.sqrt(-2 * Math.log(1 - rng.next()));
    const t = 2 * Math.PI * rng.next();
    out[i] = scale * (mean + std * r * Math.cos(t));
    if (i + 1 < n) out[i + 1] = scale * (mean + std * r * Math.sin(t));
  }
  return out;
}

/**
 * A synthetic model as a GGUF write spec (for `serializeGguf` or
 * `writeGgufFile`): metadata (architecture, name, file type, every
 * hyperparameter llama.cpp needs, the tokenizer) and seeded random tensors.
 *
 * @throws like {@linkcode resolveSyntheticSpec}.
 */
export function syntheticModel(spec: SyntheticSpec): GgufWriteSpec {
  const { metadata, tensors } = syntheticModelLazy(spec);
  return {
    metadata,
    tensors: tensors.map(({ produce, ...t }) => ({ ...t, data: produce() })),
  };
}

function syntheticMetadata(s: ResolvedSyntheticSpec): [string, GgufValue][] {
  return [
    [Keys.architecture, gv.str(s.archName)],
    [Keys.name, gv.str(s.name)],
    ...archSpec(s.archName).writeConfig(syntheticArch(s.arch).synthetic.config(s)),
    [Keys.fileType, gv.u32(FILE_TYPE[s.weightType])],
    ...s.vocab.entries.map(([key, value]) => [key, value] as [string, GgufValue]),
  ];
}

/**
 * {@linkcode syntheticModel} with each tensor's values drawn only when its
 * `produce()` is called (for `writeGgufFileLazy`): a model larger than
 * memory is written one tensor at a time. The bytes are the same.
 *
 * @throws like {@linkcode resolveSyntheticSpec}.
 */
export function syntheticModelLazy(
  spec: SyntheticSpec,
): { metadata: [string, GgufValue][]; tensors: GgufLazyTensorSpec[] } {
  const s = resolveSyntheticSpec(spec);
  const metadata = syntheticMetadata(s);
  const tensors: GgufLazyTensorSpec[] = plan(s).map((t) => {
    const half = t.matrix && s.weightType === "F16";
    return {
      name: t.name,
      type: half ? GgmlType.F16 : GgmlType.F32,
      shape: t.shape,
      produce: () => {
        const n = t.shape.reduce((a, b) => a * b, 1);
        const rng = new Rng(tensorSeed(t.name, s.seed));
        const values = fillValues(t.init, n, rng);
        const out = half ? f32ToF16Array(values) : values;
        return new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
      },
    };
  });
  return { metadata, tensors };
}

/**
 * The built-in demo model the server runs when no model is given: a small
 * `qwen3moe` (q/k norms, grouped-query attention, 8 experts, top-2) with the
 * built-in byte-level BPE vocabulary and ChatML template: 7.3 M parameters
 * (6.3 M in experts), 28 MiB as F32.
 */
export function demoModelSpec(): SyntheticSpec {
  return {
    arch: "qwen3moe",
    name: "od-moe demo (random weights)",
    nEmbd: 256,
    nLayer: 4,
    nHead: 4,
    nHeadKv: 2,
    headDim: 64,
    nFfExp: 256,
    nExpert: 8,
    nExpertUsed: 2,
    nCtx: 4096,
    ropeBase: 1_000_000,
    rmsEps: 1e-6,
    tiedOutput: false,
    weightType: "F32",
    seed: 1,
    vocab: builtinTokenizer(),
  };
}
