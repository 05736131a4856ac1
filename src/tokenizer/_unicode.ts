/**
 * Unicode helpers with llama.cpp's semantics (`src/unicode.cpp`): codepoint
 * category flags, the GPT-2 byte↔character table and UTF-8 encoding.
 *
 * @module
 */

/** Codepoint flags, bit for bit llama.cpp's `unicode_cpt_flags`. */
export const CpFlag = {
  undefined: 0x0001,
  number: 0x0002,
  letter: 0x0004,
  separator: 0x0008,
  mark: 0x0010,
  punctuation: 0x0020,
  symbol: 0x0040,
  control: 0x0080,
  categories: 0x00ff,
  whitespace: 0x0100,
} as const;

/**
 * Codepoints that this JavaScript engine's Unicode (16.0) assigns but
 * llama.cpp's generated table (Unicode 15.1, `unicode-data.cpp`) leaves
 * unassigned. llama.cpp sees them as undefined, so they are here too; the
 * parity test compares every codepoint with llama.cpp's table and fails if
 * either side moves on.
 */
const NEWER_THAN_LLAMA: readonly (readonly [number, number])[] = [
  [0x897, 0x897],
  [0x1B4E, 0x1B4F],
  [0x1B7F, 0x1B7F],
  [0x1C89, 0x1C8A],
  [0x2427, 0x2429],
  [0x31E4, 0x31E5],
  [0xA7CB, 0xA7CD],
  [0xA7DA, 0xA7DC],
  [0x105C0, 0x105F3],
  [0x10D40, 0x10D65],
  [0x10D69, 0x10D85],
  [0x10D8E, 0x10D8F],
  [0x10EC2, 0x10EC4],
  [0x10EFC, 0x10EFC],
  [0x11380, 0x11389],
  [0x1138B, 0x1138B],
  [0x1138E, 0x1138E],
  [0x11390, 0x113B5],
  [0x113B7, 0x113C0],
  [0x113C2, 0x113C2],
  [0x113C5, 0x113C5],
  [0x113C7, 0x113CA],
  [0x113CC, 0x113D5],
  [0x113D7, 0x113D8],
  [0x113E1, 0x113E2],
  [0x116D0, 0x116E3],
  [0x11BC0, 0x11BE1],
  [0x11BF0, 0x11BF9],
  [0x11F5A, 0x11F5A],
  [0x13460, 0x143FA],
  [0x16100, 0x16139],
  [0x16D40, 0x16D79],
  [0x18CFF, 0x18CFF],
  [0x1CC00, 0x1CCF9],
  [0x1CD00, 0x1CEB3],
  [0x1E5D0, 0x1E5FA],
  [0x1E5FF, 0x1E5FF],
  [0x1F8B2, 0x1F8BB],
  [0x1F8C0, 0x1F8C1],
  [0x1FA89, 0x1FA89],
  [0x1FA8F, 0x1FA8F],
  [0x1FABE, 0x1FABE],
  [0x1FAC6, 0x1FAC6],
  [0x1FADC, 0x1FADC],
  [0x1FADF, 0x1FADF],
  [0x1FAE9, 0x1FAE9],
  [0x1FBCB, 0x1FBEF],
];

const MAX_CODEPOINTS = 0x110000;
const CATEGORY = /(\p{N})|(\p{L})|(\p{Z})|(\p{M})|(\p{P})|(\p{S})|([\p{Cc}\p{Cf}\p{Co}\p{Cs}])/u;
const CATEGORY_FLAGS = [
  CpFlag.number,
  CpFlag.letter,
  CpFlag.separator,
  CpFlag.mark,
  CpFlag.punctuation,
  CpFlag.symbol,
  CpFlag.control,
];
const WHITESPACE = /\p{White_Space}/u;

/** Flags per codepoint, filled on first use (0 = not looked up yet). */
const flagCache = new Uint16Array(MAX_CODEPOINTS);

function computeFlags(cp: number): number {
  if (cp >= 0xd800 && cp <= 0xdfff) return CpFlag.control;
  for (const [lo, hi] of NEWER_THAN_LLAMA) {
    if (cp >= lo && cp <= hi) return CpFlag.undefined;
  }
  const s = String.fromCodePoint(cp);
  const m = CATEGORY.exec(s);
  let flags: number = CpFlag.undefined;
  if (m !== null) {
    for (let g = 1; g < m.length; g++) {
      if (m[g] !== undefined) {
        flags = CATEGORY_FLAGS[g - 1]!;
        break;
      }
    }
  }
  if (WHITESPACE.test(s)) flags |= CpFlag.whitespace;
  return flags;
}

/**
 * llama.cpp's flags of a codepoint: one category bit (`\p{N}`, `\p{L}`, …, or
 * undefined) plus the whitespace bit. Out-of-range codepoints are undefined.
 */
export function cpFlags(cp: number): number {
  if (cp < 0 || cp >= MAX_CODEPOINTS) return CpFlag.undefined;
  let f = flagCache[cp]!;
  if (f === 0) {
    f = computeFlags(cp);
    flagCache[cp] = f;
  }
  return f;
}

/** The codepoints of a string (lone surrogates must have been replaced already). */
export function codepoints(s: string): number[] {
  const out: number[] = [];
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) {
      const d = s.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) {
        out.push(((c - 0xd800) << 10) + (d - 0xdc00) + 0x10000);
        i++;
        continue;
      }
    }
    out.push(c);
  }
  return out;
}

/** The string of `cps[start, end)`. */
export function fromCodepoints(cps: readonly number[], start = 0, end = cps.length): string {
  let s = "";
  for (let i = start; i < end; i++) s += String.fromCodePoint(cps[i]!);
  return s;
}

/**
 * GPT-2's byte → character table (`unicode_byte_to_utf8_map`): printable
 * Latin-1 bytes stand for themselves, the other 68 map to U+0100…U+0143.
 */
export const BYTE_TO_CHAR: readonly string[] = (() => {
  const table: (string | undefined)[] = new Array(256);
  const keep = (lo: number, hi: number) => {
    for (let b = lo; b <= hi; b++) table[b] = String.fromCharCode(b);
  };
  keep(0x21, 0x7e);
  keep(0xa1, 0xac);
  keep(0xae, 0xff);
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (table[b] === undefined) table[b] = String.fromCharCode(256 + n++);
  }
  return table as string[];
})();

/** The inverse of {@linkcode BYTE_TO_CHAR}: character code → byte, or -1. */
export const CHAR_TO_BYTE: Int16Array = (() => {
  const t = new Int16Array(0x144).fill(-1);
  BYTE_TO_CHAR.forEach((ch, b) => (t[ch.charCodeAt(0)] = b));
  return t;
})();

const encoder = new TextEncoder();

/** UTF-8 bytes of a string. */
export function utf8(s: string): Uint8Array {
  return encoder.encode(s);
}

/** A string's UTF-8 bytes written as GPT-2 byte characters. */
export function byteEncode(s: string): string {
  let out = "";
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    // ASCII is the common case and maps to itself except for controls and space.
    if (c < 0x80) out += BYTE_TO_CHAR[c]!;
    else {
      for (const b of encoder.encode(s.slice(i, c >= 0xd800 && c <= 0xdbff ? i + 2 : i + 1))) {
        out += BYTE_TO_CHAR[b]!;
      }
      if (c >= 0xd800 && c <= 0xdbff) i++;
    }
  }
  return out;
}

/** ASCII whitespace as C's `isspace` in the "C" locale sees it. */
export function isCSpace(c: number): boolean {
  return c === 0x20 || (c >= 0x09 && c <= 0x0d);
}
