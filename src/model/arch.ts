/**
 * What an architecture file provides ({@linkcode ArchSpec}): reading its
 * hyperparameters and writing them back, its tensor plan, and what the
 * synthetic-model generator (`synthetic.ts`) needs to make test models of
 * it. Everything an architecture decides lives in its one file
 * (`qwen3_moe.ts`, `deepseek2.ts`, …) and one line of `registry.ts`; the
 * forward pass reads only {@linkcode ModelConfig} fields (`blocks/`), and
 * each arch file lists its blocks in its module doc.
 *
 * @module
 */

import type { GgufMetadata } from "../gguf/reader.ts";
import type { GgufValue } from "../gguf/value.ts";
import {
  type CommonConfig,
  type ModelConfig,
  type TensorPlanEntry,
  yarnAttnFactor,
} from "./config.ts";
import type { SyntheticSpec } from "./synthetic.ts";

/** A synthetic spec with its defaults filled in (`resolveSyntheticSpec`). */
export type ResolvedSyntheticSpec = Required<SyntheticSpec>;

/** How the generator draws a tensor's values. */
export type Init =
  | { kind: "normal"; std: number }
  | { kind: "norm"; scale: number; jitter: number }
  | { kind: "uniform"; lo: number; hi: number };

/** `N(0, (gain / √fanIn)²)`: unit-scale activations through a projection with `fanIn` inputs. */
export function normalInit(fanIn: number, gain = 1): Init {
  return { kind: "normal", std: gain / Math.sqrt(fanIn) };
}

/** A tensor as the generator's init hints see it. */
export interface InitTensor {
  /** Name template (`Tensors.*`, e.g. `blk.{bid}.ffn_gate_exps`). */
  readonly base: string;
  /** `weight` or `bias`. */
  readonly suffix: string;
  /** ggml shape. */
  readonly shape: readonly number[];
}

/** The fields of {@linkcode SyntheticSpec} that only some architectures take. */
export type ArchOnlyField =
  | "nFfShexp"
  | "qLoraRank"
  | "kvLoraRank"
  | "qkNopeDim"
  | "qkRopeDim"
  | "vHeadDim"
  | "nLayerDenseLead"
  | "nFf"
  | "nExpertShared"
  | "gating"
  | "expertWeightsNorm"
  | "expertWeightsScale"
  | "nExpertGroups"
  | "nExpertGroupsUsed"
  | "expProbsBias"
  | "yarnMscaleAllDim"
  | "archName"
  | "nNextn"
  | "slidingWindow"
  | "ssm"
  | "fullAttnInterval"
  | "legacyInProj";

/**
 * What the synthetic-model generator needs from an architecture beyond
 * {@linkcode ArchSpec.writeConfig} and {@linkcode ArchSpec.tensorPlan}.
 */
export interface SyntheticHints {
  /** The arch-only spec fields it takes; setting another is refused, naming who takes it. */
  readonly fields?: readonly ArchOnlyField[];
  /** Defaults of those fields where not 0/false. */
  readonly defaults?: Partial<SyntheticSpec>;
  /** llama.cpp's rules for this architecture's shapes: calls `bad` with the rule broken. */
  check?(s: ResolvedSyntheticSpec, bad: (msg: string) => never): void;
  /** The hyperparameters of a spec (what `writeConfig` writes and `tensorPlan` lays out). */
  config(s: ResolvedSyntheticSpec): ModelConfig;
  /** How a tensor is drawn where the generator's defaults do not fit; undefined = default. */
  init?(t: InitTensor, s: ResolvedSyntheticSpec): Init | undefined;
  /** Whether to write an optional tensor of the plan other than `output` (default: no). */
  writeOptional?(name: string, s: ResolvedSyntheticSpec): boolean;
  /** Tensors the file holds that the engine does not read (deepseek2's MTP blocks). */
  extraTensors?(c: ModelConfig): TensorPlanEntry[];
  /** The file's tensors from the plan's, where a spec asks for another layout (older converters'); default as planned. */
  fileTensors?(entries: TensorPlanEntry[], s: ResolvedSyntheticSpec): TensorPlanEntry[];
}

/** What an architecture file provides. */
export interface ArchSpec<N extends string = string> {
  /** `general.architecture` value. */
  readonly name: N;
  /** Hyperparameters from metadata; throws a ModelConfigError naming the key. */
  readConfig(md: GgufMetadata): ModelConfig;
  /**
   * The reverse of `readConfig`: the hyperparameter metadata llama.cpp's
   * converter writes for `c` (no `general.*` or tokenizer keys), such that
   * `readConfig` of it gives `c` back.
   */
  writeConfig(c: ModelConfig): [string, GgufValue][];
  /** Every tensor the architecture needs, with shapes and roles. */
  tensorPlan(c: ModelConfig): TensorPlanEntry[];
  /** What the synthetic-model generator needs; absent for a name of another arch's graph. */
  readonly synthetic?: SyntheticHints;
}

/**
 * The hyperparameters every transformer shares, from a synthetic spec: what
 * `readCommonConfig` reads from the file the generator writes for it.
 */
export function syntheticCommonConfig(s: ResolvedSyntheticSpec): CommonConfig {
  const ropeFreqScale = s.yarnFactor ? 1 / s.yarnFactor : 1;
  const yarnExtFactor = s.yarnFactor ? 1 : 0;
  return {
    arch: s.archName,
    nVocab: s.vocab.nTokens,
    nEmbd: s.nEmbd,
    nLayer: s.nLayer,
    nCtxTrain: s.nCtx,
    nHead: s.nHead,
    nHeadKv: s.nHeadKv,
    headDimK: s.headDim,
    headDimV: s.headDim,
    nRot: s.ropeDim,
    ropeFreqBase: s.ropeBase,
    ropeFreqScale,
    yarnExtFactor,
    yarnAttnFactor: yarnAttnFactor({
      freqScale: ropeFreqScale,
      extFactor: yarnExtFactor,
      ropeAttnFactor: 1,
    }),
    yarnBetaFast: 32,
    yarnBetaSlow: 1,
    nCtxOrig: s.yarnFactor ? s.yarnOrigCtx : s.nCtx,
    rmsEps: s.rmsEps,
    nExpert: s.nExpert,
    nExpertUsed: s.nExpertUsed,
    expertWeightsScale: s.expertWeightsScale,
    nExpertGroups: s.nExpertGroups,
    nExpertGroupsUsed: s.nExpertGroups > 1 ? s.nExpertGroupsUsed : 0,
    attnScale: 1 / Math.sqrt(s.headDim),
  };
}
