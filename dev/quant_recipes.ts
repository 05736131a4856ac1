/**
 * What llama.cpp's quantiser needs to write I-quant files like the ones
 * people download for huge MoE models: per-tensor type mixes ("recipes", as
 * llama-quantize's `--tensor-type PATTERN=TYPE`) and an importance matrix.
 * Used by the test fixtures (`dev/fixtures.ts`) and `deno task make-model`.
 *
 * @module
 */

import { GgmlType, type GgmlTypeName } from "../src/gguf/types.ts";
import { readGgufModel } from "../src/gguf/reader.ts";
import { Rng } from "../src/util/rng.ts";
import type { LlamaFtypeName } from "./ref/llama_cpp.ts";

/** A file type made of a base llama.cpp file type and per-tensor overrides. */
export interface QuantRecipe {
  /** What it mimics. */
  readonly about: string;
  /** The llama.cpp file type for tensors no pattern names. */
  readonly ftype: LlamaFtypeName;
  /** `[regex, type]`: the first pattern found in a tensor's name sets its type. */
  readonly tensorTypes: ReadonlyArray<readonly [string, GgmlTypeName]>;
}

/**
 * The two dynamic mixes of issue 17, after the public "UD" recipes for
 * DeepSeek-V3/Kimi-K2: routed experts at 1.5–3 bits with `ffn_down_exps` a
 * step higher, attention and shared experts at Q4_K–Q8_0, dense leading
 * blocks, embeddings and the output head higher. Rows that are not a
 * multiple of 256 fall back to llama.cpp's choice (Q5_0/Q5_1/Q8_0).
 */
export const QUANT_RECIPES = {
  IQ1_MIX: {
    about: "~1.6-bit experts: IQ1_S gate/up, IQ1_M down; Q4_K attention, Q8_0 shared/dense",
    ftype: "MOSTLY_IQ1_S",
    tensorTypes: [
      ["ffn_down_exps", "IQ1_M"],
      ["ffn_(gate|up)_exps", "IQ1_S"],
      ["_shexp", "Q8_0"],
      ["ffn_(gate|up|down)\\.weight", "Q8_0"],
      ["attn_", "Q4_K"],
      ["output\\.weight", "Q6_K"],
      ["token_embd", "Q4_K"],
    ],
  },
  IQ2_MIX: {
    about: "~2.5-bit experts: IQ2_XXS gate/up, IQ3_XXS down; Q4_K attention, Q6_K shared/dense",
    ftype: "MOSTLY_IQ2_XXS",
    tensorTypes: [
      ["ffn_down_exps", "IQ3_XXS"],
      ["ffn_(gate|up)_exps", "IQ2_XXS"],
      ["_shexp", "Q6_K"],
      ["ffn_(gate|up|down)\\.weight", "Q6_K"],
      ["attn_", "Q4_K"],
      ["output\\.weight", "Q6_K"],
      ["token_embd", "Q4_K"],
    ],
  },
} as const satisfies Record<string, QuantRecipe>;

/** A recipe's name. */
export type QuantRecipeName = keyof typeof QUANT_RECIPES;

/** `--tensor-type` overrides as llama.cpp takes them: `[regex, ggml type id]`. */
export function tensorTypeIds(
  tensorTypes: ReadonlyArray<readonly [string, string]>,
): [string, number][] {
  return tensorTypes.map(([pattern, name]) => {
    const id = (GgmlType as Record<string, number>)[name.toUpperCase()];
    if (id === undefined) {
      throw new Error(
        `tensor type override ${pattern}=${name}: unknown ggml type; types: ${
          Object.keys(GgmlType).join(", ")
        }`,
      );
    }
    return [pattern, id];
  });
}

/** Bumped whenever {@linkcode syntheticImatrix} changes, so cached files are remade. */
export const IMATRIX_VERSION = 1;

/**
 * A documented synthetic importance matrix for every matrix of a GGUF:
 * tensor name → `ne0 × ne2` weights (one per input column and expert), each
 * 0.25 + a uniform draw in [0, 1), one column in 16 ten times heavier —
 * the shape of the mean squared activations `llama-imatrix` collects (mostly
 * of one scale, a few outlier channels), seeded by the tensor's name so a
 * file is remade bit for bit. It steers the I-quant searches as a real one
 * does; it is not a measurement of any text.
 */
export function syntheticImatrix(ggufPath: string): Map<string, Float32Array<ArrayBuffer>> {
  const out = new Map<string, Float32Array<ArrayBuffer>>();
  for (const t of readGgufModel(ggufPath).tensors) {
    if (t.shape.length < 2) continue;
    out.set(t.name, syntheticImatrixFor(t.name, t.shape));
  }
  return out;
}

/** {@linkcode syntheticImatrix}'s weights for one matrix, from its name and shape. */
export function syntheticImatrixFor(
  name: string,
  shape: readonly number[],
): Float32Array<ArrayBuffer> {
  let seed = 17;
  for (let i = 0; i < name.length; i++) seed = Math.imul(seed, 31) + name.charCodeAt(i);
  const rng = new Rng(seed);
  const n = shape[0]! * (shape[2] ?? 1);
  return Float32Array.from(
    { length: n },
    () => (rng.next() < 1 / 16 ? 10 : 1) * (0.25 + rng.next()),
  );
}

/** The ggml types whose quantiser refuses to run without an importance matrix. */
export const IMATRIX_TYPES: ReadonlySet<number> = new Set([
  GgmlType.IQ1_S,
  GgmlType.IQ1_M,
  GgmlType.IQ2_XXS,
  GgmlType.IQ2_XS,
  GgmlType.IQ2_S,
  GgmlType.IQ3_XXS,
]);
