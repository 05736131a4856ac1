/**
 * Real model shapes for the generator: the published hyperparameters of the
 * MoE models people run, as `dev/fixtures.ts` options, for
 * `deno task make-model --preset NAME [--layers N]` and the benchmarks.
 *
 * Every field is the model's own (from its `config.json`): width, heads and
 * KV heads, head dims, expert count, top-k, expert FFN width, shared experts,
 * dense leading layers, rope base and YaRN, sliding window, context, and the
 * vocabulary size. `--layers N` keeps the first N blocks and everything else
 * real; a deepseek2 preset keeps `min(dense leading, N − 1)` dense blocks so
 * the file always has a routed-expert block (deepseek-v3 at `--layers 4` is
 * its 3 dense blocks and its first MoE block).
 *
 * The vocabulary is llama.cpp's bundled one where it bundles the model's
 * (`qwen2` for Qwen2/Qwen3, `llama-spm` for Mixtral, `gpt-neox` for OLMoE,
 * cut to OLMoE's 50,304); where it does not (DeepSeek-V3, Kimi-K2,
 * GPT-OSS), the Qwen2 vocabulary, cut or padded with control tokens
 * `<|pad_N|>` to the model's exact size and labelled with the model's
 * pre-tokenizer (`deepseek-v3`, `kimi-k2`, `gpt-4o`), so the embedding and
 * output head have the real shapes.
 *
 * @module
 */

import { fixtureDefinition, type FixtureOptions } from "./fixtures.ts";
import { syntheticTensors } from "../src/model/synthetic.ts";
import { isExpertTensor } from "../src/gguf/names.ts";

/** A real model's shape, as fixture options (`nLayer` is the full count). */
export interface ShapePreset {
  /** The model it reproduces (Hugging Face repository). */
  readonly about: string;
  /** Fixture options at full depth (shape `b`: K-quant-friendly defaults for anything unset). */
  readonly options: FixtureOptions & { nLayer: number; vocabSize: number };
  /** Layers `make-model` writes when `--layers` is not given. */
  readonly defaultLayers: number;
}

const QWEN3 = {
  arch: "qwen3moe",
  shape: "b",
  headDim: 128,
  nExpertUsed: 8,
  nCtx: 40960,
  ropeBase: 1_000_000,
  rmsEps: 1e-6,
  tiedOutput: false,
  vocab: "qwen2",
  vocabSize: 151_936,
} as const;

const GPT_OSS = {
  arch: "gpt-oss",
  shape: "b",
  nEmbd: 2880,
  nHead: 64,
  nHeadKv: 8,
  headDim: 64,
  nFfExp: 2880,
  nExpertUsed: 4,
  nCtx: 131_072,
  ropeBase: 150_000,
  rmsEps: 1e-5,
  slidingWindow: 128,
  yarnFactor: 32,
  yarnOrigCtx: 4096,
  tiedOutput: false,
  vocab: "qwen2",
  vocabSize: 201_088,
  vocabPre: "gpt-4o",
} as const;

const DEEPSEEK_MLA = {
  arch: "deepseek2",
  shape: "b",
  nEmbd: 7168,
  nHeadKv: 1,
  qLoraRank: 1536,
  kvLoraRank: 512,
  qkNopeDim: 128,
  qkRopeDim: 64,
  vHeadDim: 128,
  nFf: 18432,
  nFfExp: 2048,
  nExpertUsed: 8,
  nExpertShared: 1,
  gating: "sigmoid",
  expProbsBias: true,
  expertWeightsNorm: true,
  rmsEps: 1e-6,
  yarnOrigCtx: 4096,
  yarnMscaleAllDim: 1,
  tiedOutput: false,
  vocab: "qwen2",
} as const;

/**
 * The hybrid Qwens' shared shape (Qwen3-Next-80B-A3B and Qwen3.5-35B-A3B
 * config.json): width 2048, 16 heads of 256 over 2 KV heads with a quarter
 * of each rotated, gated DeltaNet layers of 32 value heads over 16 q/k heads
 * of 128 with a conv of 4, every fourth block full attention, experts 512
 * wide and a shared expert of 512.
 */
const QWEN_HYBRID = {
  shape: "b",
  nEmbd: 2048,
  nHead: 16,
  nHeadKv: 2,
  headDim: 256,
  ropeDim: 64,
  nFfExp: 512,
  nFfShexp: 512,
  ssm: { convKernel: 4, stateSize: 128, nVHeads: 32, nKHeads: 16 },
  fullAttnInterval: 4,
  nCtx: 262_144,
  ropeBase: 10_000_000,
  rmsEps: 1e-6,
  tiedOutput: false,
} as const;

/** The shape presets, by name. */
export const SHAPE_PRESETS = {
  "qwen3-30b-a3b": {
    about: "Qwen/Qwen3-30B-A3B",
    options: {
      ...QWEN3,
      nEmbd: 2048,
      nLayer: 48,
      nHead: 32,
      nHeadKv: 4,
      nFfExp: 768,
      nExpert: 128,
      seed: 1601,
    },
    defaultLayers: 1,
  },
  "qwen3-235b-a22b": {
    about: "Qwen/Qwen3-235B-A22B",
    options: {
      ...QWEN3,
      nEmbd: 4096,
      nLayer: 94,
      nHead: 64,
      nHeadKv: 4,
      nFfExp: 1536,
      nExpert: 128,
      seed: 1602,
    },
    defaultLayers: 1,
  },
  "mixtral-8x7b": {
    about: "mistralai/Mixtral-8x7B-v0.1",
    options: {
      arch: "llama",
      shape: "b",
      nEmbd: 4096,
      nLayer: 32,
      nHead: 32,
      nHeadKv: 8,
      headDim: 128,
      nFfExp: 14336,
      nExpert: 8,
      nExpertUsed: 2,
      nCtx: 32768,
      ropeBase: 1_000_000,
      rmsEps: 1e-5,
      tiedOutput: false,
      vocab: "llama-spm",
      vocabSize: 32000,
      seed: 1603,
    },
    defaultLayers: 1,
  },
  "qwen2-57b-a14b": {
    about: "Qwen/Qwen2-57B-A14B",
    options: {
      arch: "qwen2moe",
      shape: "b",
      nEmbd: 3584,
      nLayer: 28,
      nHead: 28,
      nHeadKv: 4,
      headDim: 128,
      nFfExp: 2560,
      nFfShexp: 20480,
      nExpert: 64,
      nExpertUsed: 8,
      nCtx: 32768,
      ropeBase: 1_000_000,
      rmsEps: 1e-6,
      tiedOutput: false,
      vocab: "qwen2",
      vocabSize: 151_936,
      seed: 1604,
    },
    defaultLayers: 1,
  },
  "deepseek-v3": {
    about: "deepseek-ai/DeepSeek-V3",
    options: {
      ...DEEPSEEK_MLA,
      nLayer: 61,
      nHead: 128,
      nLayerDenseLead: 3,
      nExpert: 256,
      nExpertGroups: 8,
      nExpertGroupsUsed: 4,
      expertWeightsScale: 2.5,
      nCtx: 163_840,
      ropeBase: 10_000,
      yarnFactor: 40,
      vocabSize: 129_280,
      vocabPre: "deepseek-v3",
      seed: 1605,
    },
    defaultLayers: 1,
  },
  "kimi-k2": {
    about: "moonshotai/Kimi-K2-Instruct",
    options: {
      ...DEEPSEEK_MLA,
      nLayer: 61,
      nHead: 64,
      nLayerDenseLead: 1,
      nExpert: 384,
      nExpertGroups: 1,
      nExpertGroupsUsed: 1,
      expertWeightsScale: 2.827,
      nCtx: 131_072,
      ropeBase: 50_000,
      yarnFactor: 32,
      vocabSize: 163_840,
      vocabPre: "kimi-k2",
      seed: 1606,
    },
    defaultLayers: 1,
  },
  "gpt-oss-20b": {
    about: "openai/gpt-oss-20b",
    options: { ...GPT_OSS, nLayer: 24, nExpert: 32, seed: 1607 },
    defaultLayers: 2,
  },
  "gpt-oss-120b": {
    about: "openai/gpt-oss-120b",
    options: { ...GPT_OSS, nLayer: 36, nExpert: 128, seed: 1608 },
    defaultLayers: 2,
  },
  "qwen3-next-80b-a3b": {
    about: "Qwen/Qwen3-Next-80B-A3B-Instruct",
    options: {
      ...QWEN_HYBRID,
      arch: "qwen3next",
      nLayer: 48,
      nExpert: 512,
      nExpertUsed: 10,
      vocab: "qwen2",
      vocabSize: 151_936,
      seed: 1610,
    },
    defaultLayers: 4,
  },
  "qwen3.5-35b-a3b": {
    about: "Qwen/Qwen3.5-35B-A3B",
    options: {
      ...QWEN_HYBRID,
      arch: "qwen35moe",
      nLayer: 40,
      nExpert: 256,
      nExpertUsed: 8,
      vocab: "qwen35",
      vocabSize: 248_320,
      seed: 1611,
    },
    defaultLayers: 4,
  },
  "olmoe-1b-7b": {
    about: "allenai/OLMoE-1B-7B-0924",
    options: {
      arch: "olmoe",
      shape: "b",
      nEmbd: 2048,
      nLayer: 16,
      nHead: 16,
      nHeadKv: 16,
      headDim: 128,
      nFfExp: 1024,
      nExpert: 64,
      nExpertUsed: 8,
      nCtx: 4096,
      ropeBase: 10_000,
      rmsEps: 1e-5,
      tiedOutput: false,
      vocab: "gpt-neox",
      vocabSize: 50_304,
      vocabPre: "olmo",
      seed: 1609,
    },
    defaultLayers: 1,
  },
} as const satisfies Record<string, ShapePreset>;

/** A preset's name. */
export type ShapePresetName = keyof typeof SHAPE_PRESETS;

/** The names of {@linkcode SHAPE_PRESETS}. */
export const SHAPE_PRESET_NAMES = Object.keys(SHAPE_PRESETS) as ShapePresetName[];

/**
 * A preset's fixture options cut to its first `layers` blocks (default: the
 * preset's `defaultLayers`; deepseek2 keeps `min(dense leading, layers − 1)`
 * dense blocks).
 *
 * @throws a `RangeError` naming the preset for an unknown name or a layer
 * count outside 1…the model's.
 */
export function presetOptions(name: string, layers?: number): FixtureOptions {
  const preset = (SHAPE_PRESETS as Record<string, ShapePreset>)[name];
  if (preset === undefined) {
    throw new RangeError(`unknown preset ${name}; presets: ${SHAPE_PRESET_NAMES.join(", ")}`);
  }
  const n = layers ?? preset.defaultLayers;
  const full = preset.options.nLayer;
  if (!Number.isInteger(n) || n < 1 || n > full) {
    throw new RangeError(`preset ${name}: --layers must be an integer in 1…${full}, got ${n}`);
  }
  const out: FixtureOptions = { ...preset.options, nLayer: n };
  if (out.nLayerDenseLead !== undefined) {
    out.nLayerDenseLead = Math.min(out.nLayerDenseLead, n - 1);
  }
  return out;
}

/** Parameter counts of a shape: all, and in routed experts. */
export interface ParamCount {
  /** Every tensor's elements. */
  readonly total: number;
  /** Elements of routed-expert tensors. */
  readonly experts: number;
  /** Elements of the largest tensor (what the writer holds at once). */
  readonly largest: number;
}

/** Counts the parameters of fixture options (unset fields from their shape) without making anything. */
export function countParams(options: FixtureOptions): ParamCount {
  const { arch, spec } = fixtureDefinition(options);
  const { vocab: _v, vocabSize, vocabPre: _p, ...dims } = spec;
  const tensors = syntheticTensors({
    ...dims,
    arch,
    vocab: { nTokens: vocabSize || 1, entries: [] },
  });
  let total = 0;
  let experts = 0;
  let largest = 0;
  for (const t of tensors) {
    const n = t.shape.reduce((a, b) => a * b, 1);
    total += n;
    if (isExpertTensor(t.name)) experts += n;
    largest = Math.max(largest, n);
  }
  return { total, experts, largest };
}
