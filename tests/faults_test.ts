/**
 * Faults on disk while a model is served: expert files truncated, replaced,
 * deleted or corrupted under a running engine give errors that name the
 * file, the layer and the expert (never a SIGBUS, never a wrong answer);
 * restoring the file makes the next request right again. `deno task verify`
 * finds the same damage before serving.
 */

import assert from "node:assert/strict";
import { gpuTest } from "../dev/gpu.ts";
import { loadModel, NonFiniteError } from "../src/model/model.ts";
import { generate } from "../src/generate/session.ts";
import { convertGguf } from "../src/convert/convert.ts";
import { verifyModel } from "../src/convert/verify.ts";
import { ExpertDirSource } from "../src/experts/expert_dir_source.ts";
import { ExpertReadError } from "../src/experts/source.ts";
import { expertLayout, expertSliceRange } from "../src/experts/layout.ts";
import { readGgufModel } from "../src/gguf/reader.ts";
import { fixtureModel } from "../dev/fixtures.ts";

const FIXTURE = { arch: "qwen3moe", type: "F32", shape: "a" } as const;
const PROMPT = [11, 22, 33, 44, 55, 66];

async function withConverted(fn: (dir: string, src: string) => Promise<void>): Promise<void> {
  const src = await fixtureModel(FIXTURE);
  const dir = await Deno.makeTempDir({ prefix: "od-moe-faults-" });
  try {
    await convertGguf({ input: src, output: `${dir}/out`, outputDtype: "keep", sync: false });
    await fn(`${dir}/out`, src);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

function readError(e: unknown, file: string, layer: number, expert: number): true {
  assert.ok(e instanceof ExpertReadError, `expected ExpertReadError, got ${e}`);
  assert.equal(e.file, file);
  assert.equal(e.layer, layer);
  assert.equal(e.expert, expert);
  assert.match(e.message, new RegExp(`expert ${expert} of layer ${layer}`));
  return true;
}

Deno.test({
  name:
    "expert dir: a file truncated, replaced or deleted while mapped is an error naming it (no SIGBUS); restored, it reads again",
  sanitizeResources: false,
  async fn() {
    await withConverted(async (out) => {
      using src = new ExpertDirSource(`${out}/experts`);
      const layer = src.layers[0]!.layer;
      const path = src.dir.path(layer, 1);
      const good = src.expertParts(layer, 1).map((v) => v.slice());
      const saved = await Deno.readFile(path);
      // the issue's case: 1,088 bytes cut off the end of a mapped file
      await Deno.truncate(path, saved.length - 1088);
      assert.throws(() => src.expertParts(layer, 1), (e) => readError(e, path, layer, 1));
      await Deno.remove(path);
      assert.throws(() => src.expertParts(layer, 1), /gone/);
      // another expert's file put in its place: its header says so
      await Deno.copyFile(src.dir.path(layer, 2), path);
      assert.throws(() => src.expertParts(layer, 1), (e) => readError(e, path, layer, 1));
      await Deno.writeFile(path, saved);
      assert.deepEqual(src.expertParts(layer, 1), good);
    });
  },
});

gpuTest({
  name:
    "expert dir: a corrupt file fails its manifest SHA-256 when first loaded; verify names it; restored, the tokens are right",
  sanitizeResources: false,
  async fn(gpu) {
    await withConverted(async (out, gguf) => {
      const clean = await loadModel({ model: gguf, gpu, nCtx: 64 });
      const want = (await generate(clean, PROMPT, { maxTokens: 6 })).tokens;
      clean.close();
      assert.deepEqual((await verifyModel(out)).problems, []);
      const dir = new ExpertDirSource(`${out}/experts`);
      const layer = dir.layers[0]!;
      // damage every expert of the first MoE layer, in the tensor data
      const saved = new Map<string, Uint8Array>();
      for (let e = 0; e < layer.nExpert; e++) {
        const p = dir.dir.path(layer.layer, e);
        const bytes = await Deno.readFile(p);
        saved.set(p, bytes.slice());
        bytes[bytes.length - 5]! ^= 0x40;
        await Deno.writeFile(p, bytes);
      }
      dir.close();
      const report = await verifyModel(out);
      assert.equal(report.problems.length, layer.nExpert);
      assert.match(report.problems[0]!.detail, /SHA-256/);
      assert.ok(saved.has(report.problems[0]!.file));
      const model = await loadModel({
        baseWeights: `${out}/base_model`,
        expertDir: `${out}/experts`,
        gpu,
        nCtx: 64,
        cacheSizeGB: 0,
      });
      try {
        await assert.rejects(() => generate(model, PROMPT, { maxTokens: 6 }), (e: unknown) => {
          assert.ok(e instanceof ExpertReadError, String(e));
          assert.equal(e.layer, layer.layer);
          assert.ok(saved.has(e.file), e.file);
          assert.match(e.message, /SHA-256 is [0-9a-f]{64}, the manifest says/);
          return true;
        });
        for (const [p, b] of saved) await Deno.writeFile(p, b);
        assert.deepEqual((await generate(model, PROMPT, { maxTokens: 6 })).tokens, want);
      } finally {
        model.close();
      }
    });
  },
});

/** Writes +Inf into the first weight of every expert's down projection of the first MoE layer. */
async function poison(path: string): Promise<{ layer: number; restore: () => Promise<void> }> {
  const layout = expertLayout(readGgufModel(path))[0]!;
  const down = layout.tensors.find((t) => t.role === "down" && t.kind === "weight")!;
  assert.equal(down.type.name, "F32");
  const file = await Deno.open(path, { read: true, write: true });
  const saved: [number, Uint8Array][] = [];
  try {
    for (let e = 0; e < layout.nExpert; e++) {
      const { offset } = expertSliceRange(down, e);
      const old = new Uint8Array(4);
      await file.seek(offset, Deno.SeekMode.Start);
      await file.read(old);
      saved.push([offset, old]);
      await file.seek(offset, Deno.SeekMode.Start);
      await file.write(new Uint8Array(new Float32Array([Infinity]).buffer));
    }
  } finally {
    file.close();
  }
  return {
    layer: layout.layer,
    restore: async () => {
      using f = await Deno.open(path, { write: true });
      for (const [offset, bytes] of saved) {
        await f.seek(offset, Deno.SeekMode.Start);
        await f.write(bytes);
      }
    },
  };
}

for (const cacheSizeGB of [4, 0]) {
  gpuTest({
    name:
      `gguf (cache ${cacheSizeGB} GB): an infinite expert weight ends the generation with an error naming the layer, not token 0; restored, the next request is right`,
    sanitizeResources: false,
    async fn(gpu) {
      const src = await fixtureModel(FIXTURE);
      const dir = await Deno.makeTempDir({ prefix: "od-moe-faults-" });
      const copy = `${dir}/model.gguf`;
      try {
        await Deno.copyFile(src, copy);
        const clean = await loadModel({ model: copy, gpu, nCtx: 64 });
        const want = (await generate(clean, PROMPT, { maxTokens: 6 })).tokens;
        clean.close();
        const bad = await poison(copy);
        const verified = await verifyModel(copy);
        assert.ok(verified.problems.length > 0, "verify finds the infinity");
        assert.match(verified.problems[0]!.detail, /ffn_down_exps.*Infinity/);
        // loaded after the damage: the pool holds the bad bytes
        const model = await loadModel({ model: copy, gpu, nCtx: 64, cacheSizeGB });
        try {
          await assert.rejects(() => generate(model, PROMPT, { maxTokens: 6 }), (e: unknown) => {
            assert.ok(e instanceof NonFiniteError, String(e));
            assert.equal(e.layer, bad.layer);
            assert.match(e.message, new RegExp(`layer ${bad.layer}\\b`));
            return true;
          });
          await assert.rejects(() => model.forward(PROMPT), NonFiniteError);
          model.reset();
          await bad.restore();
          assert.deepEqual((await generate(model, PROMPT, { maxTokens: 6 })).tokens, want);
        } finally {
          model.close();
        }
      } finally {
        await Deno.remove(dir, { recursive: true });
      }
    },
  });
}

Deno.test({
  name: "verify: exit 0 for an intact model, 1 naming the damaged file, 2 for a bad path",
  sanitizeResources: false,
  async fn() {
    await withConverted(async (out) => {
      const run = async (arg: string) => {
        const o = await new Deno.Command(Deno.execPath(), {
          args: ["task", "-q", "verify", arg],
          cwd: new URL("../", import.meta.url).pathname,
          stdout: "piped",
          stderr: "piped",
        }).output();
        return {
          code: o.code,
          text: new TextDecoder().decode(o.stdout) + new TextDecoder().decode(o.stderr),
        };
      };
      const ok = await run(out);
      assert.equal(ok.code, 0, ok.text);
      assert.match(ok.text, /^OK /m);
      const victim = `${out}/experts/${
        [...Deno.readDirSync(`${out}/experts`)].find((d) => d.isDirectory)!.name
      }`;
      const file = `${victim}/${[...Deno.readDirSync(victim)][0]!.name}`;
      const bytes = await Deno.readFile(file);
      await Deno.writeFile(file, bytes.subarray(0, bytes.length - 1088));
      const bad = await run(`${out}/experts`);
      assert.equal(bad.code, 1, bad.text);
      assert.ok(bad.text.includes(`BAD ${file}`), bad.text);
      assert.equal((await run(`${out}/nope`)).code, 2);
    });
  },
});
