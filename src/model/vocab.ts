/**
 * Tokenizer metadata for generated models: copied (and optionally truncated)
 * from a GGUF that holds a real vocabulary, or a tiny byte-level BPE
 * vocabulary built here for the built-in demo model.
 *
 * The result is a list of `tokenizer.*` metadata entries that llama.cpp loads
 * as it loads a converted model's: token strings are unique, every merge of a
 * BPE vocabulary joins two kept tokens into a kept token, and the special-id
 * keys point at kept tokens.
 *
 * @module
 */

import { Keys } from "../gguf/names.ts";
import { type GgufValue, gv } from "../gguf/value.ts";

/** The `tokenizer.*` entries of a model and the vocabulary size they define. */
export interface TokenizerMetadata {
  /** Metadata entries, in the order to write them. */
  readonly entries: readonly (readonly [string, GgufValue])[];
  /** Number of tokens (= rows of `token_embd`). */
  readonly nTokens: number;
}

/** llama.cpp's `llama_token_type` values as GGUF files store them. */
export const TokenType = {
  undefined: 0,
  normal: 1,
  unknown: 2,
  control: 3,
  userDefined: 4,
  unused: 5,
  byte: 6,
} as const;

/** Options for {@linkcode tokenizerFromGguf}. */
export interface CopyTokenizerOptions {
  /**
   * Keep only the first `maxTokens` tokens, then append every control token
   * (BOS, EOS, `<|im_end|>`, …) that lies beyond them. Default: keep all.
   */
  maxTokens?: number;
}

const TOKENIZER_PREFIX = "tokenizer.";
/** Every special-token id key (`bos`, `eos`, `eot`, `fim_pre`, `mask`, …) has this form. */
const SPECIAL_ID_KEY = /^tokenizer\.ggml\.[a-z_]+_token_id$/;

/**
 * The tokenizer of a GGUF, from its parsed metadata entries (a vocabulary-only
 * GGUF such as llama.cpp's `models/ggml-vocab-qwen2.gguf`, or a whole model).
 *
 * With `maxTokens`, the vocabulary is cut to its first tokens plus the control
 * tokens beyond them, renumbered in that order. Per-token arrays (`tokens`,
 * `token_type`, `scores`) are cut alike; BPE merges are kept only where both
 * parts and their join are kept tokens; special-id keys are renumbered, and
 * dropped when their token is gone.
 *
 * @throws if the entries hold no `tokenizer.ggml.tokens` string array, or a
 * per-token array is shorter than the token list.
 */
export function tokenizerFromGguf(
  entries: Iterable<readonly [string, GgufValue]>,
  options: CopyTokenizerOptions = {},
): TokenizerMetadata {
  const src = new Map<string, GgufValue>();
  for (const [k, v] of entries) if (k.startsWith(TOKENIZER_PREFIX)) src.set(k, v);
  const tokensValue = src.get(Keys.tokenizerTokens);
  if (tokensValue?.type !== "array" || tokensValue.itemType !== "string") {
    throw new Error(`${Keys.tokenizerTokens} is missing or not an array of strings`);
  }
  const tokens = tokensValue.value;
  const types = src.get(Keys.tokenizerTokenType);
  const typeOf = (i: number): number => {
    if (types?.type !== "array" || types.itemType === "string" || types.itemType === "array") {
      return TokenType.normal;
    }
    return Number((types.value as ArrayLike<number | bigint | boolean>)[i]);
  };

  const max = options.maxTokens ?? tokens.length;
  if (!Number.isInteger(max) || max < 1) {
    throw new RangeError(`maxTokens must be a positive integer, got ${max}`);
  }
  const kept: number[] = [];
  for (let i = 0; i < Math.min(max, tokens.length); i++) kept.push(i);
  for (let i = max; i < tokens.length; i++) {
    if (typeOf(i) === TokenType.control) kept.push(i);
  }
  const newId = new Map<number, number>(kept.map((old, i) => [old, i]));
  const keptText = new Set(kept.map((i) => tokens[i]!));

  const out: [string, GgufValue][] = [];
  for (const [key, value] of src) {
    if (SPECIAL_ID_KEY.test(key)) {
      if (typeof value.value !== "number" && typeof value.value !== "bigint") {
        out.push([key, value]);
        continue;
      }
      const id = newId.get(Number(value.value));
      if (id !== undefined) out.push([key, { ...value, value: id } as GgufValue]);
      continue;
    }
    if (value.type !== "array") {
      out.push([key, value]);
      continue;
    }
    if (key === Keys.tokenizerMerges) {
      if (value.itemType !== "string") throw new Error(`${key} is not an array of strings`);
      if (kept.length === tokens.length) {
        out.push([key, value]);
        continue;
      }
      out.push([key, gv.strings(value.value.filter((m) => mergeIsKept(m, keptText)))]);
      continue;
    }
    if (!PER_TOKEN_KEYS.has(key)) {
      out.push([key, value]);
      continue;
    }
    if (value.value.length < tokens.length) {
      throw new Error(`${key} has ${value.value.length} items for ${tokens.length} tokens`);
    }
    out.push([key, kept.length === tokens.length ? value : pickItems(value, kept)]);
  }
  return { entries: out, nTokens: kept.length };
}

/** The arrays that hold one item per token. */
const PER_TOKEN_KEYS: ReadonlySet<string> = new Set([
  Keys.tokenizerTokens,
  Keys.tokenizerTokenType,
  Keys.tokenizerScores,
]);

/** A merge `"a b"` survives if `a`, `b` and `ab` are all kept tokens. */
function mergeIsKept(merge: string, kept: ReadonlySet<string>): boolean {
  // llama.cpp splits at the first space after the first character.
  const at = merge.indexOf(" ", 1);
  if (at < 0) return false;
  const a = merge.slice(0, at);
  const b = merge.slice(at + 1);
  return kept.has(a) && kept.has(b) && kept.has(a + b);
}

function pickItems(value: GgufValue & { type: "array" }, ids: readonly number[]): GgufValue {
  const items = value.value as ArrayLike<unknown> & { constructor: unknown };
  if (Array.isArray(items)) {
    return { ...value, value: ids.map((i) => items[i]) } as GgufValue;
  }
  const typed = value.value as Float32Array;
  const Ctor = typed.constructor as new (n: number) => Float32Array;
  const picked = new Ctor(ids.length);
  ids.forEach((old, i) => (picked[i] = typed[old]!));
  return { ...value, value: picked } as GgufValue;
}

// ---------------------------------------------------------------------------
// The built-in byte-level BPE vocabulary
// ---------------------------------------------------------------------------

/**
 * GPT-2's byte → printable character map (`bytes_to_unicode`), in GPT-2's
 * vocabulary order: printable Latin-1 bytes first, then the rest mapped to
 * U+0100 onwards.
 */
export function gpt2ByteChars(): { byte: number; char: string }[] {
  const printable: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) printable.push(b);
  for (let b = 0xa1; b <= 0xac; b++) printable.push(b);
  for (let b = 0xae; b <= 0xff; b++) printable.push(b);
  const out = printable.map((b) => ({ byte: b, char: String.fromCodePoint(b) }));
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!printable.includes(b)) out.push({ byte: b, char: String.fromCodePoint(256 + n++) });
  }
  return out;
}

/** GPT-2's pre-tokenizer regex (llama.cpp's `gpt-2` pre-tokenizer). */
const GPT2_SPLIT = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

/** The special tokens of the built-in vocabulary, appended after the merged tokens. */
export const BUILTIN_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] as const;

/** ChatML, as Qwen models use it. */
export const CHATML_TEMPLATE =
  "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/** Text the built-in vocabulary's merges are learnt from. */
const BUILTIN_CORPUS = `
The quick brown fox jumps over the lazy dog. A model is only as good as the data
it was trained on, and this one was trained on nothing at all: its weights are
random numbers drawn from a seeded generator, so that every run of the test suite
sees the same model. It still has a real tokenizer, with bytes, merges and special
tokens, so that text goes in and text comes out, even if the text that comes out
makes no sense. The server uses it when no model is given, so that the command
always works and the first request can be answered in a second.
Experts are small feed-forward networks. For each token a router picks a few of
them, and only those are computed. When the experts live on disk, the engine
copies the ones it needs into a pool of buffers on the GPU, and keeps the ones it
used most recently. A predictor guesses which experts the next layer will need,
so that they can be copied before they are asked for. The number of experts, the
number used per token, the width of each expert and the size of the pool are all
settings that change the speed of the engine, but never the tokens it writes.
Hello, world! How are you today? I am fine, thank you. What is the time? It is
ten past three in the afternoon. Where are you going? I am going to the station
to meet a friend who is coming from the north. The train is late again, as it
often is in the winter, when the snow falls on the line and the points freeze.
One, two, three, four, five, six, seven, eight, nine, ten. 0 1 2 3 4 5 6 7 8 9
10 20 30 40 50 60 70 80 90 100 1000 2024 3.14159 2.71828 42 7 13 256 512 1024.
function add(a, b) { return a + b; } const x = add(1, 2); console.log(x);
for (let i = 0; i < n; i++) { sum += values[i] * weights[i]; } return sum;
def main(): print("hello") if __name__ == "__main__": main()
The sun rises in the east and sets in the west. Water boils at one hundred
degrees. The cat sat on the mat, and the dog slept by the fire. She said that she
would come back tomorrow, but nobody believed her, because she had said the same
thing every day for a week. They walked along the river until the light began to
fade, then turned back towards the town, talking about the books they had read
and the places they wanted to see before the end of the year.
`;

/** Options for {@linkcode builtinTokenizer}. */
export interface BuiltinTokenizerOptions {
  /** How many merges to learn (fewer if the corpus runs out of pairs). Default 400. */
  nMerges?: number;
}

/**
 * A small byte-level BPE vocabulary (`tokenizer.ggml.model = "gpt2"`,
 * pre-tokenizer `gpt-2`): the 256 byte tokens in GPT-2's byte-to-unicode form,
 * the tokens of merges learnt from a built-in English-and-code text, and the
 * special tokens `<|endoftext|>` (BOS, EOS, padding), `<|im_start|>` and
 * `<|im_end|>` (EOT), with a ChatML chat template. Deterministic.
 */
export function builtinTokenizer(options: BuiltinTokenizerOptions = {}): TokenizerMetadata {
  const nMerges = options.nMerges ?? 400;
  const byteChars = gpt2ByteChars();
  const charOf = new Map(byteChars.map(({ byte, char }) => [byte, char]));
  const utf8 = new TextEncoder();

  // Word (as a sequence of byte characters) → count.
  const counts = new Map<string, number>();
  for (const m of BUILTIN_CORPUS.matchAll(GPT2_SPLIT)) {
    const w = Array.from(utf8.encode(m[0]), (b) => charOf.get(b)!).join("\u0000");
    counts.set(w, (counts.get(w) ?? 0) + 1);
  }
  const words = [...counts].map(([w, n]) => ({ parts: w.split("\u0000"), n }));

  const tokens = byteChars.map(({ char }) => char);
  const known = new Set(tokens);
  const merges: string[] = [];
  while (merges.length < nMerges) {
    const pairs = new Map<string, number>();
    for (const { parts, n } of words) {
      for (let i = 0; i + 1 < parts.length; i++) {
        const key = `${parts[i]} ${parts[i + 1]}`;
        pairs.set(key, (pairs.get(key) ?? 0) + n);
      }
    }
    let best: string | undefined;
    let bestN = 0;
    for (const [key, n] of pairs) {
      if (n > bestN || (n === bestN && best !== undefined && key < best)) {
        best = key;
        bestN = n;
      }
    }
    if (best === undefined) break;
    const at = best.indexOf(" ", 1);
    const a = best.slice(0, at);
    const b = best.slice(at + 1);
    merges.push(best);
    if (!known.has(a + b)) {
      known.add(a + b);
      tokens.push(a + b);
    }
    for (const w of words) {
      const next: string[] = [];
      for (let i = 0; i < w.parts.length; i++) {
        if (i + 1 < w.parts.length && w.parts[i] === a && w.parts[i + 1] === b) {
          next.push(a + b);
          i++;
        } else next.push(w.parts[i]!);
      }
      w.parts = next;
    }
  }

  const nNormal = tokens.length;
  tokens.push(...BUILTIN_SPECIAL_TOKENS);
  const types = tokens.map((_, i) => (i < nNormal ? TokenType.normal : TokenType.control));
  const eot = nNormal; // <|endoftext|>
  const imEnd = nNormal + 2; // <|im_end|>
  const entries: [string, GgufValue][] = [
    [Keys.tokenizerModel, gv.str("gpt2")],
    [Keys.tokenizerPre, gv.str("gpt-2")],
    [Keys.tokenizerTokens, gv.strings(tokens)],
    [Keys.tokenizerTokenType, gv.i32s(types)],
    [Keys.tokenizerMerges, gv.strings(merges)],
    [Keys.tokenizerBosId, gv.u32(eot)],
    [Keys.tokenizerEosId, gv.u32(eot)],
    [Keys.tokenizerEotId, gv.u32(imEnd)],
    [Keys.tokenizerPaddingId, gv.u32(eot)],
    [Keys.tokenizerAddBos, gv.bool(false)],
    [Keys.tokenizerChatTemplate, gv.str(CHATML_TEMPLATE)],
  ];
  return { entries, nTokens: tokens.length };
}
