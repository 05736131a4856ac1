import assert from "node:assert/strict";
import { parseGguf, readGgufHeader } from "../src/gguf/reader.ts";
import { GgufError, type GgufErrorKind } from "../src/gguf/errors.ts";
import { serializeGguf } from "../src/gguf/writer.ts";
import { GgmlType } from "../src/gguf/types.ts";
import { gv } from "../src/gguf/value.ts";
import { Rng } from "../src/util/rng.ts";
import { fuzzCase, fuzzSeedFile, mutate } from "../scripts/fuzz_gguf.ts";

function expectError(bytes: Uint8Array, kind: GgufErrorKind, message: RegExp, offset?: number) {
  assert.throws(() => parseGguf(bytes, "case.gguf"), (e: unknown) => {
    assert.ok(e instanceof GgufError, `expected a GgufError, got ${e}`);
    assert.equal(e.kind, kind, e.message);
    assert.equal(e.file, "case.gguf");
    assert.match(e.message, message);
    if (offset !== undefined) assert.equal(e.offset, offset, e.message);
    return true;
  });
}

const dv = (b: Uint8Array) => new DataView(b.buffer, b.byteOffset, b.byteLength);

/** Byte position of the tensor info of `name` (its name-length field). */
function tensorInfoAt(bytes: Uint8Array, name: string): number {
  const needle = new TextEncoder().encode(name);
  outer: for (let i = 8; i < bytes.length - needle.length; i++) {
    for (let j = 0; j < needle.length; j++) if (bytes[i + j] !== needle[j]) continue outer;
    if (dv(bytes).getBigUint64(i - 8, true) === BigInt(needle.length)) return i - 8;
  }
  throw new Error(`tensor ${name} not found`);
}

function twoTensors(): Uint8Array {
  return serializeGguf({
    metadata: [["general.architecture", gv.str("llama")]],
    tensors: [
      { name: "first_tensor", type: GgmlType.F32, shape: [8], data: new Uint8Array(32) },
      { name: "second_tensor", type: GgmlType.F32, shape: [8], data: new Uint8Array(32) },
    ],
  });
}

/** Offsets of the fields of a 1-D tensor info starting at `at` with `nameLen` name bytes. */
function fields(at: number, nameLen: number) {
  const nDims = at + 8 + nameLen;
  return { nDims, dim0: nDims + 4, type: nDims + 12, offset: nDims + 16 };
}

Deno.test("bad gguf: wrong magic names the bytes found", () => {
  const b = twoTensors();
  b.set([0x47, 0x47, 0x4d, 0x4c], 0);
  expectError(b, "magic", /expected magic "GGUF".*found 47 47 4d 4c/, 0);
});

Deno.test("bad gguf: unknown and obsolete versions", () => {
  const b = twoTensors();
  dv(b).setUint32(4, 4, true);
  expectError(b, "version", /unsupported GGUF version 4, expected 2 or 3/, 4);
  dv(b).setUint32(4, 1, true);
  expectError(b, "version", /version 1.*obsolete/, 4);
  dv(b).setUint32(4, 3 << 16, true);
  expectError(b, "version", /big-endian/, 4);
});

Deno.test("bad gguf: counts larger than the file", () => {
  const b = twoTensors();
  dv(b).setBigUint64(8, 1n << 40n, true);
  expectError(b, "count", /tensor count 1099511627776 cannot fit/, 8);
  const c = twoTensors();
  dv(c).setBigUint64(16, 1n << 40n, true);
  expectError(c, "count", /metadata count .* cannot fit/, 16);
  const d = twoTensors();
  dv(d).setBigUint64(16, 0xffffffffffffffffn, true);
  expectError(d, "count", /metadata count is 18446744073709551615, larger than any file/, 16);
});

Deno.test("bad gguf: string and array lengths larger than the file", () => {
  const b = twoTensors();
  // The first key's length field follows the 24-byte fixed header.
  dv(b).setBigUint64(24, 1n << 33n, true);
  expectError(b, "string", /metadata key #0 claims 8589934592 bytes but only \d+ remain/, 24);
  const arr = serializeGguf({ metadata: [["k", gv.f32s([1, 2, 3])]], tensors: [] });
  // key: 8+1, type 4, item type 4, then the count.
  dv(arr).setBigUint64(24 + 9 + 4 + 4, 1n << 40n, true);
  expectError(arr, "count", /metadata k claims 1099511627776 f32 items/);
});

Deno.test("bad gguf: unknown value type and unknown ggml type", () => {
  const b = twoTensors();
  dv(b).setUint32(24 + 8 + "general.architecture".length, 99, true);
  expectError(b, "value_type", /metadata general\.architecture has unknown value type 99/);
  const c = twoTensors();
  const f = fields(tensorInfoAt(c, "second_tensor"), "second_tensor".length);
  dv(c).setUint32(f.type, 5, true);
  expectError(c, "tensor_type", /tensor second_tensor has unknown ggml type 5/, f.type);
});

Deno.test("bad gguf: tensor offsets outside the data section, overlapping, misaligned", () => {
  const b = twoTensors();
  const f = fields(tensorInfoAt(b, "second_tensor"), "second_tensor".length);
  dv(b).setBigUint64(f.offset, 4096n, true);
  expectError(
    b,
    "tensor_offset",
    /tensor second_tensor \(32 bytes at data offset 4096\) ends at byte \d+, past the end of the file/,
  );
  dv(b).setBigUint64(f.offset, 0n, true);
  expectError(b, "overlap", /tensor second_tensor .* overlaps tensor first_tensor/);
  dv(b).setBigUint64(f.offset, 33n, true);
  expectError(
    b,
    "alignment",
    /tensor second_tensor: data offset 33 is not a multiple of the alignment 32/,
    f.offset,
  );
});

Deno.test("bad gguf: shapes that cannot hold the type, too many dims, bad alignment key", () => {
  const b = serializeGguf({
    metadata: [],
    tensors: [{ name: "q", type: GgmlType.Q8_0, shape: [32], data: new Uint8Array(34) }],
  });
  const f = fields(tensorInfoAt(b, "q"), 1);
  dv(b).setBigUint64(f.dim0, 33n, true);
  expectError(b, "tensor_shape", /row length 33 is not a multiple of the Q8_0 block size 32/);
  dv(b).setUint32(f.nDims, 7, true);
  expectError(b, "tensor_shape", /tensor q has 7 dimensions, expected 1–4/, f.nDims);
  const a = serializeGguf({ metadata: [["general.alignment", gv.u32(48)]], tensors: [] });
  expectError(a, "alignment", /general\.alignment must be a power of two, found u32 48/);
});

Deno.test("bad gguf: truncated at every length gives a GgufError, never another error", () => {
  const file = fuzzSeedFile();
  assert.equal(fuzzCase(file, "whole"), "parsed");
  for (let len = 0; len < file.length; len++) {
    assert.equal(fuzzCase(file.subarray(0, len), `truncated at ${len}`), "rejected", `len ${len}`);
  }
});

Deno.test("bad gguf: 3000 random mutations parse or give a GgufError", () => {
  const file = fuzzSeedFile();
  const rng = new Rng(1234);
  const counts = { parsed: 0, rejected: 0 };
  for (let i = 0; i < 3000; i++) counts[fuzzCase(mutate(file, rng), `mutation ${i}`)]++;
  // Both outcomes must occur, or the mutations are not reaching the header.
  assert.ok(counts.rejected > 500, JSON.stringify(counts));
  assert.ok(counts.parsed > 50, JSON.stringify(counts));
});

Deno.test("bad gguf: a truncated file on disk names the file", async () => {
  const path = await Deno.makeTempFile({ suffix: ".gguf" });
  try {
    await Deno.writeFile(path, fuzzSeedFile().subarray(0, 300));
    assert.throws(() => readGgufHeader(path), (e: unknown) => {
      assert.ok(e instanceof GgufError);
      assert.equal(e.file, path);
      assert.match(e.message, /truncated|remain in the file/);
      return true;
    });
  } finally {
    await Deno.remove(path);
  }
});
