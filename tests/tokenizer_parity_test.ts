/**
 * Tokenizer parity with llama.cpp.
 *
 * 1. Every vocabulary GGUF in llama.cpp's source bundle whose tokenizer we
 *    support reproduces llama.cpp's expected tokenisations (the
 *    `.gguf.inp`/`.gguf.out` pairs of `tests/test-tokenizer-0.cpp`).
 * 2. On a seeded corpus mixing scripts, emoji, code, numbers, whitespace and
 *    special-token text, `encode` equals `llama_tokenize` (vocab-only load
 *    through the reference wrapper) with addSpecial/parseSpecial both ways;
 *    every token's piece equals `llama_token_to_piece`; `decode` equals
 *    `llama_detokenize`; and `decode(encode(s)) == s` wherever llama.cpp's
 *    own round trip holds.
 * 3. Pre-tokenizers without a vocabulary in the bundle (DeepSeek-V3, GPT-4o
 *    for GPT-OSS, Tekken, …) run on GPT-2's vocabulary relabelled with their
 *    `tokenizer.ggml.pre`, against llama.cpp on the same file.
 * 4. The regexes and the Unicode table are llama.cpp's, read from its source.
 * 5. Kimi-K2's hand-written splitter and SuperBPE run on Qwen2's vocabulary
 *    (it has CJK merges) relabelled, on a corpus aimed at where Kimi's splitter
 *    departs from a regex: 2000 strings × 4 flag sets, and decode.
 *
 * Parts 1 and 4 need only the source bundle; 2 and 3 also need the
 * reference libraries. Both are skipped with a printed reason when missing.
 */

import assert from "node:assert/strict";
import { loadReference, referenceUnavailableReason, type RefModel } from "../dev/ref/llama_cpp.ts";
import {
  LLAMA_BUNDLE_PATH,
  LLAMA_SOURCE_DIR,
  llamaSourceDir,
  vocabPath,
} from "../dev/ref/llama_src.ts";
import { parseGguf, readGgufModel } from "../src/gguf/reader.ts";
import { serializeGguf, writeGgufFile } from "../src/gguf/writer.ts";
import { gv } from "../src/gguf/value.ts";
import { Keys } from "../src/gguf/names.ts";
import { loadTokenizer, TokenAttr, type Tokenizer } from "../src/tokenizer/tokenizer.ts";
import { PRE_TOKENIZERS } from "../src/tokenizer/_pretokenize.ts";
import { CpFlag, cpFlags } from "../src/tokenizer/_unicode.ts";

// ---------------------------------------------------------------------------
// What is available
// ---------------------------------------------------------------------------

function sourceUnavailableReason(): string | null {
  for (const p of [LLAMA_SOURCE_DIR, LLAMA_BUNDLE_PATH]) {
    try {
      Deno.statSync(p);
      return null;
    } catch {
      // try the next
    }
  }
  return `llama.cpp's source bundle is missing (${LLAMA_BUNDLE_PATH}): run \`deno install\``;
}

const noSource = sourceUnavailableReason();
const noRef = noSource ?? referenceUnavailableReason();
if (noSource !== null) {
  console.warn(`skipping tokenizer tests on llama.cpp's vocabularies: ${noSource}`);
} else if (noRef !== null) {
  console.warn(`skipping tokenizer parity with llama.cpp itself: ${noRef}`);
}
const srcTest = (name: string, fn: (t: Deno.TestContext) => void | Promise<void>) =>
  Deno.test({ name, ignore: noSource !== null, fn });
const refTest = (name: string, fn: (t: Deno.TestContext) => void | Promise<void>) =>
  Deno.test({ name, ignore: noRef !== null, fn });

/** The vocabularies of the bundle with a supported tokenizer (SPM: llama-spm, phi-3, baichuan). */
const VOCABS = [
  "qwen2",
  "qwen35",
  "llama-bpe",
  "deepseek-llm",
  "deepseek-coder",
  "llama-spm",
  "phi-3",
  "baichuan",
  "gemma-4",
  "gpt-2",
  "mpt",
  "falcon",
  "starcoder",
  "refact",
  "command-r",
  "aquila",
  "gpt-neox",
] as const;

const loaded = new Map<string, Tokenizer>();
/** The tokenizer of a file, loaded once for all tests. */
function tokenizerOf(path: string): Tokenizer {
  let tok = loaded.get(path);
  if (tok === undefined) {
    tok = loadTokenizer(path);
    loaded.set(path, tok);
  }
  return tok;
}

/** Vocabularies of tokenizer types we do not implement (WordPiece, Unigram). */
const UNSUPPORTED = { "bert-bge": "bert", "nomic-bert-moe": "t5" } as const;

/**
 * Whether the GGUF reader keeps a leading U+FEFF in strings. When it does
 * not (a TextDecoder without `ignoreBOM`), vocabulary entries that start
 * with U+FEFF lose it, and the tokens they collide with cannot match
 * llama.cpp; the affected strings and tokens are then left out, visibly.
 */
const READER_KEEPS_BOM = (() => {
  const bytes = serializeGguf({ metadata: [["k", gv.str("\ufeffx")]], tensors: [] });
  return parseGguf(bytes).metadata.string("k") === "\ufeffx";
})();
const BOM_NOTE = "src/gguf/reader.ts drops a leading U+FEFF from GGUF strings " +
  "(its TextDecoder needs ignoreBOM: true)";

/** Token texts the reader has made ambiguous (empty or duplicated) — none once it keeps BOMs. */
function damagedTexts(path: string): Set<string> {
  if (READER_KEEPS_BOM) return new Set();
  const tokens = readGgufModel(path).metadata.strings(Keys.tokenizerTokens)!;
  const seen = new Set<string>();
  const out = new Set<string>();
  for (const t of tokens) {
    // "\ufeffx" was read as "x": both are unreliable, and so is anything that began with U+FEFF.
    if (t === "" || seen.has(t) || t.startsWith("\ufeff")) out.add(t);
    seen.add(t);
  }
  return out;
}

// ---------------------------------------------------------------------------
// llama.cpp's own test cases
// ---------------------------------------------------------------------------

/** The `.inp`/`.out` pair of a vocabulary, split as `tests/test-tokenizer-0.cpp` does; null if none. */
async function vocabCases(path: string): Promise<{ text: string; ids: number[] }[] | null> {
  let raw: string;
  try {
    raw = await Deno.readTextFile(`${path}.inp`);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  }
  const sep = "\n__ggml_vocab_test__\n";
  const inputs: string[] = [];
  for (let pos = 0; pos < raw.length;) {
    const next = raw.indexOf(sep, pos);
    inputs.push(raw.slice(pos, next < 0 ? undefined : next));
    pos = next < 0 ? raw.length : next + sep.length;
  }
  const outputs = (await Deno.readTextFile(`${path}.out`)).split("\n");
  if (outputs.at(-1) === "") outputs.pop();
  assert.equal(inputs.length, outputs.length, `${path}.inp/.out disagree on the case count`);
  return inputs.map((text, i) => ({
    text,
    ids: outputs[i]!.trim() === "" ? [] : outputs[i]!.trim().split(" ").map(Number),
  }));
}

srcTest("every supported vocabulary reproduces llama.cpp's expected tokenisations", async (t) => {
  let vocabsWithCases = 0;
  for (const name of VOCABS) {
    await t.step(name, async () => {
      const path = await vocabPath(name);
      const cases = await vocabCases(path);
      if (cases === null) {
        console.log(
          `  ${name}: no .inp/.out cases in the bundle (checked against llama.cpp below)`,
        );
        return;
      }
      vocabsWithCases++;
      const tok = tokenizerOf(path);
      for (const { text, ids } of cases) {
        assert.deepEqual(
          tok.encode(text, { addSpecial: false, parseSpecial: false }),
          ids,
          `${name}: encode(${JSON.stringify(text)})`,
        );
      }
      console.log(`  ${name}: ${cases.length}/${cases.length} cases`);
    });
  }
  assert.ok(vocabsWithCases >= 14, `only ${vocabsWithCases} vocabularies had cases`);
});

srcTest(
  "WordPiece and Unigram vocabularies are refused with the supported types listed",
  async () => {
    for (const [name, model] of Object.entries(UNSUPPORTED)) {
      const path = await vocabPath(name);
      assert.throws(
        () => loadTokenizer(path),
        new RegExp(`tokenizer\\.ggml\\.model = "${model}"; supported: gpt2, llama, gemma4`),
      );
    }
  },
);

// ---------------------------------------------------------------------------
// The tables are llama.cpp's
// ---------------------------------------------------------------------------

srcTest("codepoint categories and whitespace agree with llama.cpp's unicode table", async () => {
  const src = await Deno.readTextFile(`${await llamaSourceDir()}/src/unicode-data.cpp`);
  const flagsAt = src.indexOf("unicode_ranges_flags");
  const ranges = [
    ...src.slice(flagsAt, src.indexOf("};", flagsAt)).matchAll(
      /\{0x([0-9A-F]+), 0x([0-9A-F]+)\}/g,
    ),
  ].map((m) => [parseInt(m[1]!, 16), parseInt(m[2]!, 16)] as const);
  const wsAt = src.indexOf("unicode_set_whitespace");
  const ws = new Set(
    [...src.slice(wsAt, src.indexOf("};", wsAt)).matchAll(/0x([0-9A-F]+)/g)].map((m) =>
      parseInt(m[1]!, 16)
    ),
  );
  assert.ok(ranges.length > 1000 && ws.size > 20, "unicode-data.cpp parsed");
  const mask = CpFlag.categories | CpFlag.whitespace;
  const wrong: string[] = [];
  for (let r = 0; r + 1 < ranges.length; r++) {
    const [start, flags] = ranges[r]!;
    for (let cp = start; cp < ranges[r + 1]![0]; cp++) {
      const want = (flags & CpFlag.categories) | (ws.has(cp) ? CpFlag.whitespace : 0);
      const got = cpFlags(cp) & mask;
      if (got !== want && wrong.push(`U+${cp.toString(16)}: ${got} ≠ ${want}`) >= 10) break;
    }
  }
  assert.deepEqual(wrong, [], "codepoints whose flags differ from llama.cpp's");
});

/** A C++ string literal's value. */
function cString(literal: string): string {
  return literal.slice(1, -1).replace(
    /\\(.)/g,
    (_, c: string) => c === "n" ? "\n" : c === "r" ? "\r" : c === "t" ? "\t" : c,
  );
}

srcTest("each pre-tokenizer family has llama.cpp's regexes, in order", async () => {
  const src = await Deno.readTextFile(`${await llamaSourceDir()}/src/llama-vocab.cpp`);
  const start = src.indexOf("switch (vocab.get_pre_type())");
  const end = src.indexOf("std::vector<std::string> regex_exprs;", start);
  assert.ok(start > 0 && end > start, "found llm_tokenizer_bpe's switch");
  const groups: { types: string[]; regexes: string[]; byteEncode: boolean }[] = [];
  let open = true;
  for (const raw of src.slice(start, end).split("\n")) {
    const line = raw.trim();
    const c = /^case LLAMA_VOCAB_PRE_TYPE_(\w+):/.exec(line);
    if (c !== null || line === "default:") {
      if (!open) groups.push({ types: [], regexes: [], byteEncode: true });
      if (groups.length === 0) groups.push({ types: [], regexes: [], byteEncode: true });
      groups.at(-1)!.types.push(c?.[1] ?? "DEFAULT");
      open = true;
      continue;
    }
    open = false;
    const lit = /^("(?:[^"\\]|\\.)*")/.exec(line);
    if (lit !== null && groups.length > 0) groups.at(-1)!.regexes.push(cString(lit[1]!));
    if (line.startsWith("byte_encode = false")) groups.at(-1)!.byteEncode = false;
  }
  const byType = new Map(groups.flatMap((g) => g.types.map((t) => [t, g] as const)));
  for (const [family, spec] of Object.entries(PRE_TOKENIZERS)) {
    const g = byType.get(family.toUpperCase().replaceAll("-", "_"));
    assert.ok(g !== undefined, `llama.cpp has no pre-tokenizer type for our family ${family}`);
    assert.deepEqual(spec.regexes, g.regexes, `regexes of ${family}`);
    assert.equal(spec.byteEncode, g.byteEncode, `byte encoding of ${family}`);
  }
  // Every family llama.cpp has is here (DBRX, GLM-4, Grok 2 reuse Llama 3's and
  // Qwen2's regexes), except three left out on purpose.
  const ours = Object.values(PRE_TOKENIZERS);
  const covered = (g: (typeof groups)[number]) =>
    ours.some((s) =>
      g.types.includes(s.type.toUpperCase().replaceAll("-", "_")) ||
      (JSON.stringify(s.regexes) === JSON.stringify(g.regexes) && s.byteEncode === g.byteEncode)
    );
  const missing = groups.filter((g) => !covered(g)).map((g) => g.types.join("/"));
  assert.deepEqual(missing.sort(), ["WHITESPACE"]);
});

// ---------------------------------------------------------------------------
// Against llama.cpp itself
// ---------------------------------------------------------------------------

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const POOLS: Readonly<Record<string, readonly string[]>> = {
  latin: [
    "Hello",
    "world",
    "the",
    "quick",
    "brown",
    "café",
    "naïve",
    "Æsir",
    "straße",
    "Ångström",
    "façade",
    "ÉCOLE",
    "Œuvre",
    "São Paulo",
    "mañana",
    "İstanbul",
    "łódź",
    "Dvořák",
    "e\u0301cole",
    "a\u0308\u0304",
    "ﬁne",
    "ǅemal",
    "αβγδ",
    "Ελλάδα",
  ],
  cjk: [
    "你好",
    "世界",
    "中文测试",
    "漢字",
    "日本語",
    "ひらがな",
    "カタカナ",
    "ｶﾀｶﾅ",
    "한국어",
    "안녕하세요",
    "㐀",
    "𠀀𠀁",
    "。",
    "，",
    "「引用」",
    "（括弧）",
  ],
  cyrillic: ["Привет", "мир", "ЁЖИК", "съешь", "Україна", "Ґ"],
  rtl: ["مرحبا", "بالعالم", "٣٤٥", "،", "؟", "فارسی", "עברית", "שלום"],
  indic: ["नमस्ते", "हिन्दी", "१२३", "ক্ষ", "தமிழ்", "తెలుగు", "ภาษาไทย", "ສະບາຍດີ", "ខ្មែរ", "မြန်မာ"],
  emoji: [
    "😀",
    "🚀",
    "👍🏽",
    "👨‍👩‍👧‍👦",
    "🏳️‍🌈",
    "🇫🇷",
    "❤️",
    "👩🏿‍💻",
    "1️⃣",
    "©",
    "™",
    "∑",
    "≠",
    "→",
    "€",
    "₹",
    "½",
    "²",
    "Ⅻ",
    "🫠",
    "🫶🏻",
  ],
  code: [
    "def f(x):",
    "return x**2",
    "if (a && b) { c(); }",
    "const x = [1, 2, 3];",
    "#include <stdio.h>",
    'print("hi")',
    '<div class="a">',
    "SELECT * FROM t;",
    "a->b",
    "!==",
    "// comment",
    "`tmpl ${x}`",
    "0x1F",
    "1e-9",
    "snake_case",
    "CamelCaseWord",
    "HTTPServer",
    "x86_64",
    "@decorator",
    "$var",
    "^~|",
    "\\escape",
  ],
  numbers: [
    "0",
    "7",
    "42",
    "123",
    "1234",
    "12345",
    "1234567",
    "12345678901234567890",
    "3.14159",
    "-17",
    "1,000,000",
    "2024-01-01",
    "99%",
    "v1.2.3",
    "٣",
    "०",
    "００１２",
    "abc123def",
  ],
  ws: [
    " ",
    "  ",
    "   ",
    "\t",
    "\t\t",
    "\n",
    "\n\n",
    "\r\n",
    "\r\n\r\n",
    " \n",
    "    \n",
    "\u00a0",
    "\u3000",
    "\u2009",
    "\u200b",
    "\ufeff",
    "\u0085",
    "\v",
    "\f",
    " \t \n",
  ],
  special: [
    "<|im_start|>",
    "<|im_end|>",
    "<s>",
    "</s>",
    "<unk>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|begin_of_text|>",
    "[INST]",
    "<｜end▁of▁sentence｜>",
    "<|fim_prefix|>",
    "<|channel|>",
    "<start_of_turn>",
    "<|im_start",
    "im_end|>",
    "<|",
    "<sentinel:42>",
    "IMGIMGABCZ",
  ],
  punct: [
    ".",
    ",",
    "!",
    "?",
    "...",
    "…",
    "—",
    "-",
    "'",
    '"',
    "'s",
    "'S",
    "'ll",
    "'LL",
    "'re",
    "'Ve",
    "'m",
    "'d",
    "n't",
    "I'M",
    "(",
    "]",
    "!!!",
    "«",
    "“",
    "’",
    "¿",
    "__init__",
  ],
  odd: [
    "\u0000",
    "\u0001",
    "\u007f",
    "\ud800",
    "a\udc00b",
    "\u0301",
    "\u200d",
    "\u2028",
    "\ue000",
    "\uffff",
    "𝕏",
    "Ⓐ",
    "\u0897",
    "\u{1FAE9}",
  ],
};

/** A seeded corpus of short strings (llama.cpp's std::regex recurses per character). */
function corpus(seed: number, count: number): string[] {
  const r = rng(seed);
  const pick = <T>(a: readonly T[]): T => a[Math.floor(r() * a.length)]!;
  const names = Object.keys(POOLS);
  const out: string[] = [];
  for (let i = 0; i < count; i++) {
    let s = r() < 0.1 ? " " : "";
    for (let k = 1 + Math.floor(r() * 12); k > 0; k--) {
      s += pick(POOLS[pick(names)]!);
      const sep = r();
      if (sep < 0.5) s += " ";
      else if (sep < 0.6) s += pick(POOLS.ws!);
      else if (sep < 0.7) s += pick(POOLS.punct!);
    }
    if (r() < 0.1) s += pick(POOLS.ws!);
    out.push(s);
  }
  return out;
}

const CORPUS = corpus(20240611, 2000);
const FLAGS = [
  { addSpecial: false, parseSpecial: false },
  { addSpecial: false, parseSpecial: true },
  { addSpecial: true, parseSpecial: false },
  { addSpecial: true, parseSpecial: true },
] as const;
type EncodeFlags = (typeof FLAGS)[number];

const sameIds = (a: readonly number[], b: readonly number[]) =>
  a.length === b.length && a.every((v, i) => v === b[i]);
const sameBytes = (a: Uint8Array, b: Uint8Array) =>
  a.length === b.length && a.every((v, i) => v === b[i]);

/** `encode` vs `llama_tokenize` on `strings`, all four flag combinations. */
function compareEncode(
  tok: Tokenizer,
  ref: RefModel,
  strings: readonly string[],
  label: string,
  flagSets: readonly EncodeFlags[] = FLAGS,
): { matched: number; total: number; ms: number } {
  let matched = 0;
  let ms = 0;
  const failures: string[] = [];
  for (const s of strings) {
    for (const flags of flagSets) {
      const t0 = performance.now();
      const got = tok.encode(s, flags);
      ms += performance.now() - t0;
      const want = ref.tokenize(s, flags);
      if (sameIds(got, want)) matched++;
      else if (failures.length < 5) {
        failures.push(
          `${JSON.stringify(s)} ${
            JSON.stringify(flags)
          }\n    llama.cpp ${want}\n    ours      ${got}`,
        );
      }
    }
  }
  assert.deepEqual(failures, [], `${label}: encode differs from llama_tokenize`);
  return { matched, total: strings.length * flagSets.length, ms };
}

/** The corpus without strings the reader's BOM loss makes unmatchable (all of it once fixed). */
function usableCorpus(path: string): { strings: string[]; damaged: Set<string> } {
  const damaged = damagedTexts(path);
  const strings = READER_KEEPS_BOM
    ? CORPUS
    : CORPUS.filter((s) =>
      !s.includes("\ufeff") && ![...damaged].some((d) => d !== "" && s.includes(d))
    );
  return { strings, damaged };
}

refTest("encode, pieces and decode equal llama.cpp's on a mixed-script corpus", async (t) => {
  if (!READER_KEEPS_BOM) console.warn(`  note: ${BOM_NOTE}; affected strings/tokens left out`);
  const ref = loadReference();
  for (const name of VOCABS) {
    await t.step(name, async () => {
      const path = await vocabPath(name);
      const tok = tokenizerOf(path);
      using model = ref.loadModel(path, { vocabOnly: true });
      assert.equal(tok.vocabSize, model.nVocab);
      const { strings, damaged } = usableCorpus(path);

      const enc = compareEncode(tok, model, strings, name);
      // "A few thousand strings must tokenize in seconds."
      assert.ok(enc.ms < 10_000, `${name}: ${enc.total} encodes took ${enc.ms.toFixed(0)} ms`);

      let pieces = 0;
      let leftOut = 0;
      const badPieces: string[] = [];
      for (let id = 0; id < tok.vocabSize; id++) {
        if (
          damaged.has(tok.tokenText(id)) ||
          (damaged.has("") && tok.tokenText(id).startsWith("[EMPTY_"))
        ) {
          leftOut++;
          continue;
        }
        const special = model.tokenToBytes(id, { special: true });
        const plain = model.tokenToBytes(id, { special: false });
        const ours = tok.tokenToBytes(id);
        // Without special rendering, control and unknown tokens are nothing.
        const hidden = (tok.tokenAttr(id) & (TokenAttr.control | TokenAttr.unknown)) !== 0;
        const plainOk = sameBytes(hidden ? new Uint8Array(0) : ours, plain);
        if (sameBytes(ours, special) && plainOk) pieces++;
        else if (badPieces.length < 5) badPieces.push(`${id} ${JSON.stringify(tok.tokenText(id))}`);
      }
      assert.deepEqual(badPieces, [], `${name}: tokens whose piece differs from llama.cpp's`);

      let decoded = 0;
      let decodeTotal = 0;
      let roundTrips = 0;
      let refRoundTrips = 0;
      const badDecode: string[] = [];
      for (const s of strings.slice(0, 500)) {
        const ids = model.tokenize(s, { addSpecial: true, parseSpecial: true });
        for (const skipSpecial of [false, true]) {
          for (const removeSpecial of [false, true]) {
            decodeTotal++;
            const got = tok.decode(ids, { skipSpecial, removeSpecial });
            const want = model.detokenize(ids, { removeSpecial, unparseSpecial: !skipSpecial });
            // The wrapper's TextDecoder drops a leading U+FEFF that llama.cpp wrote.
            if (got === want || (got.startsWith("\ufeff") && got.slice(1) === want)) decoded++;
            else if (badDecode.length < 5) {
              badDecode.push(`${JSON.stringify(s)} skip=${skipSpecial} remove=${removeSpecial}`);
            }
          }
        }
        const plain = tok.encode(s, { addSpecial: false, parseSpecial: false });
        if (model.detokenize(plain) === s.toWellFormed()) {
          refRoundTrips++;
          assert.equal(tok.decode(plain), s.toWellFormed(), `${name}: decode(encode(s)) != s`);
          roundTrips++;
        }
      }
      assert.deepEqual(badDecode, [], `${name}: decode differs from llama_detokenize`);
      assert.ok(refRoundTrips > 0);

      console.log(
        `  ${name}: encode ${enc.matched}/${enc.total} (${strings.length} strings × 4 flag sets, ` +
          `${
            enc.ms.toFixed(0)
          } ms), pieces ${pieces}/${tok.vocabSize}, decode ${decoded}/${decodeTotal}, ` +
          `round trip ${roundTrips}/${refRoundTrips} where llama.cpp's holds`,
      );
    });
  }
});

/**
 * `tokenizer.ggml.pre` values of the families with no vocabulary in the
 * bundle (GLM-4 for its lack of BOS; its regex is Llama 3's).
 */
const RELABELLED = [
  "deepseek-v3",
  "gpt-4o",
  "tekken",
  "glm4",
  "jais-2",
  "youtu",
  "poro-chat",
  "viking",
  "chameleon",
  "granite-embed-multi-97m",
  "tiny_aya",
  "bailingmoe",
  "seed-coder",
  "afmoe",
  "laguna",
  "exaone-moe",
  "minicpm5",
];

refTest("pre-tokenizers without a bundled vocabulary, on GPT-2's relabelled", async (t) => {
  const ref = loadReference();
  const base = readGgufModel(await vocabPath("gpt-2"));
  const strings = CORPUS.slice(0, 500);
  const dir = await Deno.makeTempDir({ prefix: "odmoe-pre-" });
  try {
    for (const pre of RELABELLED) {
      await t.step(pre, async () => {
        const path = `${dir}/${pre}.gguf`;
        const metadata = [...base.metadata.entries].filter(([k]) => k !== Keys.tokenizerPre);
        metadata.push([Keys.tokenizerPre, gv.str(pre)]);
        await writeGgufFile(path, { metadata, tensors: [] });
        const tok = loadTokenizer(path);
        assert.equal(tok.pre, pre);
        using model = ref.loadModel(path, { vocabOnly: true });
        const r = compareEncode(tok, model, strings, pre, [FLAGS[0], FLAGS[3]]);
        console.log(`  ${pre}: ${r.matched}/${r.total}`);
      });
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** Pieces aimed at Kimi-K2's splitter and SuperBPE's digit grouping. */
const K2_POOLS: Readonly<Record<string, readonly string[]>> = {
  han: [
    "你好",
    "世界",
    "中文测试",
    "漢字",
    "㐀㐁",
    "𠀀𠀁",
    "豈更",
    "\u{2F800}",
    "\u{2A700}",
    "\u{2EBE0}",
    "〇",
    "々",
    "⺀",
    "⼀",
    "\u{30000}",
    "\u{31350}",
  ],
  kana: ["ひらがな", "カタカナ", "ｶﾀｶﾅ", "한국어", "안녕", "ー", "・"],
  cased: [
    "Hello",
    "world",
    "HelloWorld",
    "camelCase",
    "HTTPServer",
    "iPhone",
    "ÉCOLEétudiant",
    "ǅemal",
    "ΑβΓδ",
    "ПриВет",
    "straße",
    "İstanbul",
    "ﬁne",
    "x",
    "Q",
  ],
  marks: [
    "e\u0301",
    "a\u0308\u0304",
    "n\u0303o",
    "\u0301",
    "\u0301\u0302",
    "क्ष",
    "नमस्ते",
    "தமிழ்",
    "\u200d",
    "\u20dd",
  ],
  digits: [
    "0",
    "12",
    "123",
    "1234",
    "123456",
    "1234567",
    "12345678901",
    "٣٤٥",
    "१२३",
    "３４５",
    "½",
    "Ⅻ",
    "²",
    "a1b2c3",
    "v1.2.3",
    "2024年",
    "第3章",
  ],
  emoji: ["😀", "👍🏽", "👨‍👩‍👧‍👦", "🇫🇷", "❤️", "1️⃣", "©", "∑", "→", "€"],
  ws: [" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n", "    \n", "\u00a0", "\u3000", "\v"],
  unassigned: ["\u0378", "\u0380", "\u{E0080}", "\u{2FFFE}", "\u0897", "\u{1FAE9}", "\uffff"],
  contractions: ["'s", "'S", "'ll", "'LL", "'re", "'Ve", "'m", "'d", "don't", "I'M", "l'été", "'"],
  punct: [".", ",", "!", "。", "，", "「", "」", "...", "—", "(", ")", "$", "+", "\\", "#"],
  special: ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_start", "<|"],
};

/** A seeded corpus for Kimi-K2/SuperBPE: pieces glued together, often with nothing between. */
function k2Corpus(seed: number, count: number): string[] {
  const r = rng(seed);
  const pick = <T>(a: readonly T[]): T => a[Math.floor(r() * a.length)]!;
  const names = Object.keys(K2_POOLS);
  const out: string[] = [];
  for (let i = 0; i < count; i++) {
    let s = r() < 0.1 ? pick(K2_POOLS.ws!) : "";
    for (let k = 1 + Math.floor(r() * 10); k > 0; k--) {
      s += pick(K2_POOLS[pick(names)]!);
      const sep = r();
      if (sep < 0.25) s += " ";
      else if (sep < 0.35) s += pick(K2_POOLS.ws!);
      else if (sep < 0.45) s += pick(K2_POOLS.punct!);
    }
    out.push(s);
  }
  return out;
}

refTest(
  "kimi-k2 and superbpe equal llama.cpp on Qwen2's vocabulary relabelled (2000 strings × 4, decode)",
  async (t) => {
    const ref = loadReference();
    const base = readGgufModel(await vocabPath("qwen2"));
    const strings = k2Corpus(20261202, 2000);
    const dir = await Deno.makeTempDir({ prefix: "odmoe-k2-" });
    const cases = [
      { pre: "kimi-k2", merges: true },
      { pre: "superbpe", merges: true },
      // llama.cpp loads a Kimi-K2 vocabulary without merges (words fall apart into characters).
      { pre: "kimi-k2", merges: false },
    ];
    try {
      for (const { pre, merges } of cases) {
        const label = merges ? pre : `${pre} without merges`;
        await t.step(label, async () => {
          const path = `${dir}/${pre}-${merges}.gguf`;
          const metadata = [...base.metadata.entries].filter(([k]) =>
            k !== Keys.tokenizerPre && (merges || k !== Keys.tokenizerMerges)
          );
          metadata.push([Keys.tokenizerPre, gv.str(pre)]);
          await writeGgufFile(path, { metadata, tensors: [] });
          const tok = loadTokenizer(path);
          using model = ref.loadModel(path, { vocabOnly: true });
          const enc = compareEncode(tok, model, strings, label);
          let decoded = 0;
          const badDecode: string[] = [];
          for (const s of strings) {
            const ids = model.tokenize(s, { addSpecial: true, parseSpecial: true });
            for (const skipSpecial of [false, true]) {
              for (const removeSpecial of [false, true]) {
                const got = tok.decode(ids, { skipSpecial, removeSpecial });
                const want = model.detokenize(ids, { removeSpecial, unparseSpecial: !skipSpecial });
                if (got === want) decoded++;
                else if (badDecode.length < 5) {
                  badDecode.push(
                    `${JSON.stringify(s)} skip=${skipSpecial} remove=${removeSpecial}`,
                  );
                }
              }
            }
          }
          assert.deepEqual(badDecode, [], `${label}: decode differs from llama_detokenize`);
          console.log(
            `  ${label}: encode ${enc.matched}/${enc.total}, decode ${decoded}/${
              strings.length * 4
            }`,
          );
        });
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

refTest("deno task tokenize prints llama.cpp's ids", async () => {
  const script = new URL("../scripts/tokenize.ts", import.meta.url).pathname;
  const run = async (...args: string[]) => {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", script, ...args],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const dec = new TextDecoder();
    return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
  };
  const text = "<|im_start|>user\nHi 你好 <s>123<|im_end|>";
  for (const name of ["qwen2", "llama-spm"]) {
    const path = await vocabPath(name);
    using model = loadReference().loadModel(path, { vocabOnly: true });
    for (const parseSpecial of [true, false]) {
      const r = await run(
        "--model",
        path,
        "--text",
        text,
        "--json",
        ...(parseSpecial ? [] : ["--no-special"]),
      );
      assert.equal(r.code, 0, r.stderr);
      assert.deepEqual(
        JSON.parse(r.stdout),
        { ids: model.tokenize(text, { addSpecial: true, parseSpecial }) },
        `${name} parseSpecial=${parseSpecial}`,
      );
    }
  }
  const file = await Deno.makeTempFile({ suffix: ".txt" });
  try {
    await Deno.writeTextFile(file, text);
    const path = await vocabPath("qwen2");
    const fromFile = await run("--model", path, "--file", file, "--json");
    const fromText = await run("--model", path, "--text", text, "--json");
    assert.equal(fromFile.stdout, fromText.stdout);
  } finally {
    await Deno.remove(file);
  }
  const missing = await run("--model", "/no/such.gguf", "--text", "x");
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /not found: \/no\/such\.gguf/);
  const noText = await run("--model", await vocabPath("qwen2"));
  assert.equal(noText.code, 2);
  assert.match(noText.stderr, /exactly one of --text S and --file F/);
  const noModel = await run("--text", "x");
  assert.equal(noModel.code, 2);
  assert.match(noModel.stderr, /missing --model/);
});
