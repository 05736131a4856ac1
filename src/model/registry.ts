/**
 * The architecture registry, keyed by `general.architecture`: one line per
 * architecture file. Adding a plain MoE architecture is one arch file
 * (config reader and writer, tensor plan, generator hints: see `arch.ts`),
 * one line in {@linkcode ARCHITECTURES}, and one fixture shape entry in
 * `dev/fixtures.ts`.
 *
 * @module
 */

import type { ArchSpec } from "./arch.ts";
import { llamaMoe } from "./llama_moe.ts";
import { qwen2Moe } from "./qwen2_moe.ts";
import { qwen3Moe } from "./qwen3_moe.ts";
import { deepseek2, mistral4 } from "./deepseek2.ts";
import { gptOss } from "./gpt_oss.ts";
import { olmoe } from "./olmoe.ts";
import { minimaxM2 } from "./minimax_m2.ts";
import { qwen35Moe, qwen3Next } from "./qwen3next.ts";

export type { ArchSpec } from "./arch.ts";

/** The architectures with their own synthetic models and fixtures, in the order tests list them. */
const ARCHITECTURES = [
  llamaMoe,
  qwen2Moe,
  qwen3Moe,
  olmoe,
  gptOss,
  deepseek2,
  minimaxM2,
  qwen35Moe,
  qwen3Next,
] as const;

/** Other names of those graphs (synthetic files: deepseek2's `archName`). */
const ALIASES = [mistral4] as const;

/** The name of an architecture the generator writes and the fixtures cover. */
export type SyntheticArch = (typeof ARCHITECTURES)[number]["name"];

const registry: ReadonlyMap<string, ArchSpec> = new Map(
  [...ARCHITECTURES, ...ALIASES].map((a) => [a.name, a as ArchSpec]),
);

/** Names of the supported architectures. */
export function supportedArchitectures(): string[] {
  return [...registry.keys()];
}

/** Names of the architectures the generator writes (`synthetic.ts`), in registry order. */
export function syntheticArchitectures(): SyntheticArch[] {
  return ARCHITECTURES.map((a) => a.name);
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
