/**
 * Test models, generated on demand and cached: `fixtureModel({ arch, type,
 * shape })` returns the path of a small MoE GGUF with seeded random weights
 * (`src/model/synthetic.ts`) and a real llama.cpp vocabulary cut to a few
 * thousand tokens. Quantised files are made from the F32 file by llama.cpp's
 * own quantiser, so they are real llama.cpp files — with its type mixes and
 * fallbacks (PARITY.md: read each tensor's type from the file).
 *
 * Files live in `<repo>/.cache/models/`, named from a hash of everything that
 * defines them (the resolved spec, the vocabulary source and the generator's
 * source code), so a change to any of those makes a new file rather than
 * reusing a stale one. Files are written to a temporary name and renamed, so
 * concurrent test processes never see half a file.
 *
 * Two shapes per architecture vary what a wrong engine gets wrong:
 *
 * | shape | nEmbd | layers | heads (kv) | headDim | nFfExp (shexp) | experts (top-k) | rope base | rms eps | tied | vocab |
 * |---|---|---|---|---|---|---|---|---|---|---|
 * | llama a | 128 | 2 | 4 (2) | 32 | 96 | 5 (2) | 1e4 | 1e-5 | yes | llama-spm 2000 |
 * | llama b | 256 | 3 | 8 (2) | 64 | 256 | 8 (2) | 5e5 | 1e-5 | no | llama-bpe 3000 + 256 control |
 * | qwen2moe a | 128 | 2 | 4 (1) | 32 | 64 (192) | 7 (3) | 1e6 | 1e-6 | no | qwen2 3000 + 3 control |
 * | qwen2moe b | 256 | 2 | 8 (4) | 32 | 256 (512) | 6 (1) | 1e4 | 1e-5 | no | qwen2 3000 + 3 control |
 * | qwen3moe a | 128 | 2 | 4 (2) | 48 | 64 | 5 (1) | 1e6 | 1e-6 | yes | qwen2 3000 + 3 control |
 * | qwen3moe b | 256 | 3 | 4 (1) | 128 | 256 | 7 (3) | 1.5e5 | 1e-5 | no | qwen2 3000 + 3 control |
 * | olmoe a | 128 | 2 | 4 (4) | 32 | 64 | 6 (2) | 1e4 | 1e-5 | no | gpt-neox 3000 |
 * | olmoe b | 256 | 3 | 2 (2) | 128 | 256 | 8 (3) | 5e5 | 1e-6 | no | qwen2 3000 + 3 control |
 * | gpt-oss a | 128 | 2 | 4 (2) | 32 | 64 | 4 (2) | 1.5e5 | 1e-5 | no | qwen2 3000 + 3 control |
 * | gpt-oss b | 256 | 4 | 8 (2) | 64 | 256 | 8 (4) | 1.5e5 | 1e-5 | no | llama-bpe 3000 + 256 control |
 * | deepseek2 a | 128 | 3 | 4 (1) | MLA | 64 (2 shared) | 7 (3) | 1e4 | 1e-6 | yes | deepseek-llm 3000 |
 * | deepseek2 b | 256 | 3 | 4 (1) | MLA | 256 (1 shared) | 8 (2) | 1e4 | 1e-6 | no | qwen2 3000 + 3 control |
 * | minimax-m2 a | 128 | 2 | 4 (2) | 32 (rope 16) | 64 | 6 (2) | 1e4 | 1e-6 | no | qwen2 3000 + 3 control |
 * | minimax-m2 b | 256 | 3 | 8 (2) | 64 (rope 32) | 256 | 8 (3) | 5e6 | 1e-6 | no | llama-bpe 3000 + 256 control |
 * | qwen35moe a | 128 | 4 (3 DeltaNet) | 4 (2) | 32 (rope 16) | 64 (96) | 6 (2) | 1e6 | 1e-6 | yes | qwen2 3000 + 3 control |
 * | qwen35moe b | 256 | 4 (2 DeltaNet) | 4 (1) | 64 (rope 32) | 256 (256) | 7 (3) | 1e7 | 1e-6 | no | qwen2 3000 + 3 control |
 * | qwen3next a | 128 | 4 (3 DeltaNet) | 4 (2) | 32 (rope 8) | 64 (128) | 5 (2) | 1e7 | 1e-6 | no | qwen2 3000 + 3 control |
 * | qwen3next b | 256 | 4 (2 DeltaNet) | 8 (2) | 32 (rope 16) | 256 (512) | 8 (2) | 1e7 | 1e-6 | no | qwen2 3000 + 3 control |
 *
 * Hybrid Qwens (gated DeltaNet layers, conv kernel 4): state 16 with 4 value
 * heads over 2 q/k heads (a); qwen35moe b 32 with 8 over 2, qwen3next b 32
 * with 8 over 4 — so the two ways of sharing q/k heads differ.
 *
 * GPT-OSS: sliding window 8 (a) / 12 (b) on the even blocks, attention sinks,
 * biases everywhere, YaRN (factor 8 from 64 positions / 32 from 128).
 * DeepSeek: `a` is DeepSeek-V2-Lite's shape — no q compression, softmax
 * router, 2 shared experts, YaRN with mscale_all_dim 0.707 — and `b` is
 * DeepSeek-V3's — q LoRA, sigmoid router with the selection bias
 * `exp_probs_b`, 4 expert groups of which 2 are used, renormalised weights
 * scaled by 2.5; both with one dense leading block and latent attention
 * (a: kv_lora 64, nope 32, rope 16, v 32; b: q_lora 256, kv_lora 256, nope
 * 64, rope 32, v 64).
 * MiniMax-M2: RoPE on part of each head, sigmoid router (a) and softmax (b),
 * both with the selection bias `exp_probs_b`.
 *
 * `MXFP4_MOE` files (llama.cpp's quantiser: experts MXFP4, every other
 * matrix Q8_0) and `MXFP4_F16` files (the same MXFP4 experts with the F16
 * file's other tensors) are made for architectures whose experts MXFP4 can
 * hold (rows a multiple of 32); GPT-OSS ships that way.
 *
 * Shape `b` has every row length a multiple of 256, so K-quant files hold real
 * K-quant blocks; shape `a` has none, so llama.cpp falls back to
 * Q5_0/Q5_1/Q8_0 there.
 *
 * I-quant (IQ1_S … IQ4_XS) and ternary (TQ1_0, TQ2_0) files get a synthetic
 * importance matrix, and the two dynamic mixes `IQ1_MIX` (~1.6-bit experts)
 * and `IQ2_MIX` (~2.5-bit) their per-tensor types (`dev/quant_recipes.ts`);
 * use shape `b` for them.
 *
 * @module
 */

import {
  type SyntheticArch,
  syntheticModelLazy,
  type SyntheticSpec,
} from "../src/model/synthetic.ts";
import {
  builtinTokenizer,
  tokenizerFromGguf,
  type TokenizerMetadata,
  TokenType,
} from "../src/model/vocab.ts";
import { readGgufHeader, readGgufModel } from "../src/gguf/reader.ts";
import {
  type GgufTensorSpec,
  type GgufWriteSpec,
  writeGgufFile,
  writeGgufFileLazy,
} from "../src/gguf/writer.ts";
import { isExpertTensor, Keys } from "../src/gguf/names.ts";
import { type GgufValue, gv } from "../src/gguf/value.ts";
import { REPO_ROOT, vocabPath } from "./ref/llama_src.ts";
import { LlamaFtype, type LlamaFtypeName, loadReference } from "./ref/llama_cpp.ts";
import {
  IMATRIX_VERSION,
  QUANT_RECIPES,
  type QuantRecipeName,
  syntheticImatrix,
  tensorTypeIds,
} from "./quant_recipes.ts";

/** Where fixtures are cached. */
export const FIXTURE_DIR = `${REPO_ROOT}/.cache/models`;

/** The file types a fixture can have: written by the generator (F32, F16) or by llama.cpp's quantiser. */
export const FIXTURE_TYPES = [
  "F32",
  "F16",
  "Q8_0",
  "Q4_0",
  "Q4_1",
  "Q5_0",
  "Q5_1",
  "Q2_K",
  "Q3_K_M",
  "Q4_K_M",
  "Q5_K_M",
  "Q6_K",
  "MXFP4_MOE",
  "MXFP4_F16",
  // I-quants and ternary types (with a synthetic importance matrix, dev/quant_recipes.ts)
  "IQ1_S",
  "IQ1_M",
  "IQ2_XXS",
  "IQ2_XS",
  "IQ2_S",
  "IQ3_XXS",
  "IQ3_S",
  "IQ4_XS",
  "TQ1_0",
  "TQ2_0",
  // Dynamic mixes (QUANT_RECIPES): ~1.6-bit and ~2.5-bit experts
  "IQ1_MIX",
  "IQ2_MIX",
] as const;

/** One of {@linkcode FIXTURE_TYPES}. */
export type FixtureType = (typeof FIXTURE_TYPES)[number];

/** The named shape sets. */
export type FixtureShape = "a" | "b";

/**
 * Where a fixture's vocabulary comes from: a llama.cpp vocabulary GGUF
 * (`models/ggml-vocab-<name>.gguf` of its source, e.g. `qwen2`, `llama-spm`,
 * `llama-bpe`) or the generator's built-in byte-level BPE (`builtin`).
 */
export type FixtureVocab = "builtin" | (string & Record<never, never>);

/** A fixture's shape, without the vocabulary and weight type. */
export type FixtureDims = Omit<SyntheticSpec, "arch" | "vocab" | "weightType" | "name">;

/** A shape: its dimensions, and its vocabulary source and size. */
export interface FixtureShapeSpec extends FixtureDims {
  /** Vocabulary source. */
  vocab: FixtureVocab;
  /** Keep this many tokens (plus control tokens beyond them); absent or 0: the whole vocabulary. */
  vocabSize?: number;
  /** Relabel the vocabulary's `tokenizer.ggml.pre` (a Kimi-K2 file: `"kimi-k2"` on Qwen2's). */
  vocabPre?: string;
}

/** The shape sets, per architecture (see the module doc for the table). */
export const FIXTURE_SHAPES: Record<SyntheticArch, Record<FixtureShape, FixtureShapeSpec>> = {
  llama: {
    a: {
      nEmbd: 128,
      nLayer: 2,
      nHead: 4,
      nHeadKv: 2,
      headDim: 32,
      nFfExp: 96,
      nExpert: 5,
      nExpertUsed: 2,
      nCtx: 512,
      ropeBase: 10_000,
      rmsEps: 1e-5,
      tiedOutput: true,
      seed: 101,
      vocab: "llama-spm",
      vocabSize: 2000,
    },
    b: {
      nEmbd: 256,
      nLayer: 3,
      nHead: 8,
      nHeadKv: 2,
      headDim: 64,
      nFfExp: 256,
      nExpert: 8,
      nExpertUsed: 2,
      nCtx: 2048,
      ropeBase: 500_000,
      rmsEps: 1e-5,
      tiedOutput: false,
      seed: 102,
      vocab: "llama-bpe",
      vocabSize: 3000,
    },
  },
  qwen2moe: {
    a: {
      nEmbd: 128,
      nLayer: 2,
      nHead: 4,
      nHeadKv: 1,
      headDim: 32,
      nFfExp: 64,
      nFfShexp: 192,
      nExpert: 7,
      nExpertUsed: 3,
      nCtx: 512,
      ropeBase: 1_000_000,
      rmsEps: 1e-6,
      tiedOutput: false,
      seed: 201,
      vocab: "qwen2",
      vocabSize: 3000,
    },
    b: {
      nEmbd: 256,
      nLayer: 2,
      nHead: 8,
      nHeadKv: 4,
      headDim: 32,
      nFfExp: 256,
      nFfShexp: 512,
      nExpert: 6,
      nExpertUsed: 1,
      nCtx: 2048,
      ropeBase: 10_000,
      rmsEps: 1e-5,
      tiedOutput: false,
      seed: 202,
      vocab: "qwen2",
      vocabSize: 3000,
    },
  },
  qwen3moe: {
    a: {
      nEmbd: 128,
      nLayer: 2,
      nHead: 4,
      nHeadKv: 2,
      headDim: 48,
      nFfExp: 64,
      nExpert: 5,
      nExpertUsed: 1,
      nCtx: 512,
      ropeBase: 1_000_000,
      rmsEps: 1e-6,
      tiedOutput: true,
      seed: 301,
      vocab: "qwen2",
      vocabSize: 3000,
    },
    b: {
      nEmbd: 256,
      nLayer: 3,
      nHead: 4,
      nHeadKv: 1,
      headDim: 128,
      nFfExp: 256,
      nExpert: 7,
      nExpertUsed: 3,
      nCtx: 2048,
      ropeBase: 150_000,
      rmsEps: 1e-5,
      tiedOutput: false,
      seed: 302,
      vocab: "qwen2",
      vocabSize: 3000,
    },
  },
  olmoe: {
    a: {
      nEmbd: 128,
      nLayer: 2,
      nHead: 4,
      nHeadKv: 4,
      headDim: 32,
      nFfExp: 64,
      nExpert: 6,
      nExpertUsed: 2,
      nCtx: 512,
      ropeBase: 10_000,
      rmsEps: 1e-5,
      tiedOutput: false,
      seed: 401,
      vocab: "gpt-neox",
      vocabSize: 3000,
    },
    b: {
      nEmbd: 256,
      nLayer: 3,
      nHead: 2,
      nHeadKv: 2,
      headDim: 128,
      nFfExp: 256,
      nExpert: 8,
      nExpertUsed: 3,
      nCtx: 2048,
      ropeBase: 500_000,
      rmsEps: 1e-6,
      tiedOutput: false,
      seed: 402,
      vocab: "qwen2",
      vocabSize: 3000,
    },
  },
  "gpt-oss": {
    a: {
      nEmbd: 128,
      nLayer: 2,
      nHead: 4,
      nHeadKv: 2,
      headDim: 32,
      nFfExp: 64,
      nExpert: 4,
      nExpertUsed: 2,
      nCtx: 512,
      ropeBase: 150_000,
      rmsEps: 1e-5,
      tiedOutput: false,
      slidingWindow: 8,
      yarnFactor: 8,
      yarnOrigCtx: 64,
      seed: 501,
      vocab: "qwen2",
      vocabSize: 3000,
    },
    b: {
      nEmbd: 256,
      nLayer: 4,
      nHead: 8,
      nHeadKv: 2,
      headDim: 64,
      nFfExp: 256,
      nExpert: 8,
      nExpertUsed: 4,
      nCtx: 2048,
      ropeBase: 150_000,
      rmsEps: 1e-5,
      tiedOutput: false,
      slidingWindow: 12,
      yarnFactor: 32,
      yarnOrigCtx: 128,
      seed: 502,
      vocab: "llama-bpe",
      vocabSize: 3000,
    },
  },
  deepseek2: {
    a: {
      nEmbd: 128,
      nLayer: 3,
      nHead: 4,
      nHeadKv: 1,
      qLoraRank: 0,
      kvLoraRank: 64,
      qkNopeDim: 32,
      qkRopeDim: 16,
      vHeadDim: 32,
      nLayerDenseLead: 1,
      nFf: 192,
      nFfExp: 64,
      nExpert: 7,
      nExpertUsed: 3,
      nExpertShared: 2,
      gating: "softmax",
      expertWeightsScale: 1,
      nCtx: 512,
      ropeBase: 10_000,
      rmsEps: 1e-6,
      yarnFactor: 4,
      yarnOrigCtx: 128,
      yarnMscaleAllDim: 0.707,
      tiedOutput: true,
      seed: 601,
      vocab: "deepseek-llm",
      vocabSize: 3000,
    },
    b: {
      nEmbd: 256,
      nLayer: 3,
      nHead: 4,
      nHeadKv: 1,
      qLoraRank: 256,
      kvLoraRank: 256,
      qkNopeDim: 64,
      qkRopeDim: 32,
      vHeadDim: 64,
      nLayerDenseLead: 1,
      nFf: 512,
      nFfExp: 256,
      nExpert: 8,
      nExpertUsed: 2,
      nExpertShared: 1,
      gating: "sigmoid",
      expertWeightsNorm: true,
      expertWeightsScale: 2.5,
      nExpertGroups: 4,
      nExpertGroupsUsed: 2,
      expProbsBias: true,
      nCtx: 2048,
      ropeBase: 10_000,
      rmsEps: 1e-6,
      yarnFactor: 8,
      yarnOrigCtx: 256,
      yarnMscaleAllDim: 1,
      tiedOutput: false,
      seed: 602,
      vocab: "qwen2",
      vocabSize: 3000,
    },
  },
  "minimax-m2": {
    a: {
      nEmbd: 128,
      nLayer: 2,
      nHead: 4,
      nHeadKv: 2,
      headDim: 32,
      ropeDim: 16,
      nFfExp: 64,
      nExpert: 6,
      nExpertUsed: 2,
      nCtx: 512,
      ropeBase: 10_000,
      rmsEps: 1e-6,
      seed: 701,
      vocab: "qwen2",
      vocabSize: 3000,
    },
    b: {
      nEmbd: 256,
      nLayer: 3,
      nHead: 8,
      nHeadKv: 2,
      headDim: 64,
      ropeDim: 32,
      nFfExp: 256,
      nExpert: 8,
      nExpertUsed: 3,
      gating: "softmax",
      nCtx: 2048,
      ropeBase: 5_000_000,
      rmsEps: 1e-6,
      seed: 702,
      vocab: "llama-bpe",
      vocabSize: 3000,
    },
  },
  qwen35moe: {
    a: {
      nEmbd: 128,
      nLayer: 4,
      nHead: 4,
      nHeadKv: 2,
      headDim: 32,
      ropeDim: 16,
      nFfExp: 64,
      nFfShexp: 96,
      nExpert: 6,
      nExpertUsed: 2,
      ssm: { convKernel: 4, stateSize: 16, nVHeads: 4, nKHeads: 2 },
      nCtx: 512,
      ropeBase: 1_000_000,
      rmsEps: 1e-6,
      tiedOutput: true,
      seed: 701,
      vocab: "qwen2",
      vocabSize: 3000,
    },
    b: {
      nEmbd: 256,
      nLayer: 4,
      nHead: 4,
      nHeadKv: 1,
      headDim: 64,
      ropeDim: 32,
      nFfExp: 256,
      nFfShexp: 256,
      nExpert: 7,
      nExpertUsed: 3,
      ssm: { convKernel: 4, stateSize: 32, nVHeads: 8, nKHeads: 2 },
      fullAttnInterval: 2,
      nCtx: 2048,
      ropeBase: 10_000_000,
      rmsEps: 1e-6,
      tiedOutput: false,
      seed: 702,
      vocab: "qwen2",
      vocabSize: 3000,
    },
  },
  qwen3next: {
    a: {
      nEmbd: 128,
      nLayer: 4,
      nHead: 4,
      nHeadKv: 2,
      headDim: 32,
      ropeDim: 8,
      nFfExp: 64,
      nFfShexp: 128,
      nExpert: 5,
      nExpertUsed: 2,
      ssm: { convKernel: 4, stateSize: 16, nVHeads: 4, nKHeads: 2 },
      nCtx: 512,
      ropeBase: 10_000_000,
      rmsEps: 1e-6,
      tiedOutput: false,
      seed: 801,
      vocab: "qwen2",
      vocabSize: 3000,
    },
    b: {
      nEmbd: 256,
      nLayer: 4,
      nHead: 8,
      nHeadKv: 2,
      headDim: 32,
      ropeDim: 16,
      nFfExp: 256,
      nFfShexp: 512,
      nExpert: 8,
      nExpertUsed: 2,
      ssm: { convKernel: 4, stateSize: 32, nVHeads: 8, nKHeads: 4 },
      fullAttnInterval: 2,
      nCtx: 2048,
      ropeBase: 10_000_000,
      rmsEps: 1e-6,
      tiedOutput: false,
      seed: 802,
      vocab: "qwen2",
      vocabSize: 3000,
    },
  },
};

/**
 * Kimi-K2 (moonshotai/Kimi-K2-Instruct config.json) as deepseek2 overrides
 * of shape `b`: 64 heads, q LoRA 1536, KV LoRA 512 (nope 128, rope 64,
 * v 128), 384 experts top-8 with one shared expert, the first block dense,
 * sigmoid routing with the selection bias, no groups, renormalised weights
 * scaled by 2.827, YaRN ×32 from 4096 positions, rope base 50000, and the
 * `kimi-k2` pre-tokenizer (on Qwen2's vocabulary cut to 3000 tokens).
 * Left small: 2 of 61 blocks, and the FFN widths (Kimi's experts are 2048
 * wide, its dense block 18432).
 *
 * `kimi-k2-cut` is 7168 wide (about 1 GB in F16); `kimi-k2-narrow` has the
 * same structure at width 256 with every per-head width cut, for tests. The
 * real shape, FFN widths and vocabulary included, is the `kimi-k2` preset of
 * `dev/presets.ts`.
 */
export const DEEPSEEK2_PRESETS: Readonly<
  Record<"kimi-k2-cut" | "kimi-k2-narrow", FixtureOptions>
> = (() => {
  const structure = {
    arch: "deepseek2",
    shape: "b",
    nLayer: 2,
    nHead: 64,
    nHeadKv: 1,
    nLayerDenseLead: 1,
    nExpert: 384,
    nExpertUsed: 8,
    nExpertShared: 1,
    nExpertGroups: 1,
    nExpertGroupsUsed: 1,
    gating: "sigmoid",
    expProbsBias: true,
    expertWeightsNorm: true,
    expertWeightsScale: 2.827,
    nCtx: 131072,
    ropeBase: 50_000,
    rmsEps: 1e-6,
    yarnFactor: 32,
    yarnOrigCtx: 4096,
    yarnMscaleAllDim: 1,
    tiedOutput: false,
    vocab: "qwen2",
    vocabSize: 3000,
    vocabPre: "kimi-k2",
  } as const;
  return {
    "kimi-k2-cut": {
      ...structure,
      nEmbd: 7168,
      qLoraRank: 1536,
      kvLoraRank: 512,
      qkNopeDim: 128,
      qkRopeDim: 64,
      vHeadDim: 128,
      nFf: 256,
      nFfExp: 32,
      seed: 604,
    },
    "kimi-k2-narrow": {
      ...structure,
      nEmbd: 256,
      qLoraRank: 96,
      kvLoraRank: 64,
      qkNopeDim: 16,
      qkRopeDim: 8,
      vHeadDim: 16,
      nFf: 128,
      nFfExp: 32,
      seed: 603,
    },
  };
})();

/** What {@linkcode fixtureModel} is asked for: a shape and type, and any fields to override. */
export interface FixtureOptions extends Partial<FixtureShapeSpec> {
  /** Architecture. */
  arch: SyntheticArch;
  /** File type (default `"F32"`). */
  type?: FixtureType;
  /** Shape set the other fields start from (default `"a"`). */
  shape?: FixtureShape;
}

/** A fixture's resolved definition: the shape with overrides applied. */
export interface FixtureDefinition {
  /** Architecture. */
  arch: SyntheticArch;
  /** File type. */
  type: FixtureType;
  /** Shape set it started from. */
  shape: FixtureShape;
  /** The dimensions and vocabulary source, overrides applied. */
  spec: FixtureShapeSpec;
}

/** The shape of `options` with its overrides applied (no file is made). */
export function fixtureDefinition(options: FixtureOptions): FixtureDefinition {
  const { arch, type = "F32", shape = "a", ...overrides } = options;
  const base = FIXTURE_SHAPES[arch]?.[shape];
  if (base === undefined) {
    throw new Error(
      `no fixture shape ${arch}/${shape}; shapes: a, b for ${
        Object.keys(FIXTURE_SHAPES).join(", ")
      }`,
    );
  }
  if (!(FIXTURE_TYPES as readonly string[]).includes(type)) {
    throw new Error(`unknown fixture type ${type}; types: ${FIXTURE_TYPES.join(", ")}`);
  }
  const spec: FixtureShapeSpec = { ...base };
  for (const [k, v] of Object.entries(overrides)) {
    if (v !== undefined) (spec as unknown as Record<string, unknown>)[k] = v;
  }
  return { arch, type, shape, spec };
}

const vocabCache = new Map<string, Promise<TokenizerMetadata>>();

/** The tokenizer of a vocabulary source cut to `size` tokens (cached per process). */
export function fixtureVocab(vocab: FixtureVocab, size?: number): Promise<TokenizerMetadata> {
  const key = `${vocab}:${size ?? "all"}`;
  let p = vocabCache.get(key);
  if (p === undefined) {
    p = (async () => {
      if (vocab === "builtin") return builtinTokenizer();
      const header = readGgufHeader(await vocabPath(vocab));
      return tokenizerFromGguf(header.metadata.entries, { maxTokens: size });
    })();
    p.catch(() => vocabCache.delete(key));
    vocabCache.set(key, p);
  }
  return p;
}

/**
 * The tokenizer of a vocabulary source with exactly `size` tokens when
 * `size` is at least as large as the source (padded with control tokens
 * `<|pad_N|>`, as real checkpoints pad their embeddings), or cut to `size`
 * counting the control tokens kept beyond the cut (so a real model's size is
 * met exactly) when the source has more; the source as is without `size`.
 * Cuts below the source's control-token count keep the old behaviour of
 * {@linkcode fixtureVocab} (the controls are kept beyond `size`).
 */
async function exactVocab(vocab: FixtureVocab, size?: number): Promise<TokenizerMetadata> {
  if (size === undefined) return fixtureVocab(vocab);
  const full = await fixtureVocab(vocab);
  if (size < full.nTokens) {
    const cut = await fixtureVocab(vocab, size);
    // exact only for real-model sizes (tens of thousands): the small test
    // fixtures keep their names (and cached files) with controls beyond the cut
    if (size < 10_000 || cut.nTokens === size) return cut;
    return fixtureVocab(vocab, size - (cut.nTokens - size));
  }
  if (size === full.nTokens) return full;
  const pad = size - full.nTokens;
  return {
    nTokens: size,
    entries: full.entries.map(([k, v]) => {
      if (v.type !== "array") return [k, v] as const;
      if (k === Keys.tokenizerTokens && v.itemType === "string") {
        const extra = Array.from({ length: pad }, (_, i) => `<|pad_${full.nTokens + i}|>`);
        return [k, gv.strings([...v.value, ...extra])] as const;
      }
      if (k === Keys.tokenizerTokenType) {
        const types = Int32Array.from(v.value as ArrayLike<number>);
        const out = new Int32Array(size).fill(TokenType.control);
        out.set(types);
        return [k, { type: "array", itemType: "i32", value: out } as GgufValue] as const;
      }
      if (k === Keys.tokenizerScores) {
        const out = new Float32Array(size);
        out.set(Float32Array.from(v.value as ArrayLike<number>));
        return [k, { type: "array", itemType: "f32", value: out } as GgufValue] as const;
      }
      return [k, v] as const;
    }),
  };
}

/** The generator spec of a fixture (F32 or F16; quantised types start from F32). */
export async function fixtureSpec(options: FixtureOptions): Promise<SyntheticSpec> {
  const def = fixtureDefinition(options);
  const { vocab, vocabSize, vocabPre, ...dims } = def.spec;
  const tokenizer = await exactVocab(vocab, vocabSize || undefined);
  return {
    ...dims,
    arch: def.arch,
    name: `od-moe fixture ${def.arch}/${def.shape}`,
    weightType: def.type === "F16" ? "F16" : "F32",
    vocab: vocabPre === undefined ? tokenizer : {
      nTokens: tokenizer.nTokens,
      // relabelled, or added after tokenizer.ggml.model where the source has none
      entries: tokenizer.entries.some(([k]) => k === Keys.tokenizerPre)
        ? tokenizer.entries.map(([k, v]) =>
          k === Keys.tokenizerPre ? [k, gv.str(vocabPre)] as const : [k, v]
        )
        : tokenizer.entries.flatMap(([k, v]) =>
          k === Keys.tokenizerModel
            ? [[k, v] as const, [Keys.tokenizerPre, gv.str(vocabPre)] as const]
            : [[k, v] as const]
        ),
    },
  };
}

let sourceHash: Promise<string> | undefined;

/**
 * A hash of the generator's source and of the reference package's version, so
 * that changing either invalidates cached fixtures.
 */
function generatorHash(): Promise<string> {
  sourceHash ??= (async () => {
    // the generator and what drives it: the config writers and plan blocks,
    // and every arch file (hyperparameters, tensor plans, init hints: the
    // files that import arch.ts); not the engine's other files
    const modelDir = `${REPO_ROOT}/src/model`;
    const generator = new Set(["synthetic.ts", "vocab.ts", "arch.ts", "config.ts", "plan.ts"]);
    const sources = [...Deno.readDirSync(modelDir)]
      .map((e) => e.name)
      .filter((n) =>
        isSource(n) &&
        (generator.has(n) || Deno.readTextFileSync(`${modelDir}/${n}`).includes(`"./arch.ts"`))
      )
      .sort()
      .map((n) => `src/model/${n}`);
    const files = [...sources, "node_modules/@node-llama-cpp/linux-x64/package.json"];
    const texts = await Promise.all(
      files.map((f) => Deno.readTextFile(`${REPO_ROOT}/${f}`).catch(() => "")),
    );
    return await sha256(texts.join("\u0000"));
  })();
  return sourceHash;
}

/** A TypeScript source file that is not a test. */
function isSource(name: string): boolean {
  return name.endsWith(".ts") && !name.endsWith("_test.ts");
}

async function sha256(text: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The cache path of a fixture: `<arch>-<shape>-<type>-<hash>.gguf`. */
export async function fixturePath(options: FixtureOptions): Promise<string> {
  const def = fixtureDefinition(options);
  const sorted = Object.fromEntries(
    Object.entries(def.spec).sort(([a], [b]) => a.localeCompare(b)),
  );
  // The I-quant files also depend on their recipe and importance matrix
  // (hashed only for them, so the other fixtures keep their names).
  const iq = iquantSetup(def.type);
  const hash = await sha256(
    JSON.stringify({
      arch: def.arch,
      spec: sorted,
      gen: await generatorHash(),
      ...(iq ? { iq: { ...iq, imatrix: IMATRIX_VERSION } } : {}),
    }),
  );
  return `${FIXTURE_DIR}/${def.arch}-${def.shape}-${def.type}-${hash.slice(0, 12)}.gguf`;
}

const pending = new Map<string, Promise<string>>();

/**
 * The path of a fixture model, generating it (and, for a quantised type, its
 * F32 source) if it is not cached yet.
 *
 * @throws if the vocabulary cannot be read (llama.cpp's source bundle is
 * missing: run `deno install`), or, for quantised types, if the llama.cpp
 * reference cannot load (`referenceUnavailableReason()` says why).
 */
export async function fixtureModel(options: FixtureOptions): Promise<string> {
  const path = await fixturePath(options);
  let p = pending.get(path);
  if (p === undefined) {
    p = makeFixture(options, path);
    p.catch(() => pending.delete(path));
    pending.set(path, p);
  }
  return p;
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

function tempName(path: string): string {
  return `${path}.tmp-${Deno.pid}-${crypto.randomUUID().slice(0, 8)}`;
}

async function makeFixture(options: FixtureOptions, path: string): Promise<string> {
  if (await exists(path)) return path;
  await Deno.mkdir(FIXTURE_DIR, { recursive: true });
  const type = options.type ?? "F32";
  if (type === "F32" || type === "F16") {
    // written tensor by tensor to its own temporary name, then renamed
    await writeGgufFileLazy(path, syntheticModelLazy(await fixtureSpec(options)));
    return path;
  }
  if (type === "MXFP4_F16") {
    const [f16, mxfp4] = await Promise.all([
      fixtureModel({ ...options, type: "F16" }),
      fixtureModel({ ...options, type: "MXFP4_MOE" }),
    ]);
    await writeGgufFile(path, await mixExperts(f16, mxfp4));
    return path;
  }
  const source = await fixtureModel({ ...options, type: "F32" });
  await quantizeInto(source, path, type);
  return path;
}

/**
 * The model of `basePath` with its routed-expert weight stacks taken from
 * `expertsPath` (same tensors, another type): MXFP4 experts as llama.cpp's
 * quantiser wrote them, every other tensor as the base file has it.
 */
async function mixExperts(basePath: string, expertsPath: string): Promise<GgufWriteSpec> {
  const base = readGgufModel(basePath);
  const experts = readGgufModel(expertsPath);
  const [baseBytes, expertBytes] = await Promise.all([
    Deno.readFile(basePath),
    Deno.readFile(expertsPath),
  ]);
  const tensors: GgufTensorSpec[] = base.tensors.map((t) => {
    const fromExperts = isExpertTensor(t.name) && t.name.endsWith(".weight");
    const src = fromExperts ? experts.tensorMap.get(t.name)! : t;
    const bytes = fromExperts ? expertBytes : baseBytes;
    return {
      name: t.name,
      type: src.type.id,
      shape: src.shape,
      data: bytes.subarray(src.fileOffset, src.fileOffset + src.nBytes),
    };
  });
  return { metadata: base.metadata.entries, tensors };
}

/**
 * How llama.cpp's quantiser makes an I-quant or ternary fixture type: its
 * file type, per-tensor overrides (a recipe's) and whether it gets the
 * synthetic importance matrix; undefined for the other types.
 */
function iquantSetup(
  type: FixtureType,
): { ftype: LlamaFtypeName; tensorTypes: [string, number][] } | undefined {
  if (type in QUANT_RECIPES) {
    const r = QUANT_RECIPES[type as QuantRecipeName];
    return { ftype: r.ftype, tensorTypes: tensorTypeIds(r.tensorTypes) };
  }
  // llama.cpp's IQ2_S file type is mostly IQ2_XS; its IQ2_M is mostly IQ2_S.
  if (type === "IQ2_S") return { ftype: "MOSTLY_IQ2_M", tensorTypes: [] };
  if (/^(IQ|TQ)/.test(type)) return { ftype: llamaFtypeOf(type as never), tensorTypes: [] };
  return undefined;
}

/** The llama.cpp file type that makes a fixture type. */
function llamaFtypeOf(type: Exclude<FixtureType, "F32" | "MXFP4_F16">): LlamaFtypeName {
  const name = `MOSTLY_${type}`;
  if (!(name in LlamaFtype)) throw new Error(`llama.cpp has no file type ${name}`);
  return name as LlamaFtypeName;
}

/** Runs llama.cpp's quantiser into a temporary name, then renames it to `path`. */
async function quantizeInto(
  source: string,
  path: string,
  type: Exclude<FixtureType, "F32" | "MXFP4_F16">,
) {
  const tmp = tempName(path);
  try {
    const iq = iquantSetup(type);
    if (iq) {
      loadReference().quantize(source, tmp, iq.ftype, {
        tensorTypes: iq.tensorTypes,
        imatrix: syntheticImatrix(source),
      });
    } else {
      loadReference().quantize(source, tmp, llamaFtypeOf(type));
    }
    await Deno.rename(tmp, path);
  } finally {
    await Deno.remove(tmp).catch(() => {});
  }
}

/**
 * PARITY.md's exact reference for a quantised fixture: an all-F32 copy
 * written by llama.cpp's quantiser (`ALL_F32`, requantise allowed), so the
 * dequantisation is llama.cpp's own. Cached beside the fixture.
 */
export async function fixtureDequantized(options: FixtureOptions): Promise<string> {
  const quantized = await fixtureModel(options);
  const path = quantized.replace(/\.gguf$/, "-dequant.gguf");
  let p = pending.get(path);
  if (p === undefined) {
    p = (async () => {
      if (await exists(path)) return path;
      const tmp = tempName(path);
      try {
        loadReference().quantize(quantized, tmp, "ALL_F32", { allowRequantize: true });
        await Deno.rename(tmp, path);
      } finally {
        await Deno.remove(tmp).catch(() => {});
      }
      return path;
    })();
    p.catch(() => pending.delete(path));
    pending.set(path, p);
  }
  return p;
}
