import assert from "node:assert/strict";
import { parseGguf, readGgufHeader, readGgufModel, splitPaths } from "./reader.ts";
import { serializeGguf, writeGgufFile } from "./writer.ts";
import { GgmlType, requireGgmlType, tensorBytes } from "./types.ts";
import { type GgufValue, gv } from "./value.ts";
import { GgufError } from "./errors.ts";

function everyType(): [string, GgufValue][] {
  return [
    ["t.u8", gv.u8(255)],
    ["t.i8", gv.i8(-128)],
    ["t.u16", gv.u16(65535)],
    ["t.i16", gv.i16(-32768)],
    ["t.u32", gv.u32(4294967295)],
    ["t.i32", gv.i32(-2147483648)],
    ["t.f32", gv.f32(Math.fround(3.14159))],
    ["t.f64", gv.f64(Math.PI)],
    ["t.u64", gv.u64(18446744073709551615n)],
    ["t.i64", gv.i64(-9223372036854775808n)],
    ["t.bool", gv.bool(true)],
    ["t.string", gv.str("héllo, 世界 🌍")],
    ["t.empty_string", gv.str("")],
    ["t.strings", gv.strings(["a", "", "▁the", "<|im_end|>", "日本"])],
    ["t.f32s", gv.f32s([1.5, -2.25, 0])],
    ["t.i32s", gv.i32s([1, -2, 3])],
    ["t.u32s", gv.u32s([0, 4294967295])],
    ["t.bools", gv.bools([true, false, true])],
    ["t.u8s", { type: "array", itemType: "u8", value: new Uint8Array([1, 2, 255]) }],
    ["t.i8s", { type: "array", itemType: "i8", value: new Int8Array([-1, 2]) }],
    ["t.u16s", { type: "array", itemType: "u16", value: new Uint16Array([65535]) }],
    ["t.i16s", { type: "array", itemType: "i16", value: new Int16Array([-5]) }],
    ["t.f64s", { type: "array", itemType: "f64", value: new Float64Array([Math.E]) }],
    ["t.u64s", { type: "array", itemType: "u64", value: new BigUint64Array([1n << 63n]) }],
    ["t.i64s", { type: "array", itemType: "i64", value: new BigInt64Array([-(1n << 62n)]) }],
    ["t.empty_array", gv.strings([])],
    ["t.nested", {
      type: "array",
      itemType: "array",
      value: [
        { type: "array", itemType: "i32", value: new Int32Array([1, 2]) },
        { type: "array", itemType: "string", value: ["x"] },
      ],
    }],
  ];
}

function normalize(v: GgufValue): unknown {
  if (v.type !== "array") return v;
  const items = v.itemType === "array"
    ? (v.value as GgufValue[]).map(normalize)
    : Array.from(v.value as ArrayLike<unknown>);
  return { type: v.type, itemType: v.itemType, value: items };
}

Deno.test("gguf: every metadata value type survives a write→read round trip", () => {
  const meta = everyType();
  const bytes = serializeGguf({ metadata: meta, tensors: [] });
  const h = parseGguf(bytes, "roundtrip.gguf");
  assert.equal(h.version, 3);
  assert.equal(h.metadata.entries.size, meta.length);
  for (const [k, v] of meta) assert.deepEqual(normalize(h.metadata.get(k)!), normalize(v), k);
  assert.deepEqual([...h.metadata.entries.keys()], meta.map(([k]) => k), "key order kept");
});

Deno.test("gguf: tensor table, alignment and data offsets round trip", () => {
  const q8 = requireGgmlType(GgmlType.Q8_0);
  const tensors = [
    { name: "a", type: GgmlType.F32, shape: [3, 2], data: new Uint8Array(24).map((_, i) => i) },
    {
      name: "b",
      type: GgmlType.Q8_0,
      shape: [64, 3],
      data: new Uint8Array(tensorBytes(q8, [64, 3])).map((_, i) => i * 7),
    },
    { name: "c", type: GgmlType.F16, shape: [5], data: new Uint8Array(10).fill(9) },
  ];
  for (const alignment of [32, 64, 4096]) {
    for (const version of [2, 3] as const) {
      const bytes = serializeGguf({
        metadata: [["general.architecture", gv.str("llama")]],
        tensors,
        alignment,
        version,
      });
      const h = parseGguf(bytes, "t.gguf");
      assert.equal(h.version, version);
      assert.equal(h.alignment, alignment);
      assert.equal(h.dataOffset % alignment, 0);
      assert.equal(h.tensors.length, 3);
      for (const [i, t] of h.tensors.entries()) {
        const want = tensors[i]!;
        assert.equal(t.name, want.name);
        assert.deepEqual(t.shape, want.shape);
        assert.equal(t.type.id, want.type);
        assert.equal(t.nBytes, want.data.length);
        assert.equal(t.fileOffset % alignment, 0);
        assert.deepEqual(bytes.subarray(t.fileOffset, t.fileOffset + t.nBytes), want.data);
      }
    }
  }
});

Deno.test("gguf: metadata getters name the key and the type found", () => {
  const h = parseGguf(serializeGguf({ metadata: everyType(), tensors: [] }), "m.gguf");
  assert.equal(h.metadata.number("t.u32"), 4294967295);
  assert.equal(h.metadata.number("t.absent", 7), 7);
  assert.equal(h.metadata.string("t.string"), "héllo, 世界 🌍");
  assert.deepEqual(h.metadata.numbers("t.i32s"), [1, -2, 3]);
  assert.throws(() => h.metadata.number("t.string"), /t\.string should be a number, found string/);
  assert.throws(() => h.metadata.string("t.absent"), /t\.absent is missing/);
  assert.throws(() => h.metadata.number("t.u64"), /below 2\^53/);
});

Deno.test("gguf: split models are read as one, shard by shard", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const base = `${dir}/m`;
    const f32 = (name: string, v: number) => ({
      name,
      type: GgmlType.F32,
      shape: [4],
      data: new Uint8Array(new Float32Array(4).fill(v).buffer),
    });
    const shards = [[f32("x", 1), f32("y", 2)], [f32("z", 3)]];
    for (const [i, tensors] of shards.entries()) {
      await writeGgufFile(`${base}-0000${i + 1}-of-00002.gguf`, {
        metadata: [
          ["general.architecture", gv.str("llama")],
          ["split.no", gv.u16(i)],
          ["split.count", gv.u16(2)],
          ["split.tensors.count", gv.i32(3)],
        ],
        tensors,
      });
    }
    assert.deepEqual(splitPaths(`${base}-00002-of-00002.gguf`), [
      `${base}-00001-of-00002.gguf`,
      `${base}-00002-of-00002.gguf`,
    ]);
    const m = readGgufModel(`${base}-00002-of-00002.gguf`);
    assert.equal(m.architecture, "llama");
    assert.deepEqual(m.tensors.map((t) => [t.name, t.fileIndex]), [["x", 0], ["y", 0], ["z", 1]]);
    const z = m.tensorMap.get("z")!;
    const bytes = await Deno.readFile(m.files[1]!.path);
    assert.deepEqual(
      new Float32Array(bytes.slice(z.fileOffset, z.fileOffset + 16).buffer),
      new Float32Array(4).fill(3),
    );
    await Deno.remove(`${base}-00002-of-00002.gguf`);
    assert.throws(() => readGgufModel(`${base}-00001-of-00002.gguf`), /not found/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("gguf: readGgufHeader reads headers larger than its first chunk", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const vocab = Array.from({ length: 60000 }, (_, i) => `token_${i}_${"x".repeat(i % 40)}`);
    const path = `${dir}/big.gguf`;
    await writeGgufFile(path, {
      metadata: [["tokenizer.ggml.tokens", gv.strings(vocab)]],
      tensors: [],
    });
    const h = readGgufHeader(path);
    assert.ok(h.fileSize > 1 << 21);
    assert.deepEqual(h.metadata.strings("tokenizer.ggml.tokens"), vocab);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("gguf: a missing file is named", () => {
  assert.throws(
    () => readGgufHeader("/nonexistent/dir/x.gguf"),
    /GGUF file not found: \/nonexistent\/dir\/x\.gguf/,
  );
});

Deno.test("gguf: errors are GgufError with file and offset", () => {
  const bytes = serializeGguf({ metadata: [["a", gv.u32(1)]], tensors: [] });
  bytes[0] = 0x58;
  assert.throws(() => parseGguf(bytes, "bad.gguf"), (e: unknown) => {
    assert.ok(e instanceof GgufError);
    assert.equal(e.kind, "magic");
    assert.equal(e.file, "bad.gguf");
    assert.equal(e.offset, 0);
    assert.match(e.message, /bad\.gguf: byte 0: not a GGUF file/);
    return true;
  });
});
