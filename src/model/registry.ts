/**
 * The architecture registry, keyed by `general.architecture`.
 *
 * @module
 */

import type { GgufMetadata } from "../gguf/reader.ts";
import type { ModelConfig, TensorPlanEntry } from "./config.ts";
import { llamaMoe } from "./llama_moe.ts";
import { qwen2Moe } from "./qwen2_moe.ts";
import { qwen3Moe } from "./qwen3_moe.ts";
import { deepseek2, mistral4 } from "./deepseek2.ts";
import { gptOss } from "./gpt_oss.ts";
import { olmoe } from "./olmoe.ts";

/** What an architecture file provides. */
export interface ArchSpec {
  /** `general.architecture` value. */
  readonly name: string;
  /** Hyperparameters from metadata; throws a ModelConfigError naming the key. */
  readConfig(md: GgufMetadata): ModelConfig;
  /** Every tensor the architecture needs, with shapes and roles. */
  tensorPlan(c: ModelConfig): TensorPlanEntry[];
}

const registry: ReadonlyMap<string, ArchSpec> = new Map(
  [llamaMoe, qwen2Moe, qwen3Moe, olmoe, gptOss, deepseek2, mistral4].map((a) => [a.name, a]),
);

/** Names of the supported architectures. */
export function supportedArchitectures(): string[] {
  return [...registry.keys()];
}

/** An architecture that od-moe does not run. */
export class UnsupportedArchitectureError extends Error {
  /** Builds the error for `arch`. */
  constructor(readonly arch: string) {
    super(
      `Unsupported GGUF architecture: ${arch || "(none)"} (supported: ${
        supportedArchitectures().join(", ")
      })`,
    );
    this.name = "UnsupportedArchitectureError";
  }
}

/** The spec of an architecture; throws UnsupportedArchitectureError listing the supported ones. */
export function archSpec(arch: string): ArchSpec {
  const spec = registry.get(arch);
  if (!spec) throw new UnsupportedArchitectureError(arch);
  return spec;
}
