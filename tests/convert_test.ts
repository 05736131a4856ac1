/**
 * The converter end to end: generated models of every supported
 * architecture converted in `keep` and `float16` (and `bfloat16`/`float32`
 * once), read back through the engine-facing reader and compared with the
 * GGUF bytes and the CPU dequantisers; `--base-only` checked against the
 * architecture's tensor plan; `--dry-run` on every model, on a corrupt file
 * and on an unsupported architecture; the CLI killed (SIGKILL, SIGINT)
 * mid-run and rerun; resume, refusal of foreign or mismatched directories,
 * sharding and a full disk.
 */

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import {
  fixtureModel,
  type FixtureOptions,
  fixtureSpec,
  type FixtureType,
} from "../dev/fixtures.ts";
import { referenceUnavailableReason } from "../dev/ref/llama_cpp.ts";
import { type GgufModelFile, readGgufModel } from "../src/gguf/reader.ts";
import { dequantize } from "../src/gguf/dequant.ts";
import { f32ToBf16Array, f32ToF16Array } from "../src/gguf/f16.ts";
import { GgmlType } from "../src/gguf/types.ts";
import { gv } from "../src/gguf/value.ts";
import { writeGgufFile } from "../src/gguf/writer.ts";
import { expertLayout, expertSliceRange } from "../src/experts/layout.ts";
import type { ExpertLayerShape } from "../src/experts/source.ts";
import { archSpec, supportedArchitectures } from "../src/model/registry.ts";
import { checkTensorPlan } from "../src/model/weights.ts";
import { SYNTHETIC_ARCHS, type SyntheticArch, syntheticModel } from "../src/model/synthetic.ts";
import { isTemporaryName } from "../src/safetensors/writer.ts";
import { readSafetensorsHeader } from "../src/safetensors/reader.ts";
import { DiskFullError, SafetensorsError } from "../src/safetensors/errors.ts";
import { convertGguf, type Manifest } from "../src/convert/convert.ts";
import {
  type BaseModel,
  openBaseModel,
  openConvertedModel,
  openExpertDir,
} from "../src/converted/reader.ts";
import { ConvertedModelError, ConvertError } from "../src/convert/errors.ts";
import { type OutputDtype, planConversion } from "../src/convert/plan.ts";
import { encodeGgufValue } from "../src/converted/values.ts";

const MAIN = new URL("../src/convert/main.ts", import.meta.url).pathname;
const dec = new TextDecoder();

/** The quantised type to test with: a real K-quant file when llama.cpp's quantiser is available. */
const QUANT: FixtureType = referenceUnavailableReason() === null ? "Q4_K_M" : "F16";

async function cli(...args: string[]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

function sha256(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

/** Every file under `dir`, relative paths, sorted. */
function walk(dir: string, prefix = ""): string[] {
  const out: string[] = [];
  for (const e of Deno.readDirSync(`${dir}/${prefix}`)) {
    const rel = prefix ? `${prefix}/${e.name}` : e.name;
    if (e.isDirectory) out.push(...walk(dir, rel));
    else out.push(rel);
  }
  return out.sort();
}

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

/** Reads a GGUF tensor's bytes (a copy). */
function ggufBytes(
  model: GgufModelFile,
  offset: number,
  length: number,
  fileIndex = 0,
): Uint8Array {
  const f = Deno.openSync(model.files[fileIndex]!.path);
  try {
    const buf = new Uint8Array(length);
    f.seekSync(offset, Deno.SeekMode.Start);
    let got = 0;
    while (got < length) got += f.readSync(buf.subarray(got))!;
    return buf;
  } finally {
    f.close();
  }
}

/** What the converter should write for a tensor in `dtype`, from the GGUF bytes. */
function expected(
  src: Uint8Array,
  type: number,
  shape: readonly number[],
  dtype: OutputDtype,
): Uint8Array {
  const n = shape.reduce((a, b) => a * b, 1);
  if (dtype === "keep") return src;
  const target = shape.length === 1 ? "float32" : dtype;
  if (target === "float16" && type === GgmlType.F16) return src;
  if (target === "bfloat16" && type === GgmlType.BF16) return src;
  if (target === "float32" && type === GgmlType.F32) return src;
  const values = dequantize(type, src, n);
  if (target === "float32") return new Uint8Array(values.buffer);
  const half = target === "float16" ? f32ToF16Array(values) : f32ToBf16Array(values);
  return new Uint8Array(half.buffer);
}

/** Checks a converted directory against its GGUF, tensor by tensor and expert by expert. */
function verifyConversion(
  gguf: string,
  dir: string,
  dtype: OutputDtype,
  baseOnly = false,
  others: string[] = [],
) {
  const model = readGgufModel(gguf);
  const spec = archSpec(model.architecture);
  const config = spec.readConfig(model.metadata);
  const plan = spec.tensorPlan(config);
  using converted = openConvertedModel(dir);
  const base = converted.base;

  // Hyperparameters and metadata (tokenizer and chat template included) survive.
  assert.deepEqual(spec.readConfig(converted.metadata), config);
  for (const [key, value] of model.metadata.entries) {
    if (key.startsWith("split.") || key === "general.alignment") continue;
    const got = base.metadata.get(key);
    assert.ok(got, `metadata ${key} lost`);
    assert.deepEqual(encodeGgufValue(got), encodeGgufValue(value), `metadata ${key}`);
  }
  const template = model.metadata.string("tokenizer.chat_template", null);
  assert.equal(base.tokenizerJson.chat_template, template);

  // Every base tensor of the architecture's plan is in the base, with its shape.
  checkTensorPlan(base, plan.filter((e) => e.role === "base"));
  for (const e of plan.filter((e) => e.role === "expert")) {
    assert.ok(!base.tensorMap.has(e.name), `${e.name} must not be in the base`);
  }
  const nonExpert = model.tensors.filter((t) => !/_exps\./.test(t.name));
  assert.equal(base.tensors.length, nonExpert.length);
  for (const t of nonExpert) {
    const got = base.tensorMap.get(t.name)!;
    assert.deepEqual(got.shape, t.shape, t.name);
    const want = expected(
      ggufBytes(model, t.fileOffset, t.nBytes, t.fileIndex),
      t.type.id,
      t.shape,
      dtype,
    );
    const bytes = base.bytes(got);
    assert.equal(bytes.length, want.length, t.name);
    assert.ok(sha256(bytes) === sha256(want), `${t.name}: bytes differ (${dtype})`);
    if (dtype === "keep") assert.equal(got.type.id, t.type.id, t.name);
  }

  if (baseOnly) {
    assert.equal(converted.experts, undefined);
    assert.ok(!exists(`${dir}/experts`));
    return;
  }
  const experts = converted.experts!;
  // The layers describe themselves as an expert source does (src/experts/source.ts).
  const shapes: readonly ExpertLayerShape[] = experts.layers;
  assert.deepEqual(shapes.map((l) => l.layer), expertLayout(model).map((l) => l.layer));
  for (const layer of expertLayout(model)) {
    const l = experts.layout(layer.layer);
    assert.equal(l.nExpert, layer.nExpert);
    for (let e = 0; e < layer.nExpert; e++) {
      using file = experts.open(layer.layer, e);
      assert.match(
        file.path,
        new RegExp(
          `layer_${String(layer.layer).padStart(3, "0")}/expert_${
            String(e).padStart(3, "0")
          }\\.safetensors$`,
        ),
      );
      const parts: Uint8Array[] = [];
      for (const t of layer.tensors) {
        const got = file.tensor(t.role, t.kind)!;
        assert.equal(got.name, t.name);
        assert.equal(got.fileTensor, `ffn_${t.role}.${t.kind}`);
        assert.deepEqual(got.sliceShape, t.sliceShape);
        assert.equal(got.sliceBytes, got.bytes.length);
        const r = expertSliceRange(t, e);
        const want = expected(
          ggufBytes(model, r.offset, r.length, t.fileIndex),
          t.type.id,
          t.sliceShape,
          dtype,
        );
        assert.ok(
          sha256(got.bytes) === sha256(want),
          `layer ${layer.layer} expert ${e} ${t.name} (${dtype})`,
        );
        parts.push(got.bytes);
      }
      // One contiguous read per expert.
      assert.equal(file.data.length, parts.reduce((s, p) => s + p.length, 0));
      assert.ok(file.gate && file.up && file.down);
    }
  }
  // The manifest's checksums match the files.
  for (const f of converted.manifest.files) {
    assert.equal(sha256(Deno.readFileSync(`${dir}/${f.path}`)), f.sha256, f.path);
  }
  // Nothing else is there: no journal, no temporary files.
  const files = walk(dir).filter((f) => !others.includes(f));
  assert.deepEqual(files, [...converted.manifest.files.map((f) => f.path), "manifest.json"].sort());
}

async function tempDir(): Promise<string> {
  return await Deno.makeTempDir({ prefix: "od-moe-convert-" });
}

for (const arch of SYNTHETIC_ARCHS) {
  Deno.test(`convert ${arch}: keep and float16, read back through the engine reader`, async () => {
    assert.ok(supportedArchitectures().includes(arch));
    const dir = await tempDir();
    try {
      for (const [type, shape] of [[QUANT, "b"], ["F16", "a"]] as const) {
        const gguf = await fixtureModel({ arch, type, shape });
        for (const dtype of ["keep", "float16"] as const) {
          const out = `${dir}/${type}-${shape}-${dtype}`;
          const r = await convertGguf({
            input: gguf,
            output: out,
            outputDtype: dtype,
            sync: false,
          });
          assert.equal(r.filesReused, 0);
          assert.equal(r.alreadyComplete, false);
          verifyConversion(gguf, out, dtype);
        }
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}

Deno.test("convert: bfloat16 and float32 dequantise with the CPU reference", async () => {
  const dir = await tempDir();
  try {
    const gguf = await fixtureModel({ arch: "qwen2moe", type: QUANT, shape: "b" });
    for (const dtype of ["bfloat16", "float32"] as const) {
      await convertGguf({
        input: gguf,
        output: `${dir}/${dtype}`,
        outputDtype: dtype,
        sync: false,
      });
      verifyConversion(gguf, `${dir}/${dtype}`, dtype);
    }
    // keep does not grow the model: same tensor bytes as the GGUF.
    const plan = planConversion(readGgufModel(gguf), { outputDtype: "keep" });
    const ggufTensorBytes = readGgufModel(gguf).tensors.reduce((s, t) => s + t.nBytes, 0);
    assert.equal(plan.base.dataBytes + plan.experts.dataBytes, ggufTensorBytes);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("convert --base-only: every base tensor of the plan, no experts", async () => {
  const dir = await tempDir();
  try {
    for (const arch of SYNTHETIC_ARCHS) {
      const gguf = await fixtureModel({ arch, type: QUANT, shape: "b" });
      const out = `${dir}/${arch}`;
      const r = await cli("--input", gguf, "--output", out, "--base-only");
      assert.equal(r.code, 0, r.stderr);
      verifyConversion(gguf, out, "keep", true);
      const manifest: Manifest = JSON.parse(Deno.readTextFileSync(`${out}/manifest.json`));
      assert.equal(manifest.experts, null);
      assert.equal(manifest.options.base_only, true);
      // The base directory alone is what --base-weights opens.
      using base: BaseModel = openBaseModel(`${out}/base_model`);
      assert.equal(base.architecture, arch);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("convert: the manifest maps tensors to files, with sizes and the source header checksum", async () => {
  const dir = await tempDir();
  try {
    const gguf = await fixtureModel({ arch: "qwen3moe", type: QUANT, shape: "b" });
    await convertGguf({ input: gguf, output: dir, sync: false });
    const m: Manifest = JSON.parse(Deno.readTextFileSync(`${dir}/manifest.json`));
    const model = readGgufModel(gguf);
    assert.equal(m.complete, true);
    assert.equal(m.source.files[0]!.size, Deno.statSync(gguf).size);
    const header = ggufBytes(model, 0, model.files[0]!.dataOffset);
    assert.equal(m.source.files[0]!.header_sha256, sha256(header));
    assert.equal(m.base.tensors["token_embd.weight"]!.file, "base_model/model.safetensors");
    assert.equal(m.experts!.tensors["blk.1.ffn_down_exps.weight"]!.tensor, "ffn_down.weight");
    assert.equal(
      m.experts!.tensors["blk.1.ffn_down_exps.weight"]!.file_pattern,
      "experts/layer_001/expert_{expert}.safetensors",
    );
    const sizes = m.files.reduce((s, f) => s + f.size, 0);
    assert.equal(
      sizes,
      walk(dir).filter((f) => f !== "manifest.json").reduce(
        (s, f) => s + Deno.statSync(`${dir}/${f}`).size,
        0,
      ),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("convert --dry-run on every generated model: prints the plan, writes nothing", async () => {
  const dir = await tempDir();
  try {
    for (const arch of SYNTHETIC_ARCHS) {
      for (const type of [QUANT, "F32"] as FixtureType[]) {
        const gguf = await fixtureModel({ arch, type, shape: "b" });
        const out = `${dir}/${arch}-${type}`;
        const r = await cli("--input", gguf, "--output", out, "--dry-run");
        assert.equal(r.code, 0, r.stderr);
        assert.match(r.stdout, new RegExp(`architecture: +${arch} \\(supported\\)`));
        const plan = planConversion(readGgufModel(gguf));
        const nExpert = plan.experts.layers[0]!.nExpert;
        assert.match(
          r.stdout,
          new RegExp(
            `experts: +${plan.experts.layers.length} layers × ${nExpert} experts = ${plan.experts.fileCount} files`,
          ),
        );
        assert.match(r.stdout, new RegExp(`base: +${plan.base.tensors.length} tensors`));
        assert.match(r.stdout, /per expert: +[\d.]+ [KM]iB/);
        assert.match(r.stdout, /dry run: nothing written/);
        assert.match(r.stdout, /output: +.*: new directory/);
        assert.ok(!exists(out), "dry run must not create the output directory");
        // The bytes it announces are the bytes a real run writes.
        const total = Number(/total: .*\((\d+) bytes/.exec(r.stdout)![1]);
        await convertGguf({ input: gguf, output: out, sync: false });
        const written: number = walk(out).filter((f) => f.endsWith(".safetensors"))
          .reduce((s, f) => s + Deno.statSync(`${out}/${f}`).size, 0);
        assert.equal(written, total);
        const again = await cli("--input", gguf, "--output", out, "--dry-run");
        assert.match(again.stdout, /output: +.*: already holds this conversion/);
      }
    }
    // float16 changes the sizes it reports.
    const gguf = await fixtureModel({ arch: "llama", type: QUANT, shape: "b" });
    const keep = await cli("--input", gguf, "--dry-run");
    const f16 = await cli("--input", gguf, "--dry-run", "--output-dtype", "float16");
    assert.match(f16.stdout, /output dtype: +float16/);
    assert.notEqual(/total:.*/.exec(keep.stdout)![0], /total:.*/.exec(f16.stdout)![0]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("convert: a corrupt GGUF fails with a clear error and writes nothing", async () => {
  const dir = await tempDir();
  try {
    const gguf = await fixtureModel({ arch: "llama", type: "F32" });
    const bytes = Deno.readFileSync(gguf);
    const cases: [string, Uint8Array, RegExp][] = [
      [
        "truncated.gguf",
        bytes.subarray(0, Math.floor(bytes.length / 2)),
        /truncated\.gguf: byte \d+: .*past the end of the file/,
      ],
      ["garbage.gguf", new Uint8Array(4096).fill(0x5a), /garbage\.gguf: byte 0: not a GGUF file/],
      [
        "header-cut.gguf",
        bytes.subarray(0, 100),
        /header-cut\.gguf: byte \d+: .*(truncated|remain)/,
      ],
    ];
    for (const [name, content, pattern] of cases) {
      const path = `${dir}/${name}`;
      Deno.writeFileSync(path, content);
      for (const extra of [["--dry-run"], []]) {
        const out = `${dir}/out-${name}`;
        const r = await cli("--input", path, "--output", out, ...extra);
        assert.notEqual(r.code, 0, `${name} ${extra}`);
        assert.match(r.stderr, /^error: /);
        assert.match(r.stderr, pattern, r.stderr);
        assert.ok(!exists(out));
      }
    }
    const missing = await cli("--input", `${dir}/nope.gguf`, "--dry-run");
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /GGUF file not found: .*nope\.gguf/);
    const usage = await cli("--input", gguf, "--output-dtype", "int4", "--output", `${dir}/x`);
    assert.equal(usage.code, 2);
    assert.match(usage.stderr, /--output-dtype must be one of keep, float16, bfloat16, float32/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("convert: an unsupported architecture fails naming the supported ones", async () => {
  const dir = await tempDir();
  try {
    const path = `${dir}/mamba.gguf`;
    await writeGgufFile(path, {
      metadata: [["general.architecture", gv.str("mamba")], ["mamba.block_count", gv.u32(1)]],
      tensors: [
        { name: "token_embd.weight", type: GgmlType.F32, shape: [4, 8], data: new Uint8Array(128) },
        {
          name: "blk.0.ffn_up_exps.weight",
          type: GgmlType.F32,
          shape: [4, 2, 3],
          data: new Uint8Array(96),
        },
      ],
    });
    const message = `Unsupported GGUF architecture: mamba (supported: ${
      supportedArchitectures().join(", ")
    })`;
    const dry = await cli("--input", path, "--dry-run");
    assert.equal(dry.code, 1);
    assert.match(dry.stdout, /architecture: +mamba \(not supported/);
    assert.match(dry.stdout, /experts: +1 layers × 3 experts = 3 files/);
    assert.ok(dry.stderr.includes(message), dry.stderr);
    const run = await cli("--input", path, "--output", `${dir}/out`);
    assert.equal(run.code, 1);
    assert.ok(run.stderr.includes(message), run.stderr);
    assert.ok(!exists(`${dir}/out`));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** A model big enough that converting it takes a moment: many experts. */
function bigModel(): Promise<string> {
  return fixtureModel(
    { arch: "qwen3moe", type: "F32", shape: "b", nExpert: 64, nExpertUsed: 4 } as FixtureOptions,
  );
}

/** Starts the CLI and returns once at least `files` expert files are in place. */
async function startAndWait(args: string[], out: string, files: number) {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, ...args],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const t0 = performance.now();
  for (;;) {
    const done = exists(`${out}/experts`)
      ? [...Deno.readDirSync(`${out}/experts`)].filter((e) => e.isDirectory)
        .flatMap((d) => [...Deno.readDirSync(`${out}/experts/${d.name}`)])
        .filter((e) => e.name.endsWith(".safetensors")).length
      : 0;
    if (done >= files) break;
    if (performance.now() - t0 > 60_000) throw new Error("the converter made no progress in 60 s");
    await new Promise((r) => setTimeout(r, 5));
  }
  return child;
}

/**
 * After an interruption: no manifest, the reader refuses the directory, and
 * every file left at a final name is complete and identical to a finished
 * run's, while partial temporary files are rejected by the safetensors reader.
 */
function checkInterrupted(out: string, reference: Map<string, string>) {
  assert.ok(!exists(`${out}/manifest.json`));
  assert.throws(() => openConvertedModel(out), ConvertedModelError);
  assert.throws(() => openConvertedModel(out), /manifest\.json is missing/);
  let complete = 0;
  for (const rel of walk(out)) {
    const name = rel.slice(rel.lastIndexOf("/") + 1);
    if (rel === ".convert-journal.jsonl") continue;
    if (isTemporaryName(name)) {
      const size = Deno.statSync(`${out}/${rel}`).size;
      const final = rel.replace(/\.tmp-\d+-[0-9a-f]{8}$/, "");
      if (!final.endsWith(".safetensors")) continue;
      try {
        readSafetensorsHeader(`${out}/${rel}`);
        // Only a temporary file whose every byte was written parses; it still has a temporary name.
        assert.equal(
          sha256(Deno.readFileSync(`${out}/${rel}`)),
          reference.get(final),
          `${rel} (${size} bytes)`,
        );
      } catch (e) {
        assert.ok(e instanceof SafetensorsError, String(e));
      }
      continue;
    }
    assert.equal(
      sha256(Deno.readFileSync(`${out}/${rel}`)),
      reference.get(rel),
      `${rel} is not complete`,
    );
    complete++;
  }
  return complete;
}

Deno.test("convert: killed mid-run (SIGKILL, SIGINT) leaves nothing a reader takes as complete; a rerun finishes", async () => {
  const dir = await tempDir();
  try {
    const gguf = await bigModel();
    const ref = `${dir}/reference`;
    const t0 = performance.now();
    await convertGguf({ input: gguf, output: ref, sync: false });
    const refSeconds = (performance.now() - t0) / 1000;
    console.log(`reference conversion: ${refSeconds.toFixed(2)} s`);
    const refManifest: Manifest = JSON.parse(Deno.readTextFileSync(`${ref}/manifest.json`));
    const reference = new Map(refManifest.files.map((f) => [f.path, f.sha256]));
    assert.ok(refManifest.files.length > 150, `${refManifest.files.length} files`);

    // SIGKILL: no chance to clean up.
    const out = `${dir}/killed`;
    const args = ["--input", gguf, "--output", out];
    const killed = await startAndWait(args, out, 20);
    killed.kill("SIGKILL");
    const k = await killed.output();
    assert.equal(
      k.signal,
      "SIGKILL",
      `the converter finished before the kill (reference run: ${refSeconds} s)`,
    );
    const kept = checkInterrupted(out, reference);
    assert.ok(kept >= 20, `${kept} complete files`);
    assert.throws(() => openExpertDir(`${out}/experts`), /expert index is missing/);

    const dry = await cli(...args, "--dry-run");
    assert.match(
      dry.stdout,
      /output: +.*: resumes an interrupted run \(\d+ files recorded as done\)/,
    );
    const rerun = await cli(...args);
    assert.equal(rerun.code, 0, rerun.stderr);
    assert.match(rerun.stdout, /\d+ kept from an earlier run/);
    verifyConversion(gguf, out, "keep");
    const m: Manifest = JSON.parse(Deno.readTextFileSync(`${out}/manifest.json`));
    assert.deepEqual(m.files, refManifest.files);

    // SIGINT: the converter stops between chunks, removes its temporary file and says how to resume.
    const out2 = `${dir}/interrupted`;
    const args2 = ["--input", gguf, "--output", out2, "--output-dtype", "float16"];
    const ref16 = `${dir}/reference16`;
    await convertGguf({ input: gguf, output: ref16, outputDtype: "float16", sync: false });
    const reference16 = new Map(
      (JSON.parse(Deno.readTextFileSync(`${ref16}/manifest.json`)) as Manifest).files.map((
        f,
      ) => [f.path, f.sha256]),
    );
    const interrupted = await startAndWait(args2, out2, 10);
    interrupted.kill("SIGINT");
    const i = await interrupted.output();
    assert.equal(i.code, 130, dec.decode(i.stderr));
    assert.match(dec.decode(i.stderr), /interrupted: .*rerun the same command to resume/);
    checkInterrupted(out2, reference16);
    assert.deepEqual(
      walk(out2).filter((f) => isTemporaryName(f)),
      [],
      "SIGINT leaves no temporary file",
    );
    const rerun2 = await cli(...args2);
    assert.equal(rerun2.code, 0, rerun2.stderr);
    verifyConversion(gguf, out2, "float16");

    // A third run finds the conversion complete and writes nothing.
    const again = await convertGguf({
      input: gguf,
      output: out2,
      outputDtype: "float16",
      sync: false,
    });
    assert.equal(again.alreadyComplete, true);
    assert.equal(again.bytesWritten, 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("convert: resume keeps verified files and rewrites a damaged one", async () => {
  const dir = await tempDir();
  try {
    const gguf = await fixtureModel({ arch: "llama", type: QUANT, shape: "b" });
    const ac = new AbortController();
    let labels = 0;
    const stopAfter = {
      start() {},
      advance() {},
      note() {},
      finish() {},
      label(text: string) {
        if (text.includes("experts/") && ++labels === 6) ac.abort(new Error("stop here"));
      },
    };
    await assert.rejects(
      () =>
        convertGguf({
          input: gguf,
          output: dir,
          signal: ac.signal,
          progress: stopAfter,
          sync: false,
        }),
      /stop here/,
    );
    assert.ok(!exists(`${dir}/manifest.json`));
    const journal = Deno.readTextFileSync(`${dir}/.convert-journal.jsonl`).trim().split("\n");
    assert.equal(journal.length, 1 + 4 + 5, "header, base shard + 3 JSON files, 5 experts");
    // Damage a finished expert file without changing its size.
    const victim = `${dir}/experts/layer_000/expert_002.safetensors`;
    const bytes = Deno.readFileSync(victim);
    bytes[bytes.length - 1] = bytes[bytes.length - 1]! ^ 0xff;
    Deno.writeFileSync(victim, bytes);
    const r = await convertGguf({ input: gguf, output: dir, sync: false });
    assert.equal(r.filesReused, 4 + 4, "base shard, 3 JSON files and 4 intact experts kept");
    verifyConversion(gguf, dir, "keep");

    // Damage after completion: the rerun notices, rewrites it, and writes a new manifest.
    Deno.writeFileSync(victim, bytes);
    const r2 = await convertGguf({ input: gguf, output: dir, sync: false });
    assert.equal(r2.alreadyComplete, false);
    assert.equal(r2.filesWritten, 1);
    verifyConversion(gguf, dir, "keep");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("convert: refuses foreign or mismatched output directories unless --overwrite", async () => {
  const dir = await tempDir();
  try {
    const gguf = await fixtureModel({ arch: "qwen3moe", type: QUANT, shape: "b" });
    Deno.writeTextFileSync(`${dir}/notes.txt`, "mine");
    await assert.rejects(
      () => convertGguf({ input: gguf, output: dir }),
      (e: unknown) =>
        e instanceof ConvertError &&
        /not empty and holds no od-moe conversion \(found: notes\.txt\)/.test(e.message) &&
        /--overwrite/.test(e.message),
    );
    const dry = await cli("--input", gguf, "--output", dir, "--dry-run");
    assert.equal(dry.code, 0, dry.stderr);
    assert.match(dry.stdout, /output: +.*: would be refused: .*not empty/);
    const dryOverwrite = await cli("--input", gguf, "--output", dir, "--dry-run", "--overwrite");
    assert.match(
      dryOverwrite.stdout,
      /--overwrite would replace base_model\/, experts\/ and manifest\.json/,
    );
    assert.deepEqual(walk(dir), ["notes.txt"]);
    const cliRefusal = await cli("--input", gguf, "--output", dir);
    assert.equal(cliRefusal.code, 1);
    assert.match(cliRefusal.stderr, /not empty/);
    await convertGguf({ input: gguf, output: dir, overwrite: true, sync: false });
    assert.equal(
      Deno.readTextFileSync(`${dir}/notes.txt`),
      "mine",
      "--overwrite leaves other files alone",
    );
    verifyConversion(gguf, dir, "keep", false, ["notes.txt"]);
    const m1 = Deno.readTextFileSync(`${dir}/manifest.json`);

    // Other options or another model: refused, the old conversion untouched.
    await assert.rejects(
      () => convertGguf({ input: gguf, output: dir, outputDtype: "float16" }),
      /finished conversion of .* with --output-dtype keep.*--output-dtype float16.*Pass --overwrite/,
    );
    const other = await fixtureModel({ arch: "llama", type: QUANT, shape: "b" });
    await assert.rejects(
      () => convertGguf({ input: other, output: dir }),
      /conversion of .*qwen3moe.* this run converts .*llama/,
    );
    assert.equal(Deno.readTextFileSync(`${dir}/manifest.json`), m1);

    // --overwrite replaces it.
    await convertGguf({
      input: other,
      output: dir,
      overwrite: true,
      outputDtype: "float16",
      sync: false,
    });
    verifyConversion(other, dir, "float16", false, ["notes.txt"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("convert --shard-size-gb: base split into shards that open as one model", async () => {
  const dir = await tempDir();
  try {
    const gguf = await fixtureModel({ arch: "qwen2moe", type: QUANT, shape: "b" });
    const r = await cli("--input", gguf, "--output", dir, "--shard-size-gb", "0.0002");
    assert.equal(r.code, 0, r.stderr);
    const shards = walk(`${dir}/base_model`).filter((f) => f.endsWith(".safetensors"));
    assert.ok(shards.length > 3, shards.join());
    assert.match(shards[0]!, /^model-00001-of-\d{5}\.safetensors$/);
    const index = JSON.parse(
      Deno.readTextFileSync(`${dir}/base_model/model.safetensors.index.json`),
    );
    assert.deepEqual([...new Set(Object.values(index.weight_map))].sort(), shards);
    verifyConversion(gguf, dir, "keep");
    using base = openBaseModel(`${dir}/base_model`);
    assert.equal(base.files.length, shards.length);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("convert: a split GGUF converts like one file", async () => {
  const dir = await tempDir();
  try {
    const spec = syntheticModel(await fixtureSpec({ arch: "qwen2moe", shape: "a" }));
    const n = spec.tensors.length;
    const half = Math.ceil(n / 2);
    const split = (i: number): [string, ReturnType<typeof gv.u16>][] => [
      ["split.no", gv.u16(i)],
      ["split.count", gv.u16(2)],
      ["split.tensors.count", gv.i32(n)],
    ];
    await writeGgufFile(`${dir}/m-00001-of-00002.gguf`, {
      metadata: [...spec.metadata, ...split(0)],
      tensors: spec.tensors.slice(0, half),
    });
    await writeGgufFile(`${dir}/m-00002-of-00002.gguf`, {
      metadata: [["general.architecture", gv.str("qwen2moe")], ...split(1)],
      tensors: spec.tensors.slice(half),
    });
    const model = readGgufModel(`${dir}/m-00001-of-00002.gguf`);
    assert.ok(model.tensors.some((t) => t.fileIndex === 1 && /_exps/.test(t.name)));
    const r = await cli(
      "--input",
      `${dir}/m-00002-of-00002.gguf`,
      "--output",
      `${dir}/out`,
      "--output-dtype",
      "float16",
    );
    assert.equal(r.code, 0, r.stderr);
    verifyConversion(`${dir}/m-00001-of-00002.gguf`, `${dir}/out`, "float16");
    const m: Manifest = JSON.parse(Deno.readTextFileSync(`${dir}/out/manifest.json`));
    assert.deepEqual(m.source.files.map((f) => f.name), [
      "m-00001-of-00002.gguf",
      "m-00002-of-00002.gguf",
    ]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("convert: reader rejects an incomplete or tampered base directory", async () => {
  const dir = await tempDir();
  try {
    const gguf = await fixtureModel({ arch: "llama", type: QUANT, shape: "b" });
    await convertGguf({ input: gguf, output: dir, sync: false });
    const shard = `${dir}/base_model/model.safetensors`;
    const bytes = Deno.readFileSync(shard);
    Deno.writeFileSync(shard, bytes.subarray(0, bytes.length - 10));
    assert.throws(
      () => openConvertedModel(dir),
      (e: unknown) =>
        e instanceof ConvertedModelError && /model\.safetensors: .*file truncated/.test(e.message),
    );
    Deno.writeFileSync(shard, bytes);
    Deno.removeSync(`${dir}/base_model/model.safetensors.index.json`);
    assert.throws(
      () => openBaseModel(`${dir}/base_model`),
      /base index is missing: the conversion is incomplete/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test({
  name: "convert: a full disk gives a clear error naming the file and leaves no partial file",
  ignore: Deno.build.os !== "linux" || Deno.uid() !== 0,
  async fn() {
    const dir = await tempDir();
    const gguf = await fixtureModel({ arch: "qwen3moe", type: "F32", shape: "b" });
    const mount = await new Deno.Command("mount", {
      args: ["-t", "tmpfs", "-o", "size=2m", "tmpfs", dir],
    }).output();
    if (!mount.success) return;
    try {
      const r = await cli("--input", gguf, "--output", `${dir}/out`);
      assert.equal(r.code, 1);
      assert.match(r.stderr, /error: no space left on device writing .*\/out\/.*\.safetensors/);
      await assert.rejects(() => convertGguf({ input: gguf, output: `${dir}/out` }), DiskFullError);
      assert.ok(!exists(`${dir}/out/manifest.json`));
      assert.deepEqual(
        walk(`${dir}/out`).filter((f) => isTemporaryName(f.slice(f.lastIndexOf("/") + 1))),
        [],
      );
    } finally {
      await new Deno.Command("umount", { args: [dir] }).output();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("convert: architectures the generator writes are the supported ones", () => {
  // mistral4 is written as deepseek2 with archName "mistral4"
  assert.deepEqual(
    [...SYNTHETIC_ARCHS, "mistral4"].sort(),
    supportedArchitectures().sort() as SyntheticArch[],
  );
});
