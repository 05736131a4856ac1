/**
 * Unit tests of the tokenizer on tiny hand-built vocabularies, where every
 * expected id can be worked out by hand. Parity with llama.cpp on real
 * vocabularies is tested in `tests/tokenizer_parity_test.ts`.
 */

import assert from "node:assert/strict";
import { GgufMetadata } from "../gguf/reader.ts";
import { Keys } from "../gguf/names.ts";
import { type GgufValue, gv } from "../gguf/value.ts";
import { BYTE_TO_CHAR } from "./_unicode.ts";
import { SUPPORTED_PRE_TOKENIZERS, TokenAttr, Tokenizer } from "./tokenizer.ts";

const NORMAL = 1;
const UNKNOWN = 2;
const CONTROL = 3;
const USER = 4;
const BYTE = 6;

function meta(entries: [string, GgufValue][]): GgufMetadata {
  return new GgufMetadata(new Map(entries), "<test>");
}

/**
 * A byte-level BPE vocabulary: the 256 byte characters, then merges
 * `h e`, `l l`, `he ll`, `hell o`, `Ġ w`, then three special tokens.
 */
function tinyBpe(extra: [string, GgufValue][] = []): Tokenizer {
  const tokens = [...BYTE_TO_CHAR, "he", "ll", "hell", "hello", "Ġw"];
  const merges = ["h e", "l l", "he ll", "hell o", "Ġ w"];
  const types = tokens.map(() => NORMAL);
  tokens.push("<|endoftext|>", "<|im_end|>", "<|user|>");
  types.push(CONTROL, CONTROL, USER);
  return Tokenizer.fromGguf(meta([
    [Keys.tokenizerModel, gv.str("gpt2")],
    [Keys.tokenizerPre, gv.str("qwen2")],
    [Keys.tokenizerTokens, gv.strings(tokens)],
    [Keys.tokenizerTokenType, gv.i32s(types)],
    [Keys.tokenizerMerges, gv.strings(merges)],
    [Keys.tokenizerBosId, gv.u32(261)],
    [Keys.tokenizerEosId, gv.u32(261)],
    ...extra,
  ]));
}

const ID = { he: 256, ll: 257, hell: 258, hello: 259, Gw: 260, eot: 261, imEnd: 262, user: 263 };
const byteId = (ch: string) => BYTE_TO_CHAR.indexOf(ch);

Deno.test("byte-level BPE merges by rank and falls back to byte characters", () => {
  const tok = tinyBpe();
  assert.equal(tok.type, "bpe");
  assert.equal(tok.vocabSize, 264);
  assert.deepEqual(tok.encode("hello"), [ID.hello]);
  // "Ġw" merges, "orld" has no merges: one byte character each.
  assert.deepEqual(tok.encode("hello world"), [
    ID.hello,
    ID.Gw,
    byteId("o"),
    byteId("r"),
    byteId("l"),
    byteId("d"),
  ]);
  // "é" is two UTF-8 bytes, each its own token.
  assert.deepEqual(tok.encode("é"), [byteId("Ã"), byteId("©")]);
  assert.equal(tok.decode(tok.encode("héllo wörld")), "héllo wörld");
});

Deno.test("special tokens: control text only with parseSpecial, user-defined always", () => {
  const tok = tinyBpe();
  assert.deepEqual(tok.encode("hello<|im_end|>"), [ID.hello, ID.imEnd]);
  const literal = tok.encode("hello<|im_end|>", { parseSpecial: false });
  assert.ok(!literal.includes(ID.imEnd));
  assert.equal(tok.decode(literal), "hello<|im_end|>");
  assert.deepEqual(tok.encode("<|user|>hello", { parseSpecial: false }), [ID.user, ID.hello]);
  // Rendered as text by default, dropped with skipSpecial (user-defined tokens stay).
  assert.equal(tok.decode([ID.user, ID.hello, ID.imEnd]), "<|user|>hello<|im_end|>");
  assert.equal(tok.decode([ID.user, ID.hello, ID.imEnd], { skipSpecial: true }), "<|user|>hello");
});

Deno.test("BOS/EOS follow the file's add_bos/add_eos, and EOG tokens are found by text", () => {
  const plain = tinyBpe();
  assert.equal(plain.addBos, false);
  assert.deepEqual(plain.encode("hello"), [ID.hello]);
  const both = tinyBpe([
    [Keys.tokenizerAddBos, gv.bool(true)],
    [Keys.tokenizerAddEos, gv.bool(true)],
  ]);
  assert.deepEqual(both.encode("hello"), [ID.eot, ID.hello, ID.eot]);
  assert.deepEqual(both.encode("hello", { addSpecial: false }), [ID.hello]);
  assert.equal(both.decode(both.encode("hello"), { removeSpecial: true }), "hello");
  assert.equal(plain.bos, ID.eot);
  assert.equal(plain.eot, ID.imEnd, "<|im_end|> is the end-of-turn token");
  assert.ok(plain.isEog(ID.imEnd) && plain.isEog(ID.eot) && !plain.isEog(ID.hello));
  assert.ok(plain.isControl(ID.imEnd));
  assert.equal(plain.tokenAttr(ID.user) & TokenAttr.userDefined, TokenAttr.userDefined);
});

Deno.test("unpaired surrogates are read as U+FFFD", () => {
  const tok = tinyBpe();
  assert.deepEqual(tok.encode("a\ud800b"), tok.encode("a\ufffdb"));
});

Deno.test("the stream decoder never splits a UTF-8 character", () => {
  const tok = tinyBpe();
  const ids = tok.encode("h€llo 😀!");
  const dec = tok.createStreamDecoder();
  const chunks = ids.map((id) => dec.push(id));
  assert.equal(chunks.join("") + dec.flush(), "h€llo 😀!");
  for (const c of chunks) assert.ok(!c.includes("\ufffd"), `chunk ${JSON.stringify(c)}`);
  // "€" is 3 byte tokens: the first two give nothing, the third gives "€".
  const euro = tok.encode("€");
  assert.equal(euro.length, 3);
  const d2 = tok.createStreamDecoder();
  assert.deepEqual(euro.map((id) => d2.push(id)), ["", "", "€"]);
  // An incomplete character left at the end becomes U+FFFD on flush.
  const d3 = tok.createStreamDecoder();
  assert.equal(d3.push(euro[0]!), "");
  assert.equal(d3.flush(), "\ufffd");
  assert.equal(d3.push(ID.hello), "hello", "flush resets the decoder");
  const d4 = tok.createStreamDecoder({ skipSpecial: true });
  assert.equal(d4.push(ID.imEnd), "");
});

/**
 * A SentencePiece vocabulary: <unk>, <s>, </s>, 256 byte tokens, then pieces
 * with scores (higher merges first).
 */
function tinySpm(extra: [string, GgufValue][] = []): Tokenizer {
  const tokens = ["<unk>", "<s>", "</s>"];
  const types = [UNKNOWN, CONTROL, CONTROL];
  const scores = [0, 0, 0];
  for (let b = 0; b < 256; b++) {
    tokens.push(`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`);
    types.push(BYTE);
    scores.push(0);
  }
  const pieces: [string, number][] = [
    ["▁", -1],
    ["h", -2],
    ["e", -2],
    ["l", -2],
    ["o", -2],
    ["▁h", -3],
    ["ll", -4],
    ["▁he", -5],
    ["llo", -6],
    ["▁hello", -7],
  ];
  for (const [p, s] of pieces) {
    tokens.push(p);
    types.push(NORMAL);
    scores.push(s);
  }
  return Tokenizer.fromGguf(meta([
    [Keys.tokenizerModel, gv.str("llama")],
    [Keys.tokenizerTokens, gv.strings(tokens)],
    [Keys.tokenizerTokenType, gv.i32s(types)],
    [Keys.tokenizerScores, gv.f32s(scores)],
    ...extra,
  ]));
}

const SPM = { space: 259, h: 260, o: 263, hello: 268 };

Deno.test("SentencePiece: BOS by default, a space prefix, byte fallback", () => {
  const tok = tinySpm();
  assert.equal(tok.type, "spm");
  assert.equal(tok.bos, 1);
  assert.equal(tok.eos, 2);
  assert.deepEqual(tok.encode("hello"), [1, SPM.hello]);
  assert.deepEqual(tok.encode("hello", { addSpecial: false }), [SPM.hello]);
  // "é" has no piece: its two UTF-8 bytes.
  assert.deepEqual(tok.encode("é", { addSpecial: false }), [SPM.space, 3 + 0xc3, 3 + 0xa9]);
  // Text after a special token gets the space prefix again.
  assert.deepEqual(tok.encode("hello</s>hello", { addSpecial: false }), [SPM.hello, 2, SPM.hello]);
  // Decoding removes the prefix space; byte tokens join into characters.
  assert.equal(tok.decode(tok.encode("hello é", { addSpecial: false })), "hello é");
  const noPrefix = tinySpm([[Keys.tokenizerAddSpacePrefix, gv.bool(false)]]);
  assert.deepEqual(noPrefix.encode("ho", { addSpecial: false }), [SPM.h, SPM.o]);
});

Deno.test("unsupported tokenizers fail naming the key and the supported values", () => {
  assert.throws(
    () => Tokenizer.fromGguf(meta([[Keys.tokenizerModel, gv.str("bert")]])),
    /tokenizer\.ggml\.model = "bert".*supported: gpt2, llama, gemma4/,
  );
  assert.throws(
    () => tinyBpe([[Keys.tokenizerPre, gv.str("no-such-pre")]]),
    /tokenizer\.ggml\.pre = "no-such-pre".*supported: .*qwen2/,
  );
  assert.ok(SUPPORTED_PRE_TOKENIZERS.includes("deepseek-v3"));
  assert.ok(SUPPORTED_PRE_TOKENIZERS.includes("kimi-k2"));
  assert.ok(SUPPORTED_PRE_TOKENIZERS.includes("superbpe"));
  assert.ok(SUPPORTED_PRE_TOKENIZERS.includes("gpt-4o"));
  assert.throws(
    () => Tokenizer.fromGguf(meta([[Keys.tokenizerModel, gv.str("llama")]])),
    /tokenizer\.ggml\.tokens is missing/,
  );
  assert.throws(() => tinyBpe().tokenToBytes(264), /outside the vocabulary \[0, 264\)/);
});
