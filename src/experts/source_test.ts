import assert from "node:assert/strict";
import { type GgufTensorSpec, writeGgufFile } from "../gguf/writer.ts";
import { GgmlType } from "../gguf/types.ts";
import { gv } from "../gguf/value.ts";
import { readGgufModel } from "../gguf/reader.ts";
import { Rng } from "../util/rng.ts";
import { ExpertReadError, GgufExpertSource } from "./source.ts";

const N_EXPERT = 7;
// Layer 0 is dense; layers 1–2 live in shard 1, layer 3 in shard 2.
const SHARDS = [[1, 2], [3]];
// Per expert: gate, up (F32 [32, 6]), down (Q8_0 [32, 5]: 170 bytes, not a
// multiple of 4) and a down bias (F32 [32]).
const PARTS = [
  { suffix: "ffn_gate_exps.weight", type: GgmlType.F32, shape: [32, 6], bytes: 32 * 6 * 4 },
  { suffix: "ffn_up_exps.weight", type: GgmlType.F32, shape: [32, 6], bytes: 32 * 6 * 4 },
  { suffix: "ffn_down_exps.weight", type: GgmlType.Q8_0, shape: [32, 5], bytes: 34 * 5 },
  { suffix: "ffn_down_exps.bias", type: GgmlType.F32, shape: [32], bytes: 32 * 4 },
];

interface Fixture {
  dir: string;
  path: string;
  shardPaths: string[];
  /** `[layer][part]`: the whole expert stack's bytes. */
  data: Map<number, Uint8Array[]>;
}

async function makeFixture(): Promise<Fixture> {
  const dir = await Deno.makeTempDir({ prefix: "od-moe-source-" });
  const rng = new Rng(7);
  const data = new Map<number, Uint8Array[]>();
  const shardPaths: string[] = [];
  for (const [i, layers] of SHARDS.entries()) {
    const tensors: GgufTensorSpec[] = [{
      name: `pad.${i}`,
      type: GgmlType.F32,
      shape: [3],
      data: new Uint8Array(12).fill(0xaa),
    }];
    for (const layer of layers) {
      const stacks = PARTS.map((p) => {
        const bytes = Uint8Array.from({ length: p.bytes * N_EXPERT }, () => rng.int(256));
        tensors.push({
          name: `blk.${layer}.${p.suffix}`,
          type: p.type,
          shape: [...p.shape, N_EXPERT],
          data: bytes,
        });
        return bytes;
      });
      data.set(layer, stacks);
    }
    const path = `${dir}/m-0000${i + 1}-of-00002.gguf`;
    await writeGgufFile(path, {
      metadata: [
        ["general.architecture", gv.str("qwen3moe")],
        ["split.no", gv.u16(i)],
        ["split.count", gv.u16(2)],
      ],
      tensors,
    });
    shardPaths.push(path);
  }
  return { dir, path: shardPaths[0]!, shardPaths, data };
}

function expected(f: Fixture, layer: number, e: number): Uint8Array[] {
  return PARTS.map((p, i) => f.data.get(layer)![i]!.subarray(e * p.bytes, (e + 1) * p.bytes));
}

function thrown(fn: () => unknown): unknown {
  try {
    fn();
  } catch (e) {
    return e;
  }
  assert.fail("expected an error");
}

async function withFixture(fn: (f: Fixture) => Promise<void> | void): Promise<void> {
  const f = await makeFixture();
  try {
    await fn(f);
  } finally {
    await Deno.remove(f.dir, { recursive: true });
  }
}

Deno.test("source: every expert's parts are zero-copy views equal to its slices, split files included", () =>
  withFixture((f) => {
    using src = GgufExpertSource.open(f.path);
    assert.deepEqual(src.layers.map((l) => [l.layer, l.nExpert]), [[1, 7], [2, 7], [3, 7]]);
    assert.deepEqual(
      src.layers[0]!.tensors.map((t) => `${t.role}.${t.kind}`),
      ["gate.weight", "up.weight", "down.bias", "down.weight"],
    );
    for (const l of src.layers) {
      for (let e = 0; e < N_EXPERT; e++) {
        const parts = src.expertParts(l.layer, e);
        const want = expected(f, l.layer, e);
        // Layout order: gate, up, then down's bias before its weight (kind order).
        assert.deepEqual(parts, [want[0], want[1], want[3], want[2]], `layer ${l.layer} e ${e}`);
        assert.ok(parts.every((p) => p.buffer === parts[0]!.buffer), "views of one mapping");
        const cached = src.residentBytes(l.layer, e);
        assert.equal(cached, l.bytesPerExpert, "just written and read: in the page cache");
      }
    }
  }));

Deno.test("source: the FsFile fallback reads the same bytes", () =>
  withFixture((f) => {
    using mapped = GgufExpertSource.open(f.path);
    using read = GgufExpertSource.open(f.path, { preferMmap: false });
    for (const layer of [1, 3]) {
      for (const e of [0, 6]) {
        assert.deepEqual(read.expertParts(layer, e), mapped.expertParts(layer, e));
      }
    }
    assert.equal(read.residentBytes(1, 0), undefined);
  }));

Deno.test("source: a deleted shard fails naming file, layer and expert; the rest still reads, and a restored file is retried", () =>
  withFixture(async (f) => {
    const model = readGgufModel(f.path);
    const saved = await Deno.readFile(f.shardPaths[1]!);
    await Deno.remove(f.shardPaths[1]!);
    using src = new GgufExpertSource(model);
    const err = thrown(() => src.expertParts(3, 4));
    assert.ok(err instanceof ExpertReadError);
    assert.equal(err.file, f.shardPaths[1]);
    assert.equal(err.layer, 3);
    assert.equal(err.expert, 4);
    assert.match(err.message, /expert 4 of layer 3/);
    assert.match(err.message, /m-00002-of-00002\.gguf/);
    assert.deepEqual(src.expertParts(2, 4)[0], expected(f, 2, 4)[0]);
    await Deno.writeFile(f.shardPaths[1]!, saved);
    assert.deepEqual(src.expertParts(3, 4)[0], expected(f, 3, 4)[0]);
  }));

Deno.test("source: a shard truncated after mapping fails without touching lost pages", () =>
  withFixture(async (f) => {
    using src = GgufExpertSource.open(f.path);
    assert.deepEqual(src.expertParts(3, 0)[0], expected(f, 3, 0)[0]); // maps shard 2
    const size = (await Deno.stat(f.shardPaths[1]!)).size;
    // The last tensor is layer 3's down bias: cut into expert 6's slice only.
    await Deno.truncate(f.shardPaths[1]!, size - 64);
    const err = thrown(() => src.expertParts(3, 6));
    assert.ok(err instanceof ExpertReadError);
    assert.equal(err.file, f.shardPaths[1]);
    assert.equal(err.layer, 3);
    assert.equal(err.expert, 6);
    assert.equal(err.tensor, "blk.3.ffn_down_exps.bias");
    assert.match(err.message, /truncated/);
    assert.deepEqual(src.expertParts(3, 5), [
      ...expected(f, 3, 5).slice(0, 2),
      expected(f, 3, 5)[3],
      expected(f, 3, 5)[2],
    ]);
  }));

Deno.test("source: a shard truncated before it is opened fails the same way", () =>
  withFixture(async (f) => {
    const model = readGgufModel(f.path);
    const size = (await Deno.stat(f.shardPaths[1]!)).size;
    await Deno.truncate(f.shardPaths[1]!, size - 64);
    for (const preferMmap of [true, false]) {
      using src = new GgufExpertSource(model, { preferMmap });
      assert.throws(() => src.expertParts(3, 6), (e: unknown) => {
        assert.ok(e instanceof ExpertReadError);
        assert.deepEqual([e.file, e.layer, e.expert], [f.shardPaths[1], 3, 6]);
        return true;
      });
      assert.deepEqual(src.expertParts(3, 1)[1], expected(f, 3, 1)[1]);
    }
  }));

Deno.test("source: bad layer or expert ids are RangeErrors naming the valid ones", () =>
  withFixture((f) => {
    using src = GgufExpertSource.open(f.path);
    assert.throws(
      () => src.expertParts(0, 0),
      /layer 0 has no routed experts \(expert layers: 1, 2, 3\)/,
    );
    assert.throws(() => src.expertParts(1, 7), /expert 7 is out of range \[0, 7\)/);
    src.close();
    assert.throws(() => src.expertParts(1, 0), Deno.errors.BadResource);
  }));

Deno.test("source: a shard deleted or replaced after mapping: an error, then the file on disk is served", () =>
  withFixture(async (f) => {
    using src = GgufExpertSource.open(f.path);
    assert.deepEqual(src.expertParts(3, 2)[0], expected(f, 3, 2)[0]); // maps shard 2
    const t = readGgufModel(f.path).tensorMap.get("blk.3.ffn_gate_exps.weight")!;
    const saved = await Deno.readFile(f.shardPaths[1]!);
    await Deno.remove(f.shardPaths[1]!);
    // the old mapping still holds the bytes, but what is served must be what is on disk
    const err = thrown(() => src.expertParts(3, 2));
    assert.ok(err instanceof ExpertReadError);
    assert.deepEqual([err.file, err.layer, err.expert], [f.shardPaths[1], 3, 2]);
    assert.match(err.message, /gone/);
    // restored under the same name with other bytes for expert 2: a new file, read afresh
    const changed = saved.slice();
    const slice = expected(f, 3, 2)[0]!.length;
    const shardStart = t.fileOffset + 2 * slice;
    changed.fill(7, shardStart, shardStart + slice);
    await Deno.writeFile(`${f.shardPaths[1]}.new`, changed);
    await Deno.rename(`${f.shardPaths[1]}.new`, f.shardPaths[1]!);
    assert.deepEqual(src.expertParts(3, 2)[0], new Uint8Array(slice).fill(7));
    assert.deepEqual(src.expertParts(3, 3)[0], expected(f, 3, 3)[0]);
  }));
