import assert from "node:assert/strict";
import {
  demoFileName,
  ensureDemoModel,
  isCompleteGguf,
  TRAINED_DEMO_FILE,
  trainedDemoModel,
} from "./demo.ts";
import { demoModelSpec } from "../model/synthetic.ts";

const small = {
  ...demoModelSpec(),
  nEmbd: 64,
  nLayer: 1,
  nHead: 2,
  nHeadKv: 1,
  headDim: 32,
  nFfExp: 32,
  nExpert: 4,
};

Deno.test("demo model: generated once, reused, remade when unreadable", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const logs: string[] = [];
    const o = { cacheDir: `${dir}/nested/od-moe`, spec: small, log: (m: string) => logs.push(m) };
    const path = await ensureDemoModel(o);
    assert.ok(path.startsWith(`${dir}/nested/od-moe/demo-`));
    assert.ok(isCompleteGguf(path));
    assert.equal(logs.length, 1);
    const size = (await Deno.stat(path)).size;
    assert.equal(await ensureDemoModel(o), path);
    assert.equal(logs.length, 1, "a good cached file is reused");
    await Deno.truncate(path, size - 1);
    assert.equal(isCompleteGguf(path), false);
    assert.equal(await ensureDemoModel(o), path);
    assert.equal((await Deno.stat(path)).size, size, "a truncated file is remade");
    await Deno.writeTextFile(path, "not a gguf");
    assert.equal(await ensureDemoModel(o), path);
    assert.ok(isCompleteGguf(path), "a garbage file is remade");
    assert.equal(logs.length, 3);
    const names = (await Array.fromAsync(Deno.readDir(o.cacheDir))).map((e) => e.name);
    assert.deepEqual(names, [path.split("/").pop()], "no temporary files left behind");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("demo model: the file name follows the spec", async () => {
  assert.match(await demoFileName(), /^demo-[0-9a-f]{12}\.gguf$/);
  assert.equal(await demoFileName(small), await demoFileName({ ...small }));
  assert.notEqual(await demoFileName(small), await demoFileName({ ...small, seed: 2 }));
});

Deno.test("trained demo model: found with its budget, or null when missing or cut short", async () => {
  const dir = await Deno.makeTempDir();
  try {
    assert.equal(trainedDemoModel(dir), null, "no file: the random demo is used");
    const src = await ensureDemoModel({ cacheDir: dir, spec: small });
    await Deno.copyFile(src, `${dir}/${TRAINED_DEMO_FILE}`);
    const demo = trainedDemoModel(dir);
    assert.ok(demo);
    // 1 layer × 4 experts × (gate + up + down of 64 × 32 F32)
    assert.equal(demo.expertBytes, 4 * 3 * 64 * 32 * 4);
    assert.ok(Math.abs(demo.cacheSizeGB * 2 ** 30 - demo.expertBytes / 3) < 1);
    const size = (await Deno.stat(demo.path)).size;
    await Deno.truncate(demo.path, size - 1);
    assert.equal(trainedDemoModel(dir), null, "a truncated file is not used");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
