/**
 * GGUF tokenizers with llama.cpp's behaviour: byte-level BPE with each
 * pre-tokenizer (`tokenizer.ggml.model = "gpt2"`, also Gemma 4's
 * `"gemma4"`), SentencePiece with byte fallback (`"llama"`: Mistral,
 * Mixtral), special-token parsing, BOS/EOS/EOT and end-of-generation tokens,
 * detokenisation and a streaming UTF-8-safe decoder.
 *
 * The algorithms follow llama.cpp's `src/llama-vocab.cpp` and
 * `src/unicode.cpp` step by step, including their quirks, so that
 * {@linkcode Tokenizer.encode} returns the ids `llama_tokenize` returns;
 * `tests/tokenizer_parity_test.ts` measures this against llama.cpp itself.
 *
 * @example
 * ```ts ignore
 * import { loadTokenizer } from "./tokenizer.ts";
 * const tok = loadTokenizer("model.gguf");
 * const ids = tok.encode("<|im_start|>user\nHi<|im_end|>");
 * console.log(ids, tok.decode(ids));
 * ```
 *
 * @module
 */

import type { GgufMetadata } from "../gguf/reader.ts";
import { readGgufModel } from "../gguf/reader.ts";
import { Keys } from "../gguf/names.ts";
import { byteEncode, CHAR_TO_BYTE, codepoints, isCSpace, utf8 } from "./_unicode.ts";
import { PRE_TOKENIZERS, PreTokenizer } from "./_pretokenize.ts";
import { BpeMerger, byteTokenText, SpmMerger } from "./_merge.ts";

/** Token attributes, bit for bit llama.cpp's `llama_token_attr`. */
export const TokenAttr = {
  undefined: 0,
  unknown: 1 << 0,
  unused: 1 << 1,
  normal: 1 << 2,
  control: 1 << 3,
  userDefined: 1 << 4,
  byte: 1 << 5,
  normalized: 1 << 6,
  lstrip: 1 << 7,
  rstrip: 1 << 8,
  singleWord: 1 << 9,
} as const;

/** `tokenizer.ggml.token_type` values (`llama_token_type`) → attributes. */
const TYPE_TO_ATTR: readonly number[] = [
  TokenAttr.undefined, // 0 undefined
  TokenAttr.normal, // 1 normal
  TokenAttr.unknown, // 2 unknown
  TokenAttr.control, // 3 control
  TokenAttr.userDefined, // 4 user defined
  TokenAttr.unused, // 5 unused
  TokenAttr.byte, // 6 byte
];

/** Tokenizer keys that `src/gguf/names.ts` does not list (llama.cpp's `llama-arch.cpp` spelling). */
const MoreKeys = {
  fimPreId: "tokenizer.ggml.fim_pre_token_id",
  fimSufId: "tokenizer.ggml.fim_suf_token_id",
  fimMidId: "tokenizer.ggml.fim_mid_token_id",
  fimPadId: "tokenizer.ggml.fim_pad_token_id",
  fimRepId: "tokenizer.ggml.fim_rep_token_id",
  fimSepId: "tokenizer.ggml.fim_sep_token_id",
  prefixId: "tokenizer.ggml.prefix_token_id",
  suffixId: "tokenizer.ggml.suffix_token_id",
  middleId: "tokenizer.ggml.middle_token_id",
} as const;

/** How one `tokenizer.ggml.pre` name configures the BPE tokenizer (llama.cpp's `load`). */
interface PreConfig {
  /** Key into {@linkcode PRE_TOKENIZERS}. */
  family: string;
  /** `clean_up_tokenization_spaces` (llama.cpp's default for BPE: true). */
  cleanSpaces?: boolean;
  ignoreMerges?: boolean;
  addBos?: boolean;
  /** The family has no BOS token (ChatGLM). */
  noBos?: boolean;
  /** Spaces are ▁ in the vocabulary (SentencePiece-style BPE). */
  escapeWhitespace?: boolean;
  /** A file without `tokenizer.ggml.merges` is accepted (llama.cpp allows it for Kimi-K2 only). */
  mergesOptional?: boolean;
}

const NO_CLEAN = { cleanSpaces: false } as const;

/** Every `tokenizer.ggml.pre` value llama.cpp accepts that this tokenizer supports. */
const PRE_NAMES: Readonly<Record<string, PreConfig>> = (() => {
  const t: Record<string, PreConfig> = {};
  const add = (names: string[], cfg: PreConfig) => names.forEach((n) => (t[n] = cfg));
  add(["default"], { family: "default" });
  add(["minicpm5"], { family: "minicpm5", ignoreMerges: true });
  add(
    [
      "llama3",
      "llama-v3",
      "llama-bpe",
      "falcon3",
      "falcon-h1",
      "pixtral",
      "midm-2.0",
      "lfm2",
      "jina-v5-nano",
    ],
    { family: "llama3", ignoreMerges: true, addBos: true },
  );
  add(["deepseek-llm"], { family: "deepseek-llm", ...NO_CLEAN });
  add(["deepseek-coder"], { family: "deepseek-coder", ...NO_CLEAN });
  add(["deepseek-v3", "hunyuan-dense", "joyai-llm"], { family: "deepseek3-llm", ...NO_CLEAN });
  add(["youtu"], { family: "youtu", ...NO_CLEAN, ignoreMerges: true });
  add(["falcon"], { family: "falcon" });
  add(
    [
      "mpt",
      "gpt-2",
      "phi-2",
      "jina-es",
      "jina-de",
      "gigachat",
      "jina-v2-es",
      "jina-v2-de",
      "a.x-4.0",
      "mellum",
      "modern-bert",
      "jina-v1-en",
      "jina-v2-code",
      "roberta-bpe",
      "olmo",
      "jais",
      "exaone4",
    ],
    { family: "gpt2" },
  );
  add(["trillion", "granite-docling"], { family: "gpt2", ...NO_CLEAN });
  add(["starcoder", "refact", "codeshell", "exaone", "minerva-7b", "mellum2"], {
    family: "starcoder",
  });
  add(["command-r", "smollm"], { family: "starcoder", ...NO_CLEAN });
  add(["jais-2"], { family: "jais2" });
  add(["gemma4", "granite-embed-multi-311m"], { family: "gemma4", escapeWhitespace: true });
  add(["sarvam-moe"], { family: "sarvam-moe", escapeWhitespace: true, ...NO_CLEAN });
  add(
    ["qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "hunyuan", "grok-2", "solar-open"],
    { family: "qwen2", ...NO_CLEAN },
  );
  add(["stablelm2", "megrez"], { family: "qwen2" });
  add(["qwen35"], { family: "qwen35", ...NO_CLEAN });
  add(["dbrx", "smaug-bpe"], { family: "llama3" });
  add(["glm4", "chatglm-bpe"], { family: "llama3", noBos: true });
  add(["poro-chat"], { family: "poro", ...NO_CLEAN });
  add(["bloom", "gpt3-finnish"], { family: "poro" });
  add(["viking"], { family: "viking", ...NO_CLEAN });
  add(["tekken"], { family: "tekken", ...NO_CLEAN, ignoreMerges: true, addBos: true });
  add(["exaone-moe"], { family: "exaone-moe" });
  add(["chameleon"], { family: "chameleon", addBos: true, ...NO_CLEAN });
  add(["gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"], { family: "gpt4o", ...NO_CLEAN });
  add(["granite-embed-multi-97m"], {
    family: "granite-emb-multi",
    ...NO_CLEAN,
    ignoreMerges: true,
  });
  add(["tiny_aya", "cohere2moe"], { family: "tiny-aya", ...NO_CLEAN });
  add(["bailingmoe", "bailingmoe2", "llada-moe"], { family: "bailingmoe", ...NO_CLEAN });
  add(["seed-coder"], { family: "seed-coder", ...NO_CLEAN });
  add(["afmoe"], { family: "afmoe", ...NO_CLEAN });
  add(["laguna"], { family: "laguna", ...NO_CLEAN });
  add(["kimi-k2"], { family: "kimi-k2", ...NO_CLEAN, mergesOptional: true });
  add(["superbpe"], { family: "superbpe", ...NO_CLEAN });
  return t;
})();

/** The `tokenizer.ggml.pre` values this tokenizer supports (for BPE models). */
export const SUPPORTED_PRE_TOKENIZERS: readonly string[] = Object.keys(PRE_NAMES).sort();

/** The `tokenizer.ggml.model` values this tokenizer supports. */
export const SUPPORTED_MODELS: readonly string[] = ["gpt2", "llama", "gemma4"];

/** Token texts that make a token end generation (llama.cpp's list). */
const EOG_TEXTS = new Set([
  "<|eot_id|>",
  "<|im_end|>",
  "<|end|>",
  "<|return|>",
  "<|call|>",
  "<|flush|>",
  "<|calls|>",
  "<end_of_turn>",
  "<|endoftext|>",
  "</s>",
  "<|eom_id|>",
  "<EOT>",
  "_<EOT>",
  "[EOT]",
  "[EOS]",
  "<|end_of_text|>",
  "<end_of_utterance>",
  "<eos>",
  "<turn|>",
  "<|tool_response>",
  "<｜end▁of▁sentence｜>",
  "[e~[",
]);

/**
 * Texts that identify special tokens a file does not name, in the order
 * they are tried. (llama.cpp tries them in hash-map order, which only
 * matters for a vocabulary holding several; Qwen's has `<|im_end|>` and
 * `<|endoftext|>`, and `<|im_end|>` is the one that ends a turn.)
 */
const DETECT = {
  eot: [
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
  ],
  eom: ["<|eom_id|>"],
  fimPre: [
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<｜fim▁begin｜>",
    "<PRE>",
    "▁<PRE>",
    "<|code_prefix|>",
    "<|prefix|>",
  ],
  fimSuf: [
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<｜fim▁hole｜>",
    "<SUF>",
    "▁<SUF>",
    "<|code_suffix|>",
    "<|suffix|>",
  ],
  fimMid: [
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<｜fim▁end｜>",
    "<MID>",
    "▁<MID>",
    "<|code_middle|>",
    "<|middle|>",
  ],
  fimPad: ["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"],
  fimRep: ["<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"],
  fimSep: ["<|file_sep|>"],
} as const;

/** Options of {@linkcode Tokenizer.encode}. */
export interface EncodeOptions {
  /** Add BOS/EOS as the file says (`tokenizer.ggml.add_bos_token`…). Default true. */
  addSpecial?: boolean;
  /**
   * Turn the text of control tokens (`<|im_start|>`, `<s>`) into those tokens.
   * Default true. User-defined tokens are always recognised, as in llama.cpp.
   */
  parseSpecial?: boolean;
}

/** Options of {@linkcode Tokenizer.decode} and {@linkcode Tokenizer.createStreamDecoder}. */
export interface DecodeOptions {
  /** Render control tokens (BOS, `<|im_end|>`) as nothing. Default false: as their text. */
  skipSpecial?: boolean;
  /**
   * Control tokens rendered as their text even with `skipSpecial` (a chat
   * format's markers, such as `<|channel|>`, that its output parser reads).
   */
  keep?: ReadonlySet<number>;
  /**
   * Drop a leading BOS and a trailing EOS where the file adds them
   * (llama.cpp's `remove_special`). Default false. Decode only.
   */
  removeSpecial?: boolean;
}

/** Decodes a stream of token ids into text without splitting a UTF-8 character. */
export interface StreamDecoder {
  /**
   * The text that token `id` completes. Bytes of a character that is not
   * complete yet are held back until a later token completes it.
   */
  push(id: number): string;
  /** Whatever is held back (an incomplete character becomes U+FFFD); resets the decoder. */
  flush(): string;
}

type Fragment = string | number;

const SPACE_ESCAPE = "\u2581";

/**
 * A tokenizer read from GGUF metadata. Build one with
 * {@linkcode Tokenizer.fromGguf} or {@linkcode loadTokenizer}.
 */
export class Tokenizer {
  /** `"bpe"` (byte-level or SentencePiece-style BPE) or `"spm"` (SentencePiece). */
  readonly type: "bpe" | "spm";
  /** `tokenizer.ggml.model` as stored. */
  readonly model: string;
  /** `tokenizer.ggml.pre` as stored (`""` when absent). */
  readonly pre: string;
  /** Number of tokens. */
  readonly vocabSize: number;
  /** Beginning-of-sequence token, or null. */
  readonly bos: number | null;
  /** End-of-sequence token, or null. */
  readonly eos: number | null;
  /** End-of-turn token (`<|im_end|>`, `<|eot_id|>`…), or null. */
  readonly eot: number | null;
  /** End-of-message token (`<|eom_id|>`), or null. */
  readonly eom: number | null;
  /** Unknown token, or null. */
  readonly unk: number | null;
  /** Padding token, or null. */
  readonly pad: number | null;
  /** Whether `encode` adds BOS (with `addSpecial`). */
  readonly addBos: boolean;
  /** Whether `encode` adds EOS (with `addSpecial`). */
  readonly addEos: boolean;
  /** SentencePiece: a space is put before text that starts the input or follows a special token. */
  readonly addSpacePrefix: boolean;
  /** `tokenizer.chat_template`, or null. */
  readonly chatTemplate: string | null;
  /** Every token that ends generation (EOS, EOT, EOM, `<|im_end|>`, …). */
  readonly eogIds: ReadonlySet<number>;

  readonly #tokens: readonly string[];
  readonly #attrs: Uint16Array;
  readonly #tokenToId: Map<string, number>;
  /** Control, user-defined and unknown tokens, longest text first. */
  readonly #specials: readonly number[];
  readonly #cleanSpaces: boolean;
  readonly #escapeWhitespace: boolean;
  readonly #pre: PreTokenizer | null;
  readonly #bpe: BpeMerger | null;
  readonly #spm: SpmMerger | null;
  readonly #byteEncoded: boolean;
  readonly #wordCache = new Map<string, readonly number[]>();
  readonly #pieces: (Uint8Array | undefined)[];

  private constructor(meta: GgufMetadata) {
    const model = meta.string(Keys.tokenizerModel);
    const pre = meta.string(Keys.tokenizerPre, "");
    this.model = model;
    this.pre = pre;

    let cfg: PreConfig | null = null;
    let addBos = false;
    let addEos = false;
    let bos: number | null;
    let eos: number | null;
    let unk: number | null = null;
    let addSpacePrefix = false;
    if (model === "llama") {
      this.type = "spm";
      bos = 1;
      eos = 2;
      unk = 0;
      addSpacePrefix = true;
      addBos = true;
      this.#cleanSpaces = false;
      this.#escapeWhitespace = true;
    } else if (model === "gpt2" || model === "gemma4") {
      this.type = "bpe";
      const name = model === "gemma4" ? "gemma4" : pre === "" ? "default" : pre;
      cfg = PRE_NAMES[name] ?? null;
      if (cfg === null) {
        throw new Error(
          `unsupported pre-tokenizer ${Keys.tokenizerPre} = "${pre}" (tokenizer.ggml.model "${model}"); supported: ${
            SUPPORTED_PRE_TOKENIZERS.join(", ")
          }`,
        );
      }
      bos = model === "gemma4" ? null : 11;
      eos = model === "gemma4" ? null : 11;
      if (cfg.noBos) bos = null;
      addBos = cfg.addBos ?? false;
      this.#cleanSpaces = cfg.cleanSpaces ?? true;
      this.#escapeWhitespace = cfg.escapeWhitespace ?? false;
    } else {
      throw new Error(
        `unsupported tokenizer model ${Keys.tokenizerModel} = "${model}"; supported: ${
          SUPPORTED_MODELS.join(", ")
        }`,
      );
    }
    addSpacePrefix = meta.bool(Keys.tokenizerAddSpacePrefix, addSpacePrefix);
    this.addSpacePrefix = addSpacePrefix;

    const stored = meta.strings(Keys.tokenizerTokens);
    if (stored === undefined) {
      throw new Error(
        `metadata key ${Keys.tokenizerTokens} is missing: the file has no vocabulary`,
      );
    }
    const n = stored.length;
    this.vocabSize = n;
    const tokens = stored.map((t, i) => (t === "" ? `[EMPTY_${i}]` : t));
    this.#tokens = tokens;
    this.#tokenToId = new Map();
    tokens.forEach((t, i) => this.#tokenToId.set(t, i));

    const types = meta.numbers(Keys.tokenizerTokenType);
    if (types !== undefined && types.length < n) {
      throw new Error(`${Keys.tokenizerTokenType} has ${types.length} entries for ${n} tokens`);
    }
    const attrs = new Uint16Array(n);
    for (let i = 0; i < n; i++) {
      attrs[i] = types === undefined ? TokenAttr.normal : TYPE_TO_ATTR[types[i]!] ?? 0;
    }
    this.#attrs = attrs;

    // Special ids: the family's defaults (disabled if out of range), then the file's keys.
    const inRange = (id: number | null) => (id !== null && id >= 0 && id < n ? id : null);
    const fromKey = (key: string, fallback: number | null): number | null => {
      const v = meta.number(key, undefined);
      return v !== undefined && Number.isInteger(v) && v >= 0 && v < n ? v : fallback;
    };
    bos = fromKey(Keys.tokenizerBosId, inRange(bos));
    eos = fromKey(Keys.tokenizerEosId, inRange(eos));
    let eot = fromKey(Keys.tokenizerEotId, null);
    let eom = fromKey(Keys.tokenizerEomId, null);
    unk = fromKey(Keys.tokenizerUnknownId, inRange(unk));
    const pad = fromKey(Keys.tokenizerPaddingId, null);
    const fim = {
      fimPre: fromKey(MoreKeys.fimPreId, fromKey(MoreKeys.prefixId, null)),
      fimSuf: fromKey(MoreKeys.fimSufId, fromKey(MoreKeys.suffixId, null)),
      fimMid: fromKey(MoreKeys.fimMidId, fromKey(MoreKeys.middleId, null)),
      fimPad: fromKey(MoreKeys.fimPadId, null),
      fimRep: fromKey(MoreKeys.fimRepId, null),
      fimSep: fromKey(MoreKeys.fimSepId, null),
    };
    addBos = meta.bool(Keys.tokenizerAddBos, addBos);
    addEos = meta.bool(Keys.tokenizerAddEos, addEos);
    if (cfg?.family === "gemma4") addBos = true;

    // Special tokens a file does not name are found by their text and made control tokens.
    const detect = (texts: readonly string[]): number | null => {
      for (const t of texts) {
        const id = this.#tokenToId.get(t);
        if (id !== undefined) {
          attrs[id]! |= TokenAttr.control;
          return id;
        }
      }
      return null;
    };
    eot ??= detect(DETECT.eot);
    eom ??= detect(DETECT.eom);
    for (const k of Object.keys(fim) as (keyof typeof fim)[]) fim[k] ??= detect(DETECT[k]);

    for (let i = 0; i < n; i++) {
      if (attrs[i]! & TokenAttr.control && tokens[i]!.includes("unused")) {
        attrs[i]! |= TokenAttr.unused;
      }
    }

    const eog = new Set<number>();
    for (const id of [fim.fimPad, fim.fimRep, fim.fimSep]) if (id !== null) eog.add(id);
    tokens.forEach((t, i) => {
      if (EOG_TEXTS.has(t)) {
        eog.add(i);
        attrs[i]! |= TokenAttr.control;
      }
    });
    // GPT-OSS (harmony) markup is rendered and parsed like user-defined text.
    for (const t of ["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"]) {
      const id = this.#tokenToId.get(t);
      if (id !== undefined) attrs[id] = TokenAttr.userDefined;
    }
    for (const id of [eos, eot, eom]) if (id !== null) eog.add(id);
    const eogText = (t: string) => [...eog].some((id) => tokens[id] === t);
    const end = this.#tokenToId.get("<|end|>");
    if (
      end !== undefined && eog.has(end) &&
      ((eogText("<|return|>") && (eogText("<|call|>") || eogText("<|calls|>"))) ||
        ((eogText("<|call|>") || eogText("<|calls|>")) && eogText("<|flush|>")))
    ) {
      // o200k_harmony and solar-open: <|end|> ends a message, not the generation.
      eog.delete(end);
      attrs[end] = TokenAttr.userDefined;
    }
    const s = this.#tokenToId.get("</s>");
    if (s !== undefined && eog.has(s) && eogText("<|tool_response>")) {
      eog.delete(s);
      attrs[s] = TokenAttr.normal;
    }

    const special: number[] = [];
    for (let i = 0; i < n; i++) {
      if (attrs[i]! & (TokenAttr.control | TokenAttr.userDefined | TokenAttr.unknown)) {
        special.push(i);
      }
    }
    special.sort((a, b) => tokens[b]!.length - tokens[a]!.length || a - b);
    this.#specials = special;

    // Per-model attributes llama.cpp sets by name.
    const name = meta.string(Keys.name, "").toLowerCase();
    const arch = meta.string(Keys.architecture, "");
    const setAttr = (id: number | undefined, attr: number, on: boolean) => {
      if (id !== undefined) attrs[id] = on ? attrs[id]! | attr : attrs[id]! & ~attr;
    };
    if (
      ["jina-v2-de", "jina-v2-es", "jina-v2-code"].some((p) => pre.includes(p)) ||
      ["nomic-bert-moe", "jina-bert-v3"].some((a) => arch.includes(a))
    ) {
      setAttr(this.#tokenToId.get("<mask>"), TokenAttr.lstrip, true);
    } else if (name.includes("phi-3") || name.includes("phi3")) {
      for (const id of special) setAttr(id, TokenAttr.rstrip, true);
      setAttr(this.#tokenToId.get("</s>"), TokenAttr.rstrip, true);
      for (const t of ["<unk>", "<s>", "<|endoftext|>"]) {
        setAttr(this.#tokenToId.get(t), TokenAttr.rstrip, false);
      }
    } else if (name.includes("modern-bert")) {
      setAttr(this.#tokenToId.get("[MASK]"), TokenAttr.lstrip, true);
    }

    if (this.type === "bpe") {
      const merges = meta.strings(Keys.tokenizerMerges) ??
        (cfg!.mergesOptional ? [] : undefined);
      if (merges === undefined) {
        throw new Error(
          `metadata key ${Keys.tokenizerMerges} is missing: a BPE vocabulary needs it`,
        );
      }
      const spec = PRE_TOKENIZERS[cfg!.family]!;
      this.#pre = new PreTokenizer(spec);
      this.#byteEncoded = spec.byteEncode;
      this.#bpe = new BpeMerger(this.#tokenToId, merges, {
        ignoreMerges: cfg!.ignoreMerges ?? false,
        byteEncoded: spec.byteEncode,
        newlineWords: cfg!.family === "gemma4",
      });
      this.#spm = null;
    } else {
      const scoreList = meta.numbers(Keys.tokenizerScores);
      if (scoreList !== undefined && scoreList.length < n) {
        throw new Error(`${Keys.tokenizerScores} has ${scoreList.length} entries for ${n} tokens`);
      }
      const scores = new Float32Array(n);
      if (scoreList !== undefined) { for (let i = 0; i < n; i++) scores[i] = scoreList[i]!; }
      const byteIds = new Int32Array(256).fill(-1);
      for (let b = 0; b < 256; b++) {
        byteIds[b] = this.#tokenToId.get(byteTokenText(b)) ??
          (b < 0x80 ? this.#tokenToId.get(String.fromCharCode(b)) : undefined) ?? -1;
      }
      this.#spm = new SpmMerger(this.#tokenToId, scores, byteIds);
      this.#pre = null;
      this.#bpe = null;
      this.#byteEncoded = false;
    }

    this.bos = bos;
    this.eos = eos;
    this.eot = eot;
    this.eom = eom;
    this.unk = unk;
    this.pad = pad;
    this.addBos = addBos;
    this.addEos = addEos;
    this.eogIds = eog;
    this.chatTemplate = meta.string(Keys.tokenizerChatTemplate, null);
    this.#pieces = new Array(n);
  }

  /**
   * The tokenizer described by a GGUF file's metadata (`tokenizer.ggml.*`).
   *
   * @throws naming the key when the model type or pre-tokenizer is not
   * supported (the message lists those that are) or the vocabulary is missing.
   */
  static fromGguf(metadata: GgufMetadata): Tokenizer {
    return new Tokenizer(metadata);
  }

  /** The token's text as stored in the vocabulary (byte-level BPE: GPT-2 byte characters). */
  tokenText(id: number): string {
    this.#check(id);
    return this.#tokens[id]!;
  }

  /** The token for an exact vocabulary text, or undefined. */
  tokenId(text: string): number | undefined {
    return this.#tokenToId.get(text);
  }

  /** The token's attributes ({@linkcode TokenAttr} bits). */
  tokenAttr(id: number): number {
    this.#check(id);
    return this.#attrs[id]!;
  }

  /** Whether the token is a control token (BOS, EOS, `<|im_start|>`…). */
  isControl(id: number): boolean {
    return (this.tokenAttr(id) & TokenAttr.control) !== 0;
  }

  /** Whether generating this token ends generation. */
  isEog(id: number): boolean {
    return this.eogIds.has(id);
  }

  /**
   * The token ids of `text`, as `llama_tokenize(vocab, text, addSpecial,
   * parseSpecial)` returns them. Unpaired UTF-16 surrogates are read as
   * U+FFFD, as a UTF-8 encoder writes them.
   *
   * @throws if BOS/EOS must be added but the vocabulary has none, or a
   * SentencePiece byte fallback finds no byte token.
   */
  encode(text: string, options: EncodeOptions = {}): number[] {
    const addSpecial = options.addSpecial ?? true;
    const parseSpecial = options.parseSpecial ?? true;
    const input = text.toWellFormed();
    const out: number[] = [];
    if (addSpecial && this.addBos) out.push(this.#required(this.bos, "BOS"));
    const fragments = input.length > 0 ? this.#partition(input, parseSpecial) : [];
    if (this.type === "spm") {
      let prevSpecial = true;
      for (const f of fragments) {
        if (typeof f === "number") {
          out.push(f);
          prevSpecial = true;
          continue;
        }
        const t = this.addSpacePrefix && prevSpecial ? " " + f : f;
        this.#spm!.encode(t.replaceAll(" ", SPACE_ESCAPE), out);
        prevSpecial = false;
      }
    } else {
      for (const f of fragments) {
        if (typeof f === "number") out.push(f);
        else this.#encodeBpe(f, out);
      }
    }
    if (addSpecial && this.addEos) out.push(this.#required(this.eos, "EOS"));
    return out;
  }

  /**
   * The bytes of one token's text (`llama_token_to_piece` with special
   * tokens rendered): a byte token is its byte, so a piece may be part of a
   * UTF-8 character.
   */
  tokenToBytes(id: number): Uint8Array {
    this.#check(id);
    let p = this.#pieces[id];
    if (p === undefined) {
      p = this.#piece(id);
      this.#pieces[id] = p;
    }
    return p;
  }

  /**
   * The text of a token sequence, as `llama_detokenize` writes it: pieces
   * joined, SentencePiece's leading space removed, and for most byte-level
   * BPE families llama.cpp's clean-up of spaces before punctuation
   * (`clean_spaces`). Invalid UTF-8 becomes U+FFFD.
   */
  decode(ids: readonly number[], options: DecodeOptions = {}): string {
    const skip = options.skipSpecial ?? false;
    const removeSpecial = options.removeSpecial ?? false;
    let from = 0;
    let to = ids.length;
    let removeSpace = this.addSpacePrefix;
    if (removeSpecial && this.addBos && to > 0 && ids[0] === this.bos) {
      removeSpace = false;
      from++;
    }
    if (removeSpecial && this.addEos && to > from && ids[to - 1] === this.eos) to--;
    const parts: Uint8Array[] = [];
    let total = 0;
    for (let i = from; i < to; i++) {
      let p = this.#renderPiece(ids[i]!, skip && !options.keep?.has(ids[i]!));
      if (removeSpace && p.length > 0 && p[0] === 0x20) p = p.subarray(1);
      removeSpace = false;
      parts.push(p);
      total += p.length;
    }
    let bytes: Uint8Array = new Uint8Array(total);
    let o = 0;
    for (const p of parts) {
      bytes.set(p, o);
      o += p.length;
    }
    if (this.#cleanSpaces) bytes = cleanSpaces(bytes);
    return new TextDecoder("utf-8", { ignoreBOM: true }).decode(bytes);
  }

  /**
   * A decoder for generated tokens: each `push` returns the new text, never
   * half a UTF-8 character. Pieces are joined as they are (no space removal
   * or clean-up), as llama.cpp's server streams them.
   */
  createStreamDecoder(options: Omit<DecodeOptions, "removeSpecial"> = {}): StreamDecoder {
    const skip = options.skipSpecial ?? false;
    const keep = options.keep;
    let td = new TextDecoder("utf-8", { ignoreBOM: true });
    return {
      push: (id: number) =>
        td.decode(this.#renderPiece(id, skip && !keep?.has(id)), { stream: true }),
      flush: () => {
        const rest = td.decode();
        td = new TextDecoder("utf-8", { ignoreBOM: true });
        return rest;
      },
    };
  }

  #check(id: number): void {
    if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) {
      throw new RangeError(`token id ${id} is outside the vocabulary [0, ${this.vocabSize})`);
    }
  }

  #required(id: number | null, what: string): number {
    if (id === null) {
      throw new Error(`the tokenizer adds ${what} but the vocabulary has no ${what} token`);
    }
    return id;
  }

  /** A piece as `llama_token_to_piece(…, special = !skip)` renders it. */
  #renderPiece(id: number, skip: boolean): Uint8Array {
    const p = this.tokenToBytes(id);
    if (skip && this.#attrs[id]! & (TokenAttr.unknown | TokenAttr.control)) return EMPTY;
    return p;
  }

  #piece(id: number): Uint8Array {
    const attr = this.#attrs[id]!;
    const text = this.#tokens[id]!;
    if (attr & (TokenAttr.unknown | TokenAttr.control | TokenAttr.userDefined)) return utf8(text);
    if (attr & TokenAttr.normal) {
      if (this.type === "spm" || this.#escapeWhitespace) {
        return utf8(text.replaceAll(SPACE_ESCAPE, " "));
      }
      return decodeByteText(text);
    }
    if (attr & TokenAttr.byte) return Uint8Array.of(parseInt(text.slice(3, 5), 16) & 0xff);
    return EMPTY;
  }

  /**
   * Splits text at special tokens, longest first (llama.cpp's
   * `tokenizer_st_partition`). Control and unknown tokens count only with
   * `parseSpecial`; user-defined ones always.
   */
  #partition(text: string, parseSpecial: boolean): Fragment[] {
    let frags: Fragment[] = [text];
    for (const id of this.#specials) {
      const attr = this.#attrs[id]!;
      if (!parseSpecial && attr & (TokenAttr.control | TokenAttr.unknown)) continue;
      const tok = this.#tokens[id]!;
      if (!text.includes(tok)) continue;
      const next: Fragment[] = [];
      for (const f of frags) {
        if (typeof f === "number") {
          next.push(f);
          continue;
        }
        let pos = 0;
        for (;;) {
          const m = f.indexOf(tok, pos);
          if (m < 0) {
            if (pos < f.length) next.push(pos === 0 ? f : f.slice(pos));
            break;
          }
          let leftEnd = m;
          if (attr & TokenAttr.lstrip) {
            while (leftEnd > pos && isCSpace(f.charCodeAt(leftEnd - 1))) leftEnd--;
          }
          if (leftEnd > pos) next.push(f.slice(pos, leftEnd));
          next.push(id);
          pos = m + tok.length;
          if (attr & TokenAttr.rstrip) {
            while (pos < f.length && isCSpace(f.charCodeAt(pos))) pos++;
          }
          if (pos >= f.length) break;
        }
      }
      frags = next;
    }
    return frags;
  }

  #encodeBpe(text: string, out: number[]): void {
    const t = this.#escapeWhitespace ? text.replaceAll(" ", SPACE_ESCAPE) : text;
    const cpts = codepoints(t);
    let u = 0;
    let c = 0;
    for (const len of this.#pre!.split(cpts)) {
      const u0 = u;
      for (const end = c + len; c < end; c++) u += cpts[c]! > 0xffff ? 2 : 1;
      const word = t.slice(u0, u);
      let ids = this.#wordCache.get(word);
      if (ids === undefined) {
        ids = this.#bpe!.encodeWord(this.#byteEncoded ? byteEncode(word) : word);
        if (this.#wordCache.size >= 1 << 17) this.#wordCache.clear();
        this.#wordCache.set(word, ids);
      }
      for (const id of ids) out.push(id);
    }
  }
}

const EMPTY = new Uint8Array(0);

/** GPT-2 byte characters → bytes (llama.cpp's `llama_decode_text`, unknown characters included). */
function decodeByteText(text: string): Uint8Array {
  const out: number[] = [];
  for (const ch of text) {
    const c = ch.codePointAt(0)!;
    const b = c < CHAR_TO_BYTE.length ? CHAR_TO_BYTE[c]! : -1;
    if (b >= 0) {
      out.push(b);
      continue;
    }
    const hex = [...utf8(ch)].map((x) => x.toString(16).padStart(2, "0")).join("");
    out.push(...utf8(`[UNK_BYTE_0x${hex}${text}]`));
  }
  return Uint8Array.from(out);
}

/**
 * llama.cpp's `clean_spaces` passes over detokenised bytes, in place and
 * literally (their order and overlaps included): drop the space before
 * `?!.,`, around a lone `'`, and before `'s 'm 're 've`.
 */
function cleanSpaces(bytes: Uint8Array): Uint8Array {
  const text = bytes.slice();
  const SP = 0x20;
  const Q = 0x27;
  let total = text.length;

  const total1 = total;
  total = total ? 1 : 0;
  for (let i = 1; i < total1; i++) {
    const x = text[i]!;
    if (text[i - 1] === SP && (x === 0x3f || x === 0x21 || x === 0x2e || x === 0x2c)) total--;
    text[total++] = x;
  }

  const total2 = total;
  total = total ? 1 : 0;
  for (let i = 1; i < total2; i++) {
    const x = text[i]!;
    if (x === Q && i + 1 < total2 && text[i - 1] === SP && text[i + 1] === SP) {
      total--;
      text[++i] = 0;
    }
    text[total++] = x;
  }

  const total3 = total;
  total = total ? 1 : 0;
  for (let i = 1; i < total3; i++) {
    const x = text[i]!;
    if (text[i - 1] === SP && x === Q && i + 1 < total3) {
      const x1 = text[i + 1]!;
      if (x1 === 0x73 || x1 === 0x6d) total--; // 's 'm
      else if (i + 2 < total3) {
        const x2 = text[i + 2]!;
        if ((x1 === 0x72 && x2 === 0x65) || (x1 === 0x76 && x2 === 0x65)) total--; // 're 've
      }
    }
    text[total++] = x;
  }
  return text.subarray(0, total);
}

/**
 * Reads the tokenizer of a GGUF file (only its header is read; any shard of
 * a split model will do).
 *
 * @throws if the file is missing or not GGUF, or its tokenizer is not supported.
 */
export function loadTokenizer(path: string): Tokenizer {
  return Tokenizer.fromGguf(readGgufModel(path).metadata);
}
