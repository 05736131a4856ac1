import assert from "node:assert/strict";
import {
  DiskFullError,
  isNoSpaceError,
  MAX_HEADER_BYTES,
  openSafetensors,
  parseSafetensorsHeader,
  readSafetensorsHeader,
  SafetensorsError,
  serializeSafetensors,
  writeSafetensors,
} from "./mod.ts";

const enc = new TextEncoder();
const assertEquals = (actual: unknown, expected: unknown, message?: string): void =>
  assert.deepStrictEqual(actual, expected, message);

/** Runs `fn`, expecting it to throw an instance of `cls` whose message contains `text`. */
function assertThrows<T extends Error>(
  fn: () => unknown,
  cls: new (...args: never[]) => T,
  text = "",
): T {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof cls, `expected ${cls.name}, got ${e}`);
    assert.ok(e.message.includes(text), e.message);
    return e;
  }
  assert.fail(`expected ${cls.name} to be thrown`);
}

/** Like {@link assertThrows} for a promise. */
async function assertRejects<T extends Error>(
  fn: () => Promise<unknown>,
  cls: new (...args: never[]) => T,
  text = "",
): Promise<T> {
  try {
    await fn();
  } catch (e) {
    assert.ok(e instanceof cls, `expected ${cls.name}, got ${e}`);
    assert.ok(e.message.includes(text), e.message);
    return e;
  }
  assert.fail(`expected ${cls.name} to be thrown`);
}

/** A file with header text `json` (not padded) and `data` bytes after it. */
function rawFile(json: string, data: Uint8Array = new Uint8Array(0), lengthOverride?: bigint) {
  const h = enc.encode(json);
  const out = new Uint8Array(8 + h.length + data.length);
  new DataView(out.buffer).setBigUint64(0, lengthOverride ?? BigInt(h.length), true);
  out.set(h, 8);
  out.set(data, 8 + h.length);
  return out;
}

function expectError(bytes: Uint8Array, kind: string, pattern: RegExp, fileSize?: number) {
  const e = assertThrows(
    () => parseSafetensorsHeader(bytes, "x.safetensors", fileSize),
    SafetensorsError,
  );
  assertEquals(e.kind, kind, e.message);
  assert.ok(pattern.test(e.message), e.message);
  assert.ok(e.message.startsWith("x.safetensors: "), e.message);
}

Deno.test("reads the unpadded example the Hugging Face tests use", () => {
  // The 60-byte header of safetensors' own test vector, and 16 bytes of I32 data.
  const json = '{"test":{"dtype":"I32","shape":[2,2],"data_offsets":[0,16]}}';
  assertEquals(json.length, 60);
  const data = new Uint8Array(new Int32Array([1, 2, -3, 4]).buffer);
  const h = parseSafetensorsHeader(rawFile(json, data));
  assertEquals(h.headerLength, 60);
  assertEquals(h.dataOffset, 68);
  const t = h.tensorMap.get("test")!;
  assertEquals(t.dtype, "I32");
  assertEquals(t.shape, [2, 2]);
  assertEquals(t.fileOffset, 68);
  assertEquals(t.nBytes, 16);
  assertEquals(h.metadata, {});
});

Deno.test("serialize pads the header with spaces to 8 bytes and round-trips", () => {
  const a = new Uint8Array([1, 2, 3]);
  const b = new Uint8Array(new Float32Array([1.5, -2]).buffer);
  const bytes = serializeSafetensors(
    [
      { name: "a", dtype: "U8", shape: [3], data: a },
      { name: "b", dtype: "F32", shape: [1, 2], data: b },
      { name: "empty", dtype: "F16", shape: [0, 4], data: new Uint8Array(0) },
    ],
    { format: "pt", note: "ü" },
  );
  const len = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  assertEquals(len % 8, 0);
  const text = new TextDecoder().decode(bytes.subarray(8, 8 + len));
  assert.ok(text.startsWith('{"__metadata__":{"format":"pt","note":"ü"}'), text);
  assert.ok(/} *$/.test(text));
  const h = parseSafetensorsHeader(bytes);
  assertEquals(h.metadata, { format: "pt", note: "ü" });
  assertEquals(h.tensors.map((t) => t.name), ["a", "b", "empty"]);
  assertEquals([...bytes.subarray(h.tensorMap.get("a")!.fileOffset, h.dataOffset + 3)], [1, 2, 3]);
  assertEquals(h.tensorMap.get("b")!.dataOffsets, [3, 11]);
  assertEquals(h.tensorMap.get("empty")!.dataOffsets, [11, 11]);
  assertEquals(bytes.length, h.dataOffset + 11);
});

Deno.test("writeSafetensors streams chunks, renames into place, and openSafetensors maps it", async () => {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/m.safetensors`;
  let reported = 0;
  function* chunks() {
    for (let i = 0; i < 4; i++) yield new Uint8Array(1000).fill(i);
  }
  async function* asyncChunks() {
    yield new Uint8Array(3 << 20).fill(7);
    yield new Uint8Array(1 << 20).fill(8);
  }
  const written = await writeSafetensors(path, [
    { name: "w", dtype: "I16", shape: [2, 1000], data: chunks() },
    { name: "big", dtype: "U8", shape: [4 << 20], data: asyncChunks() },
  ], { metadata: { k: "v" }, onBytes: (n) => reported += n });
  const stat = await Deno.stat(path);
  assertEquals(written.size, stat.size);
  assertEquals(reported, stat.size);
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", await Deno.readFile(path)));
  assertEquals(written.sha256, Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join(""));
  assertEquals([...Deno.readDirSync(dir)].map((e) => e.name), ["m.safetensors"]);
  using f = openSafetensors(path);
  assertEquals(f.metadata, { k: "v" });
  const w = f.bytes("w");
  assertEquals(w.length, 4000);
  assertEquals([w[0], w[999], w[1000], w[3999]], [0, 0, 1, 3]);
  const big = f.bytes("big");
  assertEquals([big[0], big[(3 << 20) - 1], big[3 << 20]], [7, 7, 8]);
  assertEquals(readSafetensorsHeader(path).tensors.length, 2);
  const e = assertThrows(() => f.tensor("nope"), SafetensorsError);
  assertEquals(e.kind, "missing");
  assert.ok(/tensor nope: not in the file \(it holds: w, big\)/.test(e.message), e.message);
  f.close();
  assertEquals(w.length, 0, "views are detached on close");
});

Deno.test("the FileReader fallback gives the same bytes", async () => {
  const path = `${await Deno.makeTempDir()}/m.safetensors`;
  await writeSafetensors(path, [{ name: "x", dtype: "U8", shape: [5], data: enc.encode("hello") }]);
  using f = openSafetensors(path, { preferMmap: false });
  assertEquals(f.mapped, undefined);
  assertEquals(new TextDecoder().decode(f.bytes("x")), "hello");
});

Deno.test("a writer given the wrong number of bytes fails naming the tensor and leaves nothing", async () => {
  const dir = await Deno.makeTempDir();
  for (
    const data of [new Uint8Array(3), new Uint8Array(5), [new Uint8Array(4), new Uint8Array(1)]]
  ) {
    const e = await assertRejects(
      () =>
        writeSafetensors(`${dir}/x.safetensors`, [{ name: "t", dtype: "F32", shape: [1], data }]),
      SafetensorsError,
    );
    assertEquals(e.kind, "data");
    assert.ok(/tensor t: .*F32 \[1\] needs 4/.test(e.message), e.message);
  }
  assertEquals([...Deno.readDirSync(dir)].length, 0);
  assertThrows(
    () =>
      serializeSafetensors([
        { name: "t", dtype: "U8", shape: [1], data: new Uint8Array(1) },
        { name: "t", dtype: "U8", shape: [1], data: new Uint8Array(1) },
      ]),
    SafetensorsError,
    "tensor t: given twice",
  );
  assertThrows(
    () =>
      serializeSafetensors([{
        name: "t",
        dtype: "Q4" as "U8",
        shape: [1],
        data: new Uint8Array(1),
      }]),
    SafetensorsError,
    'unknown dtype "Q4"',
  );
});

Deno.test("an aborted write removes its temporary file and throws the reason", async () => {
  const dir = await Deno.makeTempDir();
  const ac = new AbortController();
  function* chunks() {
    yield new Uint8Array(2 << 20);
    ac.abort(new Error("stop"));
    yield new Uint8Array(2 << 20);
  }
  await assertRejects(
    () =>
      writeSafetensors(`${dir}/x.safetensors`, [{
        name: "t",
        dtype: "U8",
        shape: [4 << 20],
        data: chunks(),
      }], {
        signal: ac.signal,
      }),
    Error,
    "stop",
  );
  assertEquals([...Deno.readDirSync(dir)].length, 0);
});

Deno.test("ENOSPC is recognised", async () => {
  let caught: unknown;
  try {
    const f = await Deno.open("/dev/full", { write: true });
    try {
      await f.write(new Uint8Array(16));
    } finally {
      f.close();
    }
  } catch (e) {
    caught = e;
  }
  if (caught === undefined) return; // no /dev/full here
  assert.ok(isNoSpaceError(caught), String(caught));
  assert.ok(!isNoSpaceError(new Error("other")));
});

Deno.test({
  name: "a full disk gives DiskFullError naming the file and leaves no partial file",
  ignore: Deno.build.os !== "linux" || Deno.uid() !== 0,
  async fn() {
    const dir = await Deno.makeTempDir();
    const mount = new Deno.Command("mount", {
      args: ["-t", "tmpfs", "-o", "size=1m", "tmpfs", dir],
    });
    if (!(await mount.output()).success) return; // not allowed to mount here
    try {
      const e = await assertRejects(
        () =>
          writeSafetensors(`${dir}/big.safetensors`, [{
            name: "t",
            dtype: "U8",
            shape: [4 << 20],
            data: new Uint8Array(4 << 20),
          }]),
        DiskFullError,
      );
      assert.ok(e.message.includes(`${dir}/big.safetensors`), e.message);
      assert.ok(e.message.includes("no space left on device"), e.message);
      assertEquals([...Deno.readDirSync(dir)].length, 0);
    } finally {
      await new Deno.Command("umount", { args: [dir] }).output();
    }
  },
});

Deno.test("header length: past the file, over the cap, too short", () => {
  expectError(new Uint8Array(5), "truncated", /too short for the 8-byte header length/);
  expectError(
    rawFile("{}", undefined, 1000n),
    "header_size",
    /runs past the end of the 10-byte file/,
  );
  expectError(
    rawFile("{}", undefined, BigInt(MAX_HEADER_BYTES) + 1n),
    "header_size",
    /larger than the 100000000-byte limit/,
  );
  expectError(rawFile("{}", undefined, 2n ** 63n), "header_size", /larger than/);
  expectError(rawFile(" {}"), "json", /must start with "\{"/);
  expectError(rawFile("{", undefined, 1n), "json", /too short/);
  // A header longer than the bytes given (a caller passing only a prefix).
  expectError(rawFile("{}").subarray(0, 9), "truncated", /only 9 were given/, 10);
});

Deno.test("malformed JSON and entries", () => {
  expectError(rawFile("{nope}"), "json", /not valid JSON/);
  expectError(rawFile("{}", new Uint8Array(1)), "offsets", /1 bytes belong to no tensor/);
  expectError(rawFile("[1]   "), "json", /must start/);
  expectError(rawFile('{"a":1} x'), "json", /not valid JSON/);
  const bad = rawFile('{"a":"é"}');
  bad[bad.length - 3] = 0xff;
  expectError(bad, "json", /not valid UTF-8/);
  expectError(rawFile('{"__metadata__":[]}'), "metadata", /must be an object of strings/);
  expectError(rawFile('{"__metadata__":{"k":1}}'), "metadata", /__metadata__\.k must be a string/);
  expectError(rawFile('{"t":5}'), "entry", /tensor t: entry must be an object/);
  expectError(
    rawFile('{"t":{"dtype":"Q4_K","shape":[1],"data_offsets":[0,1]}}'),
    "dtype",
    /tensor t: unknown dtype "Q4_K"/,
  );
  expectError(
    rawFile('{"t":{"dtype":"U8","shape":1,"data_offsets":[0,1]}}'),
    "shape",
    /shape must be a list/,
  );
  expectError(
    rawFile('{"t":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}}'),
    "shape",
    /non-negative integers/,
  );
  expectError(
    rawFile('{"t":{"dtype":"U8","shape":[1.5],"data_offsets":[0,1]}}'),
    "shape",
    /non-negative/,
  );
  expectError(
    rawFile('{"t":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,1]}}'),
    "shape",
    /too large/,
  );
  expectError(
    rawFile('{"t":{"dtype":"U8","shape":[1],"data_offsets":[0]}}'),
    "offsets",
    /\[begin, end\]/,
  );
  expectError(rawFile('{"t":{"dtype":"U8","shape":[1]}}'), "offsets", /\[begin, end\]/);
});

Deno.test("offsets must match the shape and tile the data section", () => {
  const d = (n: number) => new Uint8Array(n);
  expectError(
    rawFile('{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}', d(4)),
    "offsets",
    /tensor t: data_offsets \[0, 4\] hold 4 bytes but F32 \[2\] needs 8/,
  );
  expectError(
    rawFile('{"t":{"dtype":"U8","shape":[0],"data_offsets":[4,0]}}', d(4)),
    "offsets",
    /end before/,
  );
  expectError(
    rawFile('{"t":{"dtype":"U8","shape":[8],"data_offsets":[0,8]}}', d(4)),
    "offsets",
    /end past the 4-byte data section \(file truncated\?\)/,
  );
  expectError(
    rawFile(
      '{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}',
      d(6),
    ),
    "offsets",
    /tensor b: data_offsets \[2,6\] overlap tensor a/,
  );
  expectError(
    rawFile('{"a":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}}', d(4)),
    "offsets",
    /tensor a: .*leave a gap/,
  );
  expectError(
    rawFile('{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}', d(4)),
    "offsets",
    /2 bytes belong to no tensor/,
  );
  // Out of order in the header is fine as long as the bytes are tiled.
  const ok = parseSafetensorsHeader(
    rawFile(
      '{"b":{"dtype":"U8","shape":[2],"data_offsets":[2,4]},"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}',
      d(4),
    ),
  );
  assertEquals(ok.tensors.map((t) => t.name), ["b", "a"]);
});

Deno.test("duplicate names are rejected even though JSON.parse would keep the last", () => {
  expectError(
    rawFile(
      '{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}',
      new Uint8Array(2),
    ),
    "duplicate",
    /tensor a: appears twice/,
  );
  expectError(
    rawFile(
      '{"__metadata__":{"a":"1"},"x\\"y":{"dtype":"U8","shape":[0],"data_offsets":[0,0]},"x\\u0022y":{}}',
    ),
    "duplicate",
    /tensor x"y: appears twice/,
  );
  // Keys nested inside entries do not count.
  parseSafetensorsHeader(
    rawFile(
      '{"__metadata__":{"a":"{","b":"}"},"a":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}}',
    ),
  );
});

Deno.test("readSafetensorsHeader names a missing file", () => {
  assertThrows(
    () => readSafetensorsHeader("/nonexistent/x.safetensors"),
    Deno.errors.NotFound,
    "/nonexistent/x.safetensors",
  );
});
