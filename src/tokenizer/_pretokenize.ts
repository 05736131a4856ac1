/**
 * BPE pre-tokenizers: how llama.cpp splits text into words before merging
 * (`llm_tokenizer_bpe` in `src/llama-vocab.cpp`, `unicode_regex_split` in
 * `src/unicode.cpp`).
 *
 * Each pre-tokenizer is a list of llama.cpp's regex strings, applied one
 * after another, each to the pieces the previous one left. A few strings
 * have hand-written splitters in llama.cpp (GPT-2, Llama 3, Qwen2, …); they
 * are ported here as they are, quirks included. The rest go through
 * llama.cpp's general path, reproduced exactly: when a regex uses Unicode
 * categories, every non-ASCII codepoint is first "collapsed" to one stand-in
 * character per category and `\p{…}` is rewritten to match the stand-in plus
 * its ASCII members, then an ECMAScript regex runs on the collapsed text;
 * otherwise the regex runs on the codepoints, with non-ASCII whitespace
 * replaced by `\v`.
 *
 * @module
 */

import { CpFlag, cpFlags } from "./_unicode.ts";

const GPT2_RE = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)";
const CONTRACTIONS = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])";
const LLAMA3_RE = CONTRACTIONS +
  "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const QWEN2_RE = CONTRACTIONS +
  "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const QWEN35_RE = CONTRACTIONS +
  "|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|\\p{N}| ?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const AFMOE_DIGITS = "\\p{AFMoE_digits}";
const TINY_AYA_DIGITS = "\\d{1,3}(?=(?:\\d{3})*\\b)";
const NEWLINES = "[^\\n]+|[\\n]+";
const GPT4O_CASED = "[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))*((?=[\\p{L}])([^A-Z]))+" +
  CONTRACTIONS + "?|[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))+((?=[\\p{L}])([^A-Z]))*" +
  CONTRACTIONS + "?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const CASED_M =
  "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+" +
  CONTRACTIONS +
  "?|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*" +
  CONTRACTIONS;
const DEEPSEEK3_MAIN =
  "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+";
const CJK_DEEPSEEK = "[\u4E00-\u9FA5\u0800-\u4E00\uAC00-\uD7FF]+";
const PORO = " ?[^(\\s|.,!?\u2026\u3002\uFF0C\u3001\u0964\u06D4\u060C)]+";
/** Not a regex llama.cpp runs: the key that selects its hand-written Kimi-K2 splitter. */
const KIMI_K2 = "\\p{Han}+";

/** A BPE pre-tokenizer: llama.cpp's regexes for one `tokenizer.ggml.pre` family. */
export interface PreTokenizerSpec {
  /** llama.cpp's name of the family (`LLAMA_VOCAB_PRE_TYPE_*`, lower case). */
  readonly type: string;
  /** The regexes, applied in order. */
  readonly regexes: readonly string[];
  /** Words are GPT-2 byte-encoded before merging (false: raw UTF-8, `<0xXX>` byte tokens). */
  readonly byteEncode: boolean;
}

const spec = (type: string, regexes: string[], byteEncode = true): PreTokenizerSpec => ({
  type,
  regexes,
  byteEncode,
});

/** The pre-tokenizer families, keyed by llama.cpp's `LLAMA_VOCAB_PRE_TYPE_*` name. */
export const PRE_TOKENIZERS: Readonly<Record<string, PreTokenizerSpec>> = {
  default: spec("default", [
    "[\\p{P}\\$\\+<=>\\^~\\|]+",
    GPT2_RE,
    "\\p{N}+",
    "[0-9][0-9][0-9]",
  ]),
  llama3: spec("llama3", [LLAMA3_RE]),
  jais2: spec("jais2", [
    CONTRACTIONS +
    "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s{512}(?!\\S)|\\s{256}(?!\\S)|\\s{128}(?!\\S)|\\s{64}(?!\\S)|\\s{32}(?!\\S)|\\s{16}(?!\\S)|\\s{8}(?!\\S)|\\s{4}(?!\\S)|\\s{1,2}(?!\\S)|\\s{1}",
  ]),
  "deepseek-llm": spec("deepseek-llm", [
    "[\r\n]",
    "\\s?[A-Za-z\u00B5\u00C0-\u00D6\u00D8-\u00F6\u00F8-\u01BA\u01BC-\u01BF\u01C4-\u0293\u0295-\u02AF\u0370-\u0373\u0376\u0377\u037B-\u037D\u037F\u0386\u0388-\u038A\u038C\u038E-\u03A1\u03A3-\u03F5\u03F7-\u0481\u048A-\u052F\u0531-\u0556\u10A0-\u10C5\u13A0-\u13F5\u13F8-\u13FD\u1C90-\u1CBA\u1CBD-\u1CBF\u1D00-\u1D2B\u1D6B-\u1D77\u1D79-\u1D9A\u1E00-\u1F15\u1F18-\u1F1D\u1F20-\u1F45\u1F48-\u1F4D\u1F50-\u1F57\u1F59\u1F5B\u1F5D\u1F5F-\u1F7D\u1F80-\u1FB4\u1FB6-\u1FBC\u1FBE\u1FC2-\u1FC4\u1FC6-\u1FCC\u1FD0-\u1FD3\u1FD6-\u1FDB\u1FE0-\u1FEC\u1FF2-\u1FF4\u1FF6-\u1FFC\u2102\u2107\u210A-\u2113\u2115\u2119-\u211D\u2124\u2126\u2128\u212A-\u212D\u212F-\u2134\u2139\u213C-\u213F\u2145-\u2149\u214E\u2183\u2184\u2C00-\u2C7B\u2C7E-\u2CE4\u2CEB-\u2CEE\u2CF2\u2CF3\uA640-\uA66D\uA680-\uA69B\uA722-\uA76F\uA771-\uA787\uA78B-\uA78E\uAB70-\uABBF\uFB00-\uFB06\uFB13-\uFB17\uFF21-\uFF3A\uFF41-\uFF5A\u{10400}-\u{1044F}\u{104B0}-\u{104D3}\u{104D8}-\u{104FB}\u{10C80}-\u{10CB2}\u{10CC0}-\u{10CF2}\u{118A0}-\u{118DF}\u{1E900}-\u{1E943}]+",
    "\\s?[!-/:-~\uFF01-\uFF0F\uFF1A-\uFF5E\u2018-\u201F\u3000-\u3002]+",
    "\\s+$",
    CJK_DEEPSEEK,
    "\\p{N}+",
  ]),
  "deepseek3-llm": spec("deepseek3-llm", [
    "\\p{N}{1,3}",
    "[\u4E00-\u9FA5\u3040-\u309F\u30A0-\u30FF]+",
    DEEPSEEK3_MAIN,
  ]),
  youtu: spec("youtu", [
    "[\uAC00-\uD7A3\u3131-\u318E]+|[\uFF01\u2026\u201C\u201D\u2018\u2019\u2014\uFF1A\uFF1B\uFF0C\u3001-\u303F\uFE30-\uFE4F]+|[\u3105-\u312F]+|[\u4E00-\u9FA5\u3040-\u309F\u30A0-\u30FF]+",
    CASED_M + "?|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
  ]),
  "deepseek-coder": spec("deepseek-coder", [
    "[\r\n]",
    "\\s?\\p{L}+",
    "\\s?\\p{P}+",
    CJK_DEEPSEEK,
    "\\p{N}",
  ]),
  falcon: spec("falcon", ["[\\p{P}\\$\\+<=>\\^~\\|`]+", GPT2_RE, "[0-9][0-9][0-9]"]),
  starcoder: spec("starcoder", ["\\p{N}", GPT2_RE]),
  gpt2: spec("gpt2", [GPT2_RE]),
  qwen2: spec("qwen2", [QWEN2_RE]),
  qwen35: spec("qwen35", [QWEN35_RE]),
  poro: spec("poro", [PORO]),
  viking: spec("viking", [PORO, "\\p{N}"]),
  tekken: spec("tekken", [
    "[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))*((?=[\\p{L}])([^A-Z]))+|[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))+((?=[\\p{L}])([^A-Z]))*|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
  ]),
  chameleon: spec("chameleon", [
    "<sentinel:[0-9]+>",
    "(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z",
    "([\\t\\n]|    |  )",
    "\\p{N}",
    "[\\p{P}!-/:-@\\[-`{-~]",
    GPT2_RE,
  ]),
  gpt4o: spec("gpt4o", [GPT4O_CASED]),
  "granite-emb-multi": spec("granite-emb-multi", [
    GPT4O_CASED.replaceAll("(?=[\\p{L}])", "(?=[\\p{L}\\p{M}])"),
  ]),
  "tiny-aya": spec("tiny-aya", [
    TINY_AYA_DIGITS,
    CASED_M + "?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
  ]),
  bailingmoe: spec("bailingmoe", [
    "'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]|\\s+(?!\\S)|\\s+",
  ]),
  "seed-coder": spec("seed-coder", [
    CONTRACTIONS +
    "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1}| ?[^\\s\\p{L}\\p{N}\\r\\n]+|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
  ]),
  afmoe: spec("afmoe", [
    AFMOE_DIGITS,
    "[\u4E00-\u9FFF\u3400-\u4DBF\u8C48-\uFAFF\u3040-\u309F\u30A0-\u30FF\uFF65-\uFF9F\u2F00-\u2FDF\u0E40-\u0E7F\u0E80-\u0EFF\u1780-\u17FF\u1000-\u109F\uAA60-\uAA7F\uA9E0-\uA9FF\uAC00-\uD7AF\u1100-\u11FF]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\\r\\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
  ]),
  laguna: spec("laguna", [NEWLINES, QWEN2_RE]),
  "exaone-moe": spec("exaone-moe", [
    CONTRACTIONS +
    "|[^\\r\\n\\p{L}\\p{N}]?(?:\\p{L}\\p{M}*(?: \\p{L}\\p{M}*)*)+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]?|\\s*[\\r\\n]|\\s+(?!\\S)|\\s+",
  ]),
  gemma4: spec("gemma4", [NEWLINES], false),
  "sarvam-moe": spec("sarvam-moe", [NEWLINES], false),
  "kimi-k2": spec("kimi-k2", [KIMI_K2]),
  superbpe: spec("superbpe", ["\\p{N}+", "(?=(\\d{3})+(?!\\d))"]),
  minicpm5: spec("minicpm5", [
    "\\p{N}{1,3}",
    CONTRACTIONS +
    "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}+| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
  ]),
};

// ---------------------------------------------------------------------------
// Hand-written splitters (llama.cpp's unicode_regex_split_custom_*)
// ---------------------------------------------------------------------------

const OUT_OF_RANGE = -1;
const { letter: L, number: N, whitespace: WS, mark: M } = CpFlag;

/** Splits each piece `[start, start + len)` of `cpts` into words; returns the word lengths. */
type Splitter = (cpts: readonly number[], offsets: readonly number[]) => number[];

/**
 * Runs `body` over each piece with llama.cpp's helpers: `cpt(pos)`/`flags(pos)`
 * return OUT_OF_RANGE/0 outside the piece, `add(end)` closes a word.
 */
function eachPiece(
  cpts: readonly number[],
  offsets: readonly number[],
  body: (
    ini: number,
    end: number,
    cpt: (pos: number) => number,
    flags: (pos: number) => number,
    add: (end: number) => number,
  ) => void,
): number[] {
  const out: number[] = [];
  let start = 0;
  for (const offset of offsets) {
    const ini = start;
    const end = start + offset;
    start = end;
    let prevEnd = ini;
    body(
      ini,
      end,
      (pos) => (pos >= ini && pos < end ? cpts[pos]! : OUT_OF_RANGE),
      (pos) => (pos >= ini && pos < end ? cpFlags(cpts[pos]!) : 0),
      (e) => {
        const len = e - prevEnd;
        if (len > 0) out.push(len);
        prevEnd = e;
        return len;
      },
    );
  }
  return out;
}

const CR = 0x0d;
const LF = 0x0a;
const SPACE = 0x20;
const APOS = 0x27;

/** Lower-cases ASCII; the contraction checks only ever compare with ASCII letters. */
const lower = (c: number) => (c >= 0x41 && c <= 0x5a ? c + 32 : c);

/** Length of a contraction (`'s`, `'t`, `'re`, …) at `pos`, or 0. */
function contraction(
  pos: number,
  end: number,
  cpt: (pos: number) => number,
  caseInsensitive: boolean,
): number {
  if (cpt(pos) !== APOS || pos + 1 >= end) return 0;
  const f = caseInsensitive ? lower : (c: number) => c;
  const next = f(cpt(pos + 1));
  // s t m d
  if (next === 0x73 || next === 0x74 || next === 0x6d || next === 0x64) return 2;
  if (pos + 2 < end) {
    const nn = f(cpt(pos + 2));
    // re ve ll
    if (
      (next === 0x72 && nn === 0x65) || (next === 0x76 && nn === 0x65) ||
      (next === 0x6c && nn === 0x6c)
    ) return 3;
  }
  return 0;
}

/** `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)` */
const splitGpt2: Splitter = (cpts, offsets) =>
  eachPiece(cpts, offsets, (ini, end, cpt, flags, add) => {
    for (let pos = ini; pos < end;) {
      const c = cpt(pos);
      const f = flags(pos);
      const n = contraction(pos, end, cpt, false);
      if (n > 0) {
        pos += add(pos + n);
        continue;
      }
      let f2 = c === SPACE ? flags(pos + 1) : f;
      if (f2 & L) {
        pos += c === SPACE ? 1 : 0;
        while (f2 & L) f2 = flags(++pos);
        add(pos);
        continue;
      }
      if (f2 & N) {
        pos += c === SPACE ? 1 : 0;
        while (f2 & N) f2 = flags(++pos);
        add(pos);
        continue;
      }
      if (!(f2 & (WS | L | N)) && f2) {
        pos += c === SPACE ? 1 : 0;
        while (!(f2 & (WS | L | N)) && f2) f2 = flags(++pos);
        add(pos);
        continue;
      }
      let nws = 0;
      while (flags(pos + nws) & WS) nws++;
      if (nws > 1 && cpt(pos + nws) !== OUT_OF_RANGE) {
        pos += nws - 1;
        add(pos);
        continue;
      }
      if (nws > 0) {
        pos += nws;
        add(pos);
        continue;
      }
      add(++pos);
    }
  });

/**
 * The tail Llama 3's splitter and Kimi-K2's share, at a position no word or
 * number rule took: ` ?[^\s<stop>]+[\r\n]*`, else `\s*[\r\n]+`, else
 * `\s+(?!\S)`, else `\s+`, else one codepoint (unassigned ones included).
 * Closes the piece and returns the position after it.
 */
function punctuationOrSpaces(
  pos: number,
  stop: number,
  cpt: (pos: number) => number,
  flags: (pos: number) => number,
  add: (end: number) => number,
): number {
  const space = cpt(pos) === SPACE;
  let f2 = flags(space ? pos + 1 : pos);
  // an unassigned codepoint after a space (f2 = 0) ends here as the space alone either way
  if (!(f2 & stop) && f2) {
    if (space) pos++;
    while (!(f2 & stop) && f2) f2 = flags(++pos);
    let c2 = cpt(pos);
    while (c2 === CR || c2 === LF) c2 = cpt(++pos);
    add(pos);
    return pos;
  }
  let nws = 0;
  let lastCrLf = 0;
  while (flags(pos + nws) & WS) {
    const c2 = cpt(pos + nws);
    if (c2 === CR || c2 === LF) lastCrLf = pos + nws + 1;
    nws++;
  }
  if (lastCrLf > 0) pos = lastCrLf;
  else if (nws > 1 && cpt(pos + nws) !== OUT_OF_RANGE) pos += nws - 1;
  else pos += nws > 0 ? nws : 1;
  add(pos);
  return pos;
}

/**
 * Llama 3 (`maxDigits` 3), Qwen2 (1) and Qwen3.5 (1, `marks`):
 * `(?i:'s|…)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
 */
function llama3Like(maxDigits: number, marks: boolean): Splitter {
  const word = marks ? L | M : L;
  return (cpts, offsets) =>
    eachPiece(cpts, offsets, (ini, end, cpt, flags, add) => {
      for (let pos = ini; pos < end;) {
        const c = cpt(pos);
        const f = flags(pos);
        const n = contraction(pos, end, cpt, true);
        if (n > 0) {
          pos += add(pos + n);
          continue;
        }
        if (!(c === CR || c === LF || f & N)) {
          if (f & word || flags(pos + 1) & word) {
            pos++;
            while (flags(pos) & word) pos++;
            add(pos);
            continue;
          }
        }
        if (f & N) {
          if (maxDigits === 1) {
            add(++pos);
            continue;
          }
          let first = pos;
          while (flags(pos) & N) {
            if (++pos - first >= maxDigits) {
              add(pos);
              first = pos;
            }
          }
          add(pos);
          continue;
        }
        pos = punctuationOrSpaces(pos, WS | word | N, cpt, flags, add);
      }
    });
}

/** AFMoE/Tiny Aya digits: a run of n digits → n mod 3 leading digits, then threes. */
const splitAfmoeDigits: Splitter = (cpts, offsets) =>
  eachPiece(cpts, offsets, (ini, end, _cpt, flags, add) => {
    for (let pos = ini; pos < end;) {
      if (flags(pos) & N) {
        const digitStart = pos;
        let count = 0;
        while (flags(pos) & N && pos < end) {
          count++;
          pos++;
        }
        let current = digitStart;
        const rem = count % 3;
        if (rem > 0) {
          // Like llama.cpp, this word also takes any text since the last word.
          add(current + rem);
          current += rem;
        }
        while (current < digitStart + count) {
          add(current + 3);
          current += 3;
        }
        continue;
      }
      pos++;
    }
    add(end);
  });

/**
 * Han as llama.cpp's `unicode_cpt_is_han` has it: a fixed list of CJK
 * ideograph blocks, not the Unicode script (U+3005, U+3007, radicals and
 * Extensions G–I are not Han here).
 */
const HAN: readonly (readonly [number, number])[] = [
  [0x4e00, 0x9fff], // CJK Unified Ideographs
  [0x3400, 0x4dbf], // Extension A
  [0x20000, 0x2a6df], // Extension B
  [0x2a700, 0x2b73f], // Extension C
  [0x2b740, 0x2b81f], // Extension D
  [0x2b820, 0x2ceaf], // Extension E
  [0x2ceb0, 0x2ebef], // Extension F
  [0xf900, 0xfaff], // Compatibility Ideographs
  [0x2f800, 0x2fa1f], // Compatibility Ideographs Supplement
];
const isHan = (c: number) => HAN.some(([lo, hi]) => c >= lo && c <= hi);

/**
 * Kimi-K2 (`unicode_regex_split_custom_kimi_k2`). It stands for Kimi's regex
 * `[\p{Han}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*[\p{Ll}…]+(?i:'s|…)?|…`
 * but is not it, and llama.cpp's behaviour is the one to match: Han runs are
 * words; otherwise an optional non-letter/non-number/non-CR/LF lead plus a
 * run of non-Han letters of any case (case does not split; marks are not
 * letters) plus a contraction; then digits in threes, punctuation runs and
 * whitespace as Llama 3; a codepoint with no flags (unassigned) is a word
 * of its own.
 */
const splitKimiK2: Splitter = (cpts, offsets) =>
  eachPiece(cpts, offsets, (ini, end, cpt, flags, add) => {
    const wordLetter = (pos: number) => (flags(pos) & L) !== 0 && !isHan(cpt(pos));
    for (let pos = ini; pos < end;) {
      const c = cpt(pos);
      const f = flags(pos);
      if (isHan(c)) {
        while (isHan(cpt(pos))) pos++;
        add(pos);
        continue;
      }
      const lead = !(c === CR || c === LF || f & (L | N));
      if ((f & L) !== 0 || (lead && wordLetter(pos + 1))) {
        if (lead) pos++;
        while (wordLetter(pos)) pos++;
        pos += contraction(pos, end, cpt, true);
        add(pos);
        continue;
      }
      if (f & N) {
        let first = pos;
        while (flags(pos) & N) {
          if (++pos - first >= 3) {
            add(pos);
            first = pos;
          }
        }
        add(pos);
        continue;
      }
      pos = punctuationOrSpaces(pos, WS | L | N, cpt, flags, add);
    }
  });

/** `[^\n]+|[\n]+` */
const splitNewlines: Splitter = (cpts, offsets) => {
  const out: number[] = [];
  let start = 0;
  for (const offset of offsets) {
    const end = start + offset;
    for (let pos = start; pos < end;) {
      const nl = cpts[pos] === LF;
      const run = pos;
      while (pos < end && (cpts[pos] === LF) === nl) pos++;
      out.push(pos - run);
    }
    start = end;
  }
  return out;
};

const CUSTOM: ReadonlyMap<string, Splitter> = new Map([
  [GPT2_RE, splitGpt2],
  [LLAMA3_RE, llama3Like(3, false)],
  [QWEN2_RE, llama3Like(1, false)],
  [QWEN35_RE, llama3Like(1, true)],
  [AFMOE_DIGITS, splitAfmoeDigits],
  [TINY_AYA_DIGITS, splitAfmoeDigits],
  [NEWLINES, splitNewlines],
  [KIMI_K2, splitKimiK2],
]);

// ---------------------------------------------------------------------------
// The general path: ECMAScript regexes over collapsed or wide text
// ---------------------------------------------------------------------------

/** Unicode categories a regex may name, and the flag each collapses to. */
const UCAT: Readonly<Record<string, number>> = {
  "\\p{N}": CpFlag.number,
  "\\p{L}": CpFlag.letter,
  "\\p{P}": CpFlag.punctuation,
  "\\p{M}": CpFlag.mark,
  "\\p{S}": CpFlag.symbol,
  "\\p{Lu}": CpFlag.letter,
  "\\p{Ll}": CpFlag.letter,
  "\\p{Lt}": CpFlag.letter,
  "\\p{Lm}": CpFlag.letter,
  "\\p{Lo}": CpFlag.letter,
};

/** The stand-in character of each category in collapsed text (llama.cpp's bytes 0xD1–0xD5). */
const STAND_IN: ReadonlyMap<number, number> = new Map([
  [CpFlag.number, 0xd1],
  [CpFlag.letter, 0xd2],
  [CpFlag.punctuation, 0xd3],
  [CpFlag.mark, 0xd4],
  [CpFlag.symbol, 0xd5],
]);
const STAND_IN_OTHER = 0xd0;
const STAND_IN_SPACE = 0x0b;

/** The ASCII members of each category, as regex class contents. */
const ASCII_MEMBERS: ReadonlyMap<number, string> = new Map([
  [CpFlag.number, "0-9"],
  [CpFlag.letter, "A-Za-z"],
  [CpFlag.punctuation, "!-#%-*,-/:-;?-@\\[-\\]_\\{\\}"],
  [CpFlag.mark, ""],
  [CpFlag.symbol, "\\$\\+<->^`\\|\\~"],
]);

const C_SPACE = "\\t\\n\\v\\f\\r ";

/** A compiled general-path regex. */
interface CompiledRegex {
  /** Runs on collapsed text (one stand-in per codepoint) rather than on codepoints. */
  readonly collapsed: boolean;
  readonly re: RegExp;
}

/**
 * Rewrites a llama.cpp regex for collapsed text the way `unicode_regex_split`
 * does: `\p{X}` becomes `[<stand-in><ASCII members>]` (without the brackets
 * inside a class).
 */
function collapseRegex(expr: string): string {
  for (const ch of expr) {
    if (ch.codePointAt(0)! >= 128) {
      throw new Error(
        `pre-tokenizer regex ${
          JSON.stringify(expr)
        } mixes Unicode categories and non-ASCII text (llama.cpp rejects it too)`,
      );
    }
  }
  let out = "";
  let inside = false;
  for (let i = 0; i < expr.length; i++) {
    const ch = expr[i]!;
    if (ch === "[" && (i === 0 || expr[i - 1] !== "\\")) {
      out += "[";
      inside = true;
      continue;
    }
    if (inside && ch === "]" && expr[i - 1] !== "\\") {
      out += "]";
      inside = false;
      continue;
    }
    if (ch === "\\" && i + 3 < expr.length && expr[i + 1] === "p" && expr[i + 2] === "{") {
      const close = expr.indexOf("}", i + 3);
      if (close !== -1 && close <= i + 10) {
        const cat = UCAT[expr.slice(i, close + 1)];
        if (cat !== undefined) {
          const body = String.fromCharCode(STAND_IN.get(cat)!) + ASCII_MEMBERS.get(cat)!;
          out += inside ? body : `[${body}]`;
          i = close;
          continue;
        }
      }
    }
    out += ch;
  }
  return out;
}

/**
 * Makes `\s` and `\S` mean what they mean to C++'s `std::wregex` in the C
 * locale (ASCII whitespace only), since JavaScript's `\s` also matches
 * U+FEFF and the like.
 */
function cWhitespace(expr: string): string {
  let out = "";
  let inside = false;
  for (let i = 0; i < expr.length; i++) {
    const ch = expr[i]!;
    if (ch === "\\") {
      const next = expr[i + 1];
      if (next === "s") out += inside ? C_SPACE : `[${C_SPACE}]`;
      else if (next === "S") {
        if (inside) throw new Error(`\\S inside a class is not supported in ${expr}`);
        out += `[^${C_SPACE}]`;
      } else out += ch + (next ?? "");
      i++;
      continue;
    }
    if (ch === "[" && !inside) inside = true;
    else if (ch === "]" && inside) inside = false;
    out += ch;
  }
  return out;
}

function compileRegex(expr: string): CompiledRegex {
  const collapsed = Object.keys(UCAT).some((k) => expr.includes(k));
  try {
    return collapsed
      ? { collapsed, re: new RegExp(collapseRegex(expr), "g") }
      : { collapsed, re: new RegExp(cWhitespace(expr), "gu") };
  } catch (e) {
    throw new Error(`cannot compile pre-tokenizer regex ${JSON.stringify(expr)}: ${e}`);
  }
}

/** The text a general-path regex sees for one piece, and how its indices map back. */
function pieceText(
  cpts: readonly number[],
  collapsedCodes: Uint8Array | undefined,
  start: number,
  end: number,
): { text: string; toCp: Int32Array | undefined } {
  if (collapsedCodes !== undefined) {
    let text = "";
    for (let i = start; i < end; i += 8192) {
      text += String.fromCharCode(...collapsedCodes.subarray(i, Math.min(end, i + 8192)));
    }
    return { text, toCp: undefined };
  }
  let text = "";
  let wide = false;
  for (let i = start; i < end; i++) {
    let c = cpts[i]!;
    if (c > 0x7f && cpFlags(c) & WS) c = STAND_IN_SPACE;
    if (c > 0xffff) wide = true;
    text += String.fromCodePoint(c);
  }
  if (!wide) return { text, toCp: undefined };
  // UTF-16 index → codepoint index within the piece
  const toCp = new Int32Array(text.length + 1);
  let cp = 0;
  for (let u = 0; u < text.length; u++) {
    toCp[u] = cp;
    const c = text.charCodeAt(u);
    if (c >= 0xd800 && c <= 0xdbff) toCp[++u] = cp;
    cp++;
  }
  toCp[text.length] = cp;
  return { text, toCp };
}

function splitWithRegex(
  compiled: CompiledRegex,
  cpts: readonly number[],
  collapsedCodes: Uint8Array | undefined,
  offsets: readonly number[],
): number[] {
  const out: number[] = [];
  let start = 0;
  for (const offset of offsets) {
    const { text, toCp } = pieceText(
      cpts,
      compiled.collapsed ? collapsedCodes : undefined,
      start,
      start + offset,
    );
    const at = (u: number) => (toCp === undefined ? u : toCp[u]!);
    const re = compiled.re;
    re.lastIndex = 0;
    let done = 0;
    for (let m = re.exec(text); m !== null; m = re.exec(text)) {
      const pos = at(m.index);
      const len = at(m.index + m[0].length) - pos;
      if (pos > done) out.push(pos - done);
      out.push(len);
      done = pos + len;
      if (m[0].length === 0) re.lastIndex++;
    }
    if (done < offset) out.push(offset - done);
    start += offset;
  }
  return out;
}

/** Collapsed text: ASCII as is, other codepoints as their category's stand-in. */
function collapse(cpts: readonly number[]): Uint8Array {
  const out = new Uint8Array(cpts.length);
  for (let i = 0; i < cpts.length; i++) {
    const c = cpts[i]!;
    if (c < 128) {
      out[i] = c;
      continue;
    }
    const f = cpFlags(c);
    out[i] = f & WS ? STAND_IN_SPACE : STAND_IN.get(f & CpFlag.categories) ?? STAND_IN_OTHER;
  }
  return out;
}

/** A ready pre-tokenizer: text (as codepoints) → word lengths in codepoints. */
export class PreTokenizer {
  /** The family it implements. */
  readonly spec: PreTokenizerSpec;
  readonly #steps: (
    | { custom: Splitter }
    | { regex: CompiledRegex }
  )[];
  readonly #needsCollapse: boolean;

  /** Compiles the regexes of `spec`. */
  constructor(spec: PreTokenizerSpec) {
    this.spec = spec;
    this.#steps = spec.regexes.map((r) => {
      const custom = CUSTOM.get(r);
      return custom !== undefined ? { custom } : { regex: compileRegex(r) };
    });
    this.#needsCollapse = this.#steps.some((s) => "regex" in s && s.regex.collapsed);
  }

  /** Word lengths (in codepoints) covering `cpts`. */
  split(cpts: readonly number[]): number[] {
    let offsets: number[] = [cpts.length];
    const collapsed = this.#needsCollapse ? collapse(cpts) : undefined;
    for (const step of this.#steps) {
      if ("custom" in step) {
        const next = step.custom(cpts, offsets);
        // llama.cpp falls back to its std::regex when a custom splitter finds nothing;
        // that happens only for empty text, where the regex finds nothing either.
        if (next.length > 0) offsets = next;
        continue;
      }
      offsets = splitWithRegex(step.regex, cpts, collapsed, offsets);
    }
    return offsets;
  }
}
