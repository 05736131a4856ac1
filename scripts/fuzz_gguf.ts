/**
 * Fuzzes the GGUF reader: truncates a valid file at every length and mutates
 * random bytes, and checks that each case either parses or raises a
 * GgufError — never another exception, a hang or a huge allocation.
 *
 *   deno task fuzz-gguf [--cases N] [--seed S]
 *
 * The test suite runs a few thousand cases through {@link fuzzCase}; this
 * script runs as many as asked.
 *
 * @module
 */

import { parseGguf } from "../src/gguf/reader.ts";
import { serializeGguf } from "../src/gguf/writer.ts";
import { GgufError } from "../src/gguf/errors.ts";
import { GgmlType, requireGgmlType, tensorBytes } from "../src/gguf/types.ts";
import { gv } from "../src/gguf/value.ts";
import { Rng } from "../src/util/rng.ts";

/** A small valid GGUF holding every kind of metadata and a few tensors. */
export function fuzzSeedFile(): Uint8Array {
  const q4k = requireGgmlType(GgmlType.Q4_K);
  return serializeGguf({
    metadata: [
      ["general.architecture", gv.str("llama")],
      ["llama.block_count", gv.u32(2)],
      ["llama.rope.freq_base", gv.f32(10000)],
      ["llama.expert_count", gv.u64(8)],
      ["general.flag", gv.bool(true)],
      ["tokenizer.ggml.tokens", gv.strings(["<s>", "</s>", "▁a", "b", "日本"])],
      ["tokenizer.ggml.scores", gv.f32s([0, 0, -1, -2, -3])],
      ["tokenizer.ggml.token_type", gv.i32s([3, 3, 1, 1, 1])],
      ["general.tags", { type: "array", itemType: "array", value: [gv.u32s([1, 2]) as never] }],
    ],
    tensors: [
      { name: "token_embd.weight", type: GgmlType.F32, shape: [4, 5], data: new Uint8Array(80) },
      {
        name: "blk.0.ffn_up_exps.weight",
        type: GgmlType.Q4_K,
        shape: [256, 2, 2],
        data: new Uint8Array(tensorBytes(q4k, [256, 2, 2])).fill(3),
      },
      { name: "output_norm.weight", type: GgmlType.F16, shape: [4], data: new Uint8Array(8) },
    ],
  });
}

/** The outcome of one case: parsed, or rejected with a GgufError. Anything else throws. */
export type FuzzOutcome = "parsed" | "rejected";

/** Parses `bytes`; rethrows anything that is not a GgufError, naming the case. */
export function fuzzCase(bytes: Uint8Array, label: string): FuzzOutcome {
  try {
    parseGguf(bytes, label);
    return "parsed";
  } catch (e) {
    if (e instanceof GgufError) return "rejected";
    throw new Error(`${label}: the reader threw ${String(e)} instead of a GgufError`, { cause: e });
  }
}

/** Copies `seed` with 1–8 random bytes changed (biased towards header fields). */
export function mutate(seed: Uint8Array, rng: Rng): Uint8Array {
  const out = seed.slice();
  const n = 1 + rng.int(8);
  const headerEnd = Math.min(out.length, 700);
  for (let i = 0; i < n; i++) {
    const at = rng.next() < 0.8 ? rng.int(headerEnd) : rng.int(out.length);
    const r = rng.next();
    out[at] = r < 0.3 ? 0xff : r < 0.5 ? 0 : rng.int(256);
  }
  return out;
}

if (import.meta.main) {
  const args = Deno.args;
  const arg = (name: string, def: number) => {
    const i = args.indexOf(name);
    return i >= 0 ? Number(args[i + 1]) : def;
  };
  const cases = arg("--cases", 200000);
  const seed = arg("--seed", Date.now() & 0xffff);
  const file = fuzzSeedFile();
  const rng = new Rng(seed);
  const counts = { parsed: 0, rejected: 0 };
  const t0 = performance.now();
  for (let len = 0; len < file.length; len++) {
    counts[fuzzCase(file.subarray(0, len), `truncated at ${len}`)]++;
  }
  for (let i = 0; i < cases; i++) counts[fuzzCase(mutate(file, rng), `seed ${seed} case ${i}`)]++;
  console.log(
    JSON.stringify({
      seed,
      cases: cases + file.length,
      ...counts,
      seconds: (performance.now() - t0) / 1000,
    }),
  );
}
