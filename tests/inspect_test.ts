import assert from "node:assert/strict";
import { writeGgufFile } from "../src/gguf/writer.ts";
import { gv } from "../src/gguf/value.ts";
import { GgmlType } from "../src/gguf/types.ts";

const script = new URL("../scripts/inspect.ts", import.meta.url).pathname;

async function inspect(...args: string[]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", script, ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

async function moeFile(path: string) {
  const f32 = (name: string, shape: number[]) => ({
    name,
    type: GgmlType.F32,
    shape,
    data: new Uint8Array(shape.reduce((a, b) => a * b, 4)),
  });
  await writeGgufFile(path, {
    metadata: [
      ["general.architecture", gv.str("qwen3moe")],
      ["qwen3moe.expert_count", gv.u32(3)],
      ["qwen3moe.block_count", gv.u32(2)],
    ],
    tensors: [
      f32("token_embd.weight", [8, 10]),
      ...[0, 1].flatMap((l) => [
        f32(`blk.${l}.ffn_gate_exps.weight`, [8, 4, 3]),
        f32(`blk.${l}.ffn_up_exps.weight`, [8, 4, 3]),
        f32(`blk.${l}.ffn_down_exps.weight`, [4, 8, 3]),
      ]),
    ],
  });
}

Deno.test("inspect: prints the expert layout of each layer, as text and JSON", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await moeFile(`${dir}/m.gguf`);
    const text = await inspect(`${dir}/m.gguf`);
    assert.equal(text.code, 0, text.stderr);
    assert.match(text.stdout, /architecture qwen3moe/);
    assert.match(text.stdout, /layer +0: 3 experts × 384 B/);
    assert.match(text.stdout, /layer +1: 3 experts × 384 B/);
    const json = await inspect(`${dir}/m.gguf`, "--json");
    const r = JSON.parse(json.stdout);
    assert.equal(r.expert_layout.length, 2);
    assert.equal(r.expert_layout[1].bytes_per_expert, 3 * 128);
    assert.deepEqual(
      r.expert_layout[0].slices.map((s: { slice_shape: number[] }) => s.slice_shape),
      [
        [8, 4],
        [8, 4],
        [4, 8],
      ],
    );
    assert.equal(r.expert_bytes, 2 * 3 * 384);
    assert.equal(r.hyperparameters.expert_count, "3");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("inspect: a corrupt file exits non-zero with the reader's error", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await moeFile(`${dir}/m.gguf`);
    const bytes = await Deno.readFile(`${dir}/m.gguf`);
    await Deno.writeFile(`${dir}/cut.gguf`, bytes.subarray(0, 200));
    const r = await inspect(`${dir}/cut.gguf`);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /cut\.gguf: byte \d+: /);
    const missing = await inspect(`${dir}/nope.gguf`);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /not found: .*nope\.gguf/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
