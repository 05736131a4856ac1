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

import { archKey, Keys, tensorName, Tensors } from "../gguf/names.ts";
import { GgmlType } from "../gguf/types.ts";
import { type GgufValue, gv } from "../gguf/value.ts";
import type { GgufLazyTensorSpec, GgufWriteSpec } from "../gguf/writer.ts";
import { f32ToF16Array } from "../gguf/f16.ts";
import { Rng } from "../util/rng.ts";
import { builtinTokenizer, type TokenizerMetadata } from "./vocab.ts";

/** The architectures the generator writes. */
export const SYNTHETIC_ARCHS = [
  "llama",
  "qwen2moe",
  "qwen3moe",
  "olmoe",
  "gpt-oss",
  "deepseek2",
] as const;

/** One of {@linkcode SYNTHETIC_ARCHS}. */
export type SyntheticArch = (typeof SYNTHETIC_ARCHS)[number];

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
  /** Width of one routed expert's FFN. */
  nFfExp: number;
  /** Width of the shared expert (`qwen2moe` only, where it is required). */
  nFfShexp?: number;
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

/**
 * The spec with its defaults filled in, checked against what llama.cpp
 * accepts for the architecture.
 *
 * @throws a `RangeError` naming the field and the rule it breaks.
 */
export function resolveSyntheticSpec(spec: SyntheticSpec): Required<SyntheticSpec> {
  const bad = (msg: string): never => {
    throw new RangeError(`synthetic ${spec.arch} model: ${msg}`);
  };
  if (!(SYNTHETIC_ARCHS as readonly string[]).includes(spec.arch)) {
    throw new RangeError(
      `unsupported synthetic architecture "${spec.arch}"; supported: ${SYNTHETIC_ARCHS.join(", ")}`,
    );
  }
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
  if ((spec.arch === "qwen2moe" || spec.arch === "olmoe") && headDim * spec.nHead !== spec.nEmbd) {
    bad(
      `llama.cpp's ${spec.arch} needs nHead * headDim = nEmbd (its attn_q is nEmbd × nEmbd), got ${spec.nHead} * ${headDim} ≠ ${spec.nEmbd}`,
    );
  }
  if (spec.arch === "olmoe" && spec.nHeadKv !== spec.nHead) {
    bad(`llama.cpp's olmoe norms k with an nEmbd-wide weight: nHeadKv must equal nHead`);
  }
  const mla = {
    qLoraRank: spec.qLoraRank ?? 0,
    kvLoraRank: spec.kvLoraRank ?? 0,
    qkNopeDim: spec.qkNopeDim ?? 0,
    qkRopeDim: spec.qkRopeDim ?? 0,
    vHeadDim: spec.vHeadDim ?? 0,
  };
  const nLayerDenseLead = spec.nLayerDenseLead ?? 0;
  const nFf = spec.nFf ?? 0;
  const nExpertShared = spec.nExpertShared ?? (spec.arch === "deepseek2" ? 1 : 0);
  const nExpertGroups = spec.nExpertGroups ?? 1;
  const nExpertGroupsUsed = spec.nExpertGroupsUsed ?? nExpertGroups;
  const nNextn = spec.nNextn ?? 0;
  const archName = spec.archName ?? spec.arch;
  if (spec.arch === "deepseek2") {
    if (!Number.isInteger(nNextn) || nNextn < 0) bad(`nNextn must be an integer ≥ 0`);
    if (archName !== "deepseek2" && archName !== "mistral4") {
      bad(`archName must be deepseek2 or mistral4, got ${archName}`);
    }
    for (const k of ["kvLoraRank", "qkNopeDim", "qkRopeDim", "vHeadDim"] as const) {
      if (!Number.isInteger(mla[k]) || mla[k] < 1) bad(`${k} must be a positive integer`);
    }
    if (!Number.isInteger(mla.qLoraRank) || mla.qLoraRank < 0) {
      bad(`qLoraRank must be an integer ≥ 0, got ${mla.qLoraRank}`);
    }
    if (mla.qkRopeDim % 2 !== 0) bad(`qkRopeDim must be even (RoPE rotates pairs)`);
    if (spec.nHeadKv !== 1) bad(`latent attention has one shared kv head: nHeadKv must be 1`);
    if (!Number.isInteger(nExpertShared) || nExpertShared < 1) {
      bad(`llama.cpp's deepseek2 always loads shared experts: nExpertShared must be ≥ 1`);
    }
    if (
      !Number.isInteger(nLayerDenseLead) || nLayerDenseLead < 0 || nLayerDenseLead >= spec.nLayer
    ) {
      bad(`nLayerDenseLead must be in 0…nLayer − 1, got ${nLayerDenseLead}`);
    }
    if (nLayerDenseLead > 0 && !(Number.isInteger(nFf) && nFf > 0)) {
      bad(`dense leading blocks need nFf > 0`);
    }
    if (
      spec.nExpert % nExpertGroups !== 0 || nExpertGroupsUsed < 1 ||
      nExpertGroupsUsed > nExpertGroups ||
      nExpertGroupsUsed * (spec.nExpert / nExpertGroups) < spec.nExpertUsed
    ) {
      bad(
        `${nExpertGroups} expert groups (${nExpertGroupsUsed} used) must divide ${spec.nExpert} experts and hold the top-${spec.nExpertUsed}`,
      );
    }
  } else {
    const fields = [
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
    ] as const;
    const set = fields.filter((f) => spec[f] !== undefined);
    if (set.length > 0) bad(`${set.join(", ")} apply to deepseek2 only`);
  }
  const slidingWindow = spec.slidingWindow ?? 0;
  if (spec.arch === "gpt-oss") {
    if (!Number.isInteger(slidingWindow) || slidingWindow < 1) {
      bad(`gpt-oss needs a sliding window ≥ 1, got ${slidingWindow}`);
    }
  } else if (spec.slidingWindow !== undefined) {
    bad(`slidingWindow applies to gpt-oss only`);
  }
  const yarnFactor = spec.yarnFactor ?? 0;
  if (yarnFactor !== 0 && !(yarnFactor > 1 && (spec.yarnOrigCtx ?? 0) >= 1)) {
    bad(`YaRN needs yarnFactor > 1 and yarnOrigCtx ≥ 1`);
  }
  if (spec.nExpertUsed > spec.nExpert) {
    bad(`nExpertUsed (${spec.nExpertUsed}) exceeds nExpert (${spec.nExpert})`);
  }
  const nFfShexp = spec.nFfShexp ?? 0;
  if (spec.arch === "qwen2moe") {
    if (!Number.isInteger(nFfShexp) || nFfShexp < 1) {
      bad(`qwen2moe has a shared expert: nFfShexp must be a positive integer, got ${nFfShexp}`);
    }
  } else if (nFfShexp !== 0) {
    bad(`${spec.arch} has no shared expert in llama.cpp; leave nFfShexp unset`);
  }
  if (spec.tiedOutput && ["qwen2moe", "olmoe", "gpt-oss"].includes(spec.arch)) {
    bad(`llama.cpp's ${spec.arch} requires output.weight: tiedOutput is not supported`);
  }
  if (!(spec.ropeBase > 0)) bad(`ropeBase must be > 0, got ${spec.ropeBase}`);
  if (!(spec.rmsEps > 0)) bad(`rmsEps must be > 0, got ${spec.rmsEps}`);
  const weightType = spec.weightType ?? "F32";
  if (!(weightType in FILE_TYPE)) {
    bad(`weightType must be F32 or F16 (quantise with llama.cpp for others), got ${weightType}`);
  }
  const vocab = spec.vocab ?? builtinTokenizer();
  if (vocab.nTokens < 1) bad("the vocabulary is empty");
  return {
    ...spec,
    name: spec.name ?? `od-moe synthetic ${spec.arch}`,
    headDim,
    nFfShexp,
    tiedOutput: spec.tiedOutput ?? false,
    weightType,
    vocab,
    logitStd: spec.logitStd ?? 4,
    routerStd: spec.routerStd ?? 3,
    ...mla,
    nLayerDenseLead,
    nFf,
    nExpertShared,
    gating: spec.gating ?? "softmax",
    expertWeightsNorm: spec.expertWeightsNorm ?? false,
    expertWeightsScale: spec.expertWeightsScale ?? 0,
    nExpertGroups,
    nExpertGroupsUsed,
    expProbsBias: spec.expProbsBias ?? false,
    archName,
    nNextn,
    yarnFactor,
    yarnOrigCtx: spec.yarnOrigCtx ?? 0,
    yarnMscaleAllDim: spec.yarnMscaleAllDim ?? 0,
    slidingWindow,
  };
}

/** How a tensor's values are drawn. */
type Init =
  | { kind: "normal"; std: number }
  | { kind: "norm"; scale: number; jitter: number };

interface PlannedTensor extends SyntheticTensorInfo {
  init: Init;
  /** Matrices take the weight type; norms, biases (even 2-D expert biases) and routers stay F32. */
  matrix: boolean;
}

function plan(s: Required<SyntheticSpec>): PlannedTensor[] {
  const { nEmbd, headDim, nHead, nHeadKv, nFfExp, nFfShexp, nExpert } = s;
  const nVocab = s.vocab.nTokens;
  const nQ = nHead * headDim;
  const nKv = nHeadKv * headDim;
  const out: PlannedTensor[] = [];
  const add = (
    base: string,
    bid: number | undefined,
    shape: number[],
    init: Init,
    suffix = "weight",
  ) => {
    out.push({
      name: tensorName(base, bid, suffix),
      shape,
      init,
      matrix: shape.length >= 2 && base !== Tensors.ffnGateInp && suffix === "weight",
    });
  };
  const normal = (fanIn: number, gain = 1): Init => ({
    kind: "normal",
    std: gain / Math.sqrt(fanIn),
  });
  const norm = (scale = 1, jitter = 0.1): Init => ({ kind: "norm", scale, jitter });

  // A tied head scores each token by its embedding's dot product with the
  // final state, in which the current token's own embedding is a large part:
  // at full scale the model would only ever repeat its input.
  const embdStd = s.tiedOutput ? TIED_EMBD_STD : 1;
  add(Tensors.tokenEmbd, undefined, [nEmbd, nVocab], { kind: "normal", std: embdStd });
  const bias = (std: number): Init => ({ kind: "normal", std });
  for (let i = 0; i < s.nLayer + s.nNextn; i++) {
    add(Tensors.attnNorm, i, [nEmbd], norm());
    if (s.arch === "deepseek2") {
      // latent attention, as llama.cpp's converter splits attn_kv_b into attn_k_b (transposed) and attn_v_b
      const qHead = s.qkNopeDim + s.qkRopeDim;
      if (s.qLoraRank > 0) {
        add(Tensors.attnQA, i, [nEmbd, s.qLoraRank], normal(nEmbd));
        add(Tensors.attnQANorm, i, [s.qLoraRank], norm());
        add(Tensors.attnQB, i, [s.qLoraRank, nHead * qHead], normal(s.qLoraRank));
      } else {
        add(Tensors.attnQ, i, [nEmbd, nHead * qHead], normal(nEmbd));
      }
      add(Tensors.attnKvAMqa, i, [nEmbd, s.kvLoraRank + s.qkRopeDim], normal(nEmbd));
      add(Tensors.attnKvANorm, i, [s.kvLoraRank], norm());
      add(Tensors.attnKB, i, [s.qkNopeDim, s.kvLoraRank, nHead], normal(s.kvLoraRank));
      add(Tensors.attnVB, i, [s.kvLoraRank, s.vHeadDim, nHead], normal(s.kvLoraRank));
      add(Tensors.attnOut, i, [nHead * s.vHeadDim, nEmbd], normal(nHead * s.vHeadDim));
    } else {
      add(Tensors.attnQ, i, [nEmbd, nQ], normal(nEmbd));
      add(Tensors.attnK, i, [nEmbd, nKv], normal(nEmbd));
      add(Tensors.attnV, i, [nEmbd, nKv], normal(nEmbd));
      if (s.arch === "qwen2moe" || s.arch === "gpt-oss") {
        add(Tensors.attnQ, i, [nQ], bias(0.5), "bias");
        add(Tensors.attnK, i, [nKv], bias(0.5), "bias");
        add(Tensors.attnV, i, [nKv], bias(0.5), "bias");
      }
      if (s.arch === "qwen3moe") {
        add(Tensors.attnQNorm, i, [headDim], norm(1, 0.2));
        add(Tensors.attnKNorm, i, [headDim], norm(1, 0.2));
      }
      if (s.arch === "olmoe") {
        add(Tensors.attnQNorm, i, [nQ], norm(1, 0.2));
        add(Tensors.attnKNorm, i, [nKv], norm(1, 0.2));
      }
      add(Tensors.attnOut, i, [nQ, nEmbd], normal(nQ));
      if (s.arch === "gpt-oss") {
        add(Tensors.attnOut, i, [nEmbd], bias(0.5), "bias");
        // one logit per head in each softmax's denominator: about as large as the scores
        add(Tensors.attnSinks, i, [nHead], bias(2));
      }
    }
    // GPT-OSS calls its FFN input norm post_attention_norm
    add(s.arch === "gpt-oss" ? Tensors.attnPostNorm : Tensors.ffnNorm, i, [nEmbd], norm());
    if (s.arch === "deepseek2" && i < s.nLayerDenseLead) {
      add(Tensors.ffnGate, i, [nEmbd, s.nFf], normal(nEmbd));
      add(Tensors.ffnUp, i, [nEmbd, s.nFf], normal(nEmbd));
      add(Tensors.ffnDown, i, [s.nFf, nEmbd], normal(s.nFf));
      continue;
    }
    add(Tensors.ffnGateInp, i, [nEmbd, nExpert], normal(nEmbd, s.routerStd));
    if (s.expProbsBias) add(Tensors.ffnExpProbsB, i, [nExpert], bias(0.5), "bias");
    // GPT-OSS's clamp (gate ≤ 7, |up| ≤ 7) should bite: gate and up at 3× the unit scale
    const gain = s.arch === "gpt-oss" ? 3 : 1;
    add(Tensors.ffnGateExps, i, [nEmbd, nFfExp, nExpert], normal(nEmbd, gain));
    add(Tensors.ffnUpExps, i, [nEmbd, nFfExp, nExpert], normal(nEmbd, gain));
    add(Tensors.ffnDownExps, i, [nFfExp, nEmbd, nExpert], normal(nFfExp, 1 / gain));
    if (s.arch === "gpt-oss") {
      add(Tensors.ffnGateInp, i, [nExpert], bias(1), "bias");
      add(Tensors.ffnGateExps, i, [nFfExp, nExpert], bias(0.5), "bias");
      add(Tensors.ffnUpExps, i, [nFfExp, nExpert], bias(0.5), "bias");
      add(Tensors.ffnDownExps, i, [nEmbd, nExpert], bias(0.5), "bias");
    }
    if (s.arch === "qwen2moe") {
      add(Tensors.ffnGateInpShexp, i, [nEmbd], normal(nEmbd));
      add(Tensors.ffnGateShexp, i, [nEmbd, nFfShexp], normal(nEmbd));
      add(Tensors.ffnUpShexp, i, [nEmbd, nFfShexp], normal(nEmbd));
      add(Tensors.ffnDownShexp, i, [nFfShexp, nEmbd], normal(nFfShexp));
    }
    if (s.arch === "deepseek2") {
      const f = nFfExp * s.nExpertShared;
      add(Tensors.ffnGateShexp, i, [nEmbd, f], normal(nEmbd));
      add(Tensors.ffnUpShexp, i, [nEmbd, f], normal(nEmbd));
      add(Tensors.ffnDownShexp, i, [f, nEmbd], normal(f));
    }
    if (i >= s.nLayer) {
      // the MTP head: [embedding | hidden] → hidden, its norms, its own output head
      add(Tensors.nextnEhProj, i, [2 * nEmbd, nEmbd], normal(2 * nEmbd));
      add(Tensors.nextnEnorm, i, [nEmbd], norm());
      add(Tensors.nextnHnorm, i, [nEmbd], norm());
      add(Tensors.nextnSharedHeadNorm, i, [nEmbd], norm());
      add(Tensors.nextnSharedHeadHead, i, [nEmbd, nVocab], normal(nEmbd));
    }
  }
  // The output norm carries the logit scale: rows of the head have unit norm
  // (untied: N(0, 1/nEmbd)) or norm embdStd·√nEmbd (tied: the embeddings).
  const headScale = s.tiedOutput ? s.logitStd / (embdStd * Math.sqrt(nEmbd)) : s.logitStd;
  add(Tensors.outputNorm, undefined, [nEmbd], norm(headScale));
  if (!s.tiedOutput) add(Tensors.output, undefined, [nEmbd, nVocab], normal(nEmbd));
  return out;
}

/**
 * The tensors a spec produces, in file order, with their shapes (no data).
 *
 * @throws like {@linkcode resolveSyntheticSpec}.
 */
export function syntheticTensors(spec: SyntheticSpec): SyntheticTensorInfo[] {
  return plan(resolveSyntheticSpec(spec)).map(({ name, shape }) => ({ name, shape }));
}

/** The hyperparameter metadata llama.cpp reads for the architecture, as its converter writes it. */
function hparams(s: Required<SyntheticSpec>): [string, GgufValue][] {
  const k = (key: string) => archKey(key, s.archName);
  // llama (Mixtral) and olmoe files give the expert width as
  // feed_forward_length; the others give it as expert_feed_forward_length
  // and keep feed_forward_length for a dense width that differs (so an
  // engine reading the wrong key fails): the shared expert's for qwen2moe,
  // as Qwen1.5-MoE; the dense blocks' for deepseek2.
  const expertsByFf = s.arch === "llama" || s.arch === "olmoe";
  const nFf = expertsByFf
    ? s.nFfExp
    : s.arch === "qwen2moe"
    ? s.nFfShexp
    : s.arch === "deepseek2" && s.nLayerDenseLead > 0
    ? s.nFf
    : 3 * s.nFfExp;
  const out: [string, GgufValue][] = [
    [k(Keys.contextLength), gv.u32(s.nCtx)],
    [k(Keys.embeddingLength), gv.u32(s.nEmbd)],
    [k(Keys.blockCount), gv.u32(s.nLayer + s.nNextn)],
    [k(Keys.feedForwardLength), gv.u32(nFf)],
    [k(Keys.headCount), gv.u32(s.nHead)],
    [k(Keys.headCountKv), gv.u32(s.nHeadKv)],
  ];
  if (s.arch === "deepseek2") {
    // the absorbed view (one kv head of [latent | k_pe]) and the decompressed one
    out.push(
      [k(Keys.keyLength), gv.u32(s.kvLoraRank + s.qkRopeDim)],
      [k(Keys.valueLength), gv.u32(s.kvLoraRank)],
      [k(Keys.keyLengthMla), gv.u32(s.qkNopeDim + s.qkRopeDim)],
      [k(Keys.valueLengthMla), gv.u32(s.vHeadDim)],
      [k(Keys.ropeDimensionCount), gv.u32(s.qkRopeDim)],
      // llama.cpp reads q_lora_rank unconditionally for non-"lite" layer counts
      [k(Keys.qLoraRank), gv.u32(s.qLoraRank)],
      [k(Keys.kvLoraRank), gv.u32(s.kvLoraRank)],
      [k(Keys.leadingDenseBlockCount), gv.u32(s.nLayerDenseLead)],
      [k(Keys.expertSharedCount), gv.u32(s.nExpertShared)],
      [k(Keys.expertGatingFunc), gv.u32(s.gating === "sigmoid" ? 2 : 1)],
    );
    if (s.nNextn > 0) out.push([k(Keys.nextnPredictLayers), gv.u32(s.nNextn)]);
    if (s.expertWeightsNorm) out.push([k(Keys.expertWeightsNorm), gv.bool(true)]);
    if (s.expertWeightsScale !== 0) {
      out.push([k(Keys.expertWeightsScale), gv.f32(s.expertWeightsScale)]);
    }
    if (s.nExpertGroups > 1) {
      out.push(
        [k(Keys.expertGroupCount), gv.u32(s.nExpertGroups)],
        [k(Keys.expertGroupUsedCount), gv.u32(s.nExpertGroupsUsed)],
      );
    }
  } else {
    out.push(
      [k(Keys.keyLength), gv.u32(s.headDim)],
      [k(Keys.valueLength), gv.u32(s.headDim)],
      [k(Keys.ropeDimensionCount), gv.u32(s.headDim)],
    );
  }
  out.push(
    [k(Keys.ropeFreqBase), gv.f32(s.ropeBase)],
    [k(Keys.layerNormRmsEps), gv.f32(s.rmsEps)],
    [k(Keys.expertCount), gv.u32(s.nExpert)],
    [k(Keys.expertUsedCount), gv.u32(s.nExpertUsed)],
  );
  if (!expertsByFf) out.push([k(Keys.expertFeedForwardLength), gv.u32(s.nFfExp)]);
  if (s.arch === "qwen2moe") {
    out.push([k(Keys.expertSharedFeedForwardLength), gv.u32(s.nFfShexp)]);
  }
  if (s.arch === "gpt-oss") out.push([k(Keys.slidingWindow), gv.u32(s.slidingWindow)]);
  if (s.yarnFactor !== 0) {
    out.push(
      [k(Keys.ropeScalingType), gv.str("yarn")],
      [k(Keys.ropeScalingFactor), gv.f32(s.yarnFactor)],
      [k(Keys.ropeScalingOrigCtx), gv.u32(s.yarnOrigCtx)],
    );
    if (s.yarnMscaleAllDim !== 0) {
      // llama.cpp's converter writes 0.1 × mscale_all_dim (and its loader divides by 0.1)
      out.push([k(Keys.ropeScalingYarnLogMul), gv.f32(0.1 * s.yarnMscaleAllDim)]);
    }
  }
  if (s.arch === "llama" || s.arch === "deepseek2") {
    out.push([k(Keys.vocabSize), gv.u32(s.vocab.nTokens)]);
  }
  return out;
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

function fillValues(init: Init, n: number, rng: Rng): Float32Array {
  const out = new Float32Array(n);
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
  const metadata: [string, GgufValue][] = [
    [Keys.architecture, gv.str(s.archName)],
    [Keys.name, gv.str(s.name)],
    ...hparams(s),
    [Keys.fileType, gv.u32(FILE_TYPE[s.weightType])],
    ...s.vocab.entries.map(([key, value]) => [key, value] as [string, GgufValue]),
  ];
  const tensors: GgufLazyTensorSpec[] = plan(s).map((t) => {
    const half = t.matrix && s.weightType === "F16";
    return {
      name: t.name,
      type: half ? GgmlType.F16 : GgmlType.F32,
      shape: t.shape,
      produce: () => {
        const n = t.shape.reduce((a, b) => a * b, 1);
        const rng = new Rng((hashName(t.name) ^ Math.imul(s.seed >>> 0, 0x9e3779b1)) >>> 0);
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
