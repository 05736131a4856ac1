/**
 * `deno task make-model`: writes a synthetic MoE GGUF with seeded random
 * weights (`src/model/synthetic.ts`).
 *
 * ```sh
 * deno task make-model --arch qwen3moe --out m.gguf [--type F32|F16|Q8_0|Q4_0|Q4_1|Q5_0|Q5_1|
 *   Q2_K|Q3_K_M|Q4_K_M|Q5_K_M|Q6_K|IQ1_S|IQ2_XXS|…|IQ1_MIX|IQ2_MIX] [--tensor-type REGEX=TYPE …]
 *   [--shape a|b] [--layers N --embd N --heads N --kv-heads N
 *   --head-dim N --ff N --shexp-ff N --experts N --top-k N --ctx N --rope-base X --rms-eps X]
 *   [--vocab qwen2|llama-spm|llama-bpe|builtin|… --vocab-size N] [--seed S] [--tied|--untied]
 *   [--arch-name mistral4] [--nextn N]
 * deno task make-model --preset NAME --out m.gguf [--layers N] [--type T] [--tensor-type …]
 * deno task make-model --list [--layers N]
 * ```
 *
 * `--preset NAME` writes a real model's shape (`SHAPE_PRESETS` in
 * `dev/presets.ts`: qwen3-30b-a3b, qwen3-235b-a22b, mixtral-8x7b,
 * qwen2-57b-a14b, deepseek-v3, kimi-k2, gpt-oss-20b, gpt-oss-120b,
 * olmoe-1b-7b) cut to its first `--layers N` blocks (default in `--list`),
 * everything else real; `--arch` is implied. `--list` prints the presets
 * with their parameter counts, full and as generated. The CI variants
 * `kimi-k2-cut` (Kimi's width, FFNs cut) and `kimi-k2-narrow` (width 256) of
 * `DEEPSEEK2_PRESETS` in `dev/fixtures.ts` are presets too.
 *
 * deepseek2 only: `--arch-name mistral4` writes the file as Mistral-Small-4
 * (the same graph); `--nextn N` adds N multi-token-prediction blocks after
 * the trunk (as GLM-4.7-Flash).
 *
 * Tensors are generated one at a time as they are written
 * (`syntheticModelLazy`), so memory holds the largest tensor, not the model.
 *
 * Dimensions start from the test fixture shape `--shape` (default `a`, see
 * `dev/fixtures.ts`); flags override them. F32 and F16 are written by the
 * generator. Other types are written by the streaming quantiser of
 * `dev/quant_stream.ts`: llama.cpp's own per-tensor type choices for the file
 * type (`llama_quant_compute_types`), each piece (at most one expert's
 * slice) drawn and quantised by ggml's `ggml_quantize_chunk` in worker
 * threads (`--threads N`, default the cores) and written straight into the
 * file, so a one-layer `deepseek-v3` (11.3 G expert values) needs a few
 * hundred MiB of memory, not an F32 copy. The file is, byte for byte, what
 * `llama_model_quantize` writes from the F32 file (`dev/quant_stream_test.ts`).
 * `--via-llama-quantize` takes that older route instead (an F32 temporary,
 * F16 above 16 GiB, quantised by `llama_model_quantize`); it is also taken
 * for the file types whose choices depend on having an importance matrix
 * (IQ3_XXS, IQ4_NL, IQ4_XS, Q4_0, Q5_0) when one is used. Prints one summary
 * line (progress on stderr while a long file is written).
 *
 * `--tensor-type REGEX=TYPE` (repeatable, as llama-quantize's) sets the type
 * of every tensor whose name matches REGEX, the first match winning; the
 * types `IQ1_MIX` (~1.6-bit experts) and `IQ2_MIX` (~2.5-bit) are the
 * dynamic mixes of `dev/quant_recipes.ts`, applied after any `--tensor-type`.
 * Types that llama.cpp quantises only with an importance matrix (IQ1_S/M,
 * IQ2_XXS/XS/S, IQ3_XXS) get the documented synthetic one of that module.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { SYNTHETIC_ARCHS, type SyntheticArch, syntheticModelLazy } from "../src/model/synthetic.ts";
import { readGgufModel } from "../src/gguf/reader.ts";
import { isExpertTensor } from "../src/gguf/names.ts";
import { writeGgufFileLazy } from "../src/gguf/writer.ts";
import {
  DEEPSEEK2_PRESETS,
  type FixtureOptions,
  type FixtureShape,
  fixtureSpec,
} from "../dev/fixtures.ts";
import {
  countParams,
  presetOptions,
  SHAPE_PRESET_NAMES,
  SHAPE_PRESETS,
  type ShapePreset,
} from "../dev/presets.ts";
import { LlamaFtype, type LlamaFtypeName, loadReference } from "../dev/ref/llama_cpp.ts";
import { writeQuantizedSynthetic } from "../dev/quant_stream.ts";
import {
  IMATRIX_TYPES,
  QUANT_RECIPES,
  type QuantRecipe,
  type QuantRecipeName,
  syntheticImatrix,
  tensorTypeIds,
} from "../dev/quant_recipes.ts";

const USAGE = `usage: deno task make-model --arch ${SYNTHETIC_ARCHS.join("|")} --out FILE
  [--type F32|F16|Q8_0|Q4_0|Q4_1|Q5_0|Q5_1|Q2_K|Q3_K_M|Q4_K_M|Q5_K_M|Q6_K|IQ1_S|IQ1_M|IQ2_XXS|
          IQ2_XS|IQ2_S|IQ3_XXS|IQ3_S|IQ4_XS|TQ1_0|TQ2_0|…|IQ1_MIX|IQ2_MIX]  (default F32)
  [--tensor-type REGEX=TYPE ...]  per-tensor types (first match wins), e.g. ffn_down_exps=IQ1_M
  [--shape a|b]  start from a test fixture shape (default a)
  [--layers N --embd N --heads N --kv-heads N --head-dim N --ff N --shexp-ff N
   --experts N --top-k N --ctx N --rope-base X --rms-eps X]
  [--vocab qwen2|llama-spm|llama-bpe|builtin|<llama.cpp vocab name> --vocab-size N (0: all)]
  [--seed S] [--tied | --untied]
  deepseek2: [--arch-name deepseek2|mistral4] [--nextn N]
  [--threads N]  quantising workers (default: the cores)   [--via-llama-quantize]
usage: deno task make-model --preset NAME --out FILE [--layers N] [--type T] [--tensor-type ...]
  presets: ${SHAPE_PRESET_NAMES.join(", ")}, ${Object.keys(DEEPSEEK2_PRESETS).join(", ")}
usage: deno task make-model --list [--layers N]   (presets with parameter counts)`;

/** The integer and number flags, and the fixture fields they set. */
const NUMBER_FLAGS = {
  layers: "nLayer",
  embd: "nEmbd",
  heads: "nHead",
  "kv-heads": "nHeadKv",
  "head-dim": "headDim",
  ff: "nFfExp",
  "shexp-ff": "nFfShexp",
  experts: "nExpert",
  "top-k": "nExpertUsed",
  ctx: "nCtx",
  "rope-base": "ropeBase",
  "rms-eps": "rmsEps",
  "vocab-size": "vocabSize",
  seed: "seed",
} as const;

function fail(message: string): never {
  console.error(`make-model: ${message}\n${USAGE}`);
  Deno.exit(2);
}

/** Parses the command line into fixture options. */
function parse(args: string[]) {
  const { values } = parseArgs({
    args,
    options: {
      arch: { type: "string" },
      out: { type: "string" },
      type: { type: "string", default: "F32" },
      "tensor-type": { type: "string", multiple: true },
      shape: { type: "string", default: "a" },
      vocab: { type: "string" },
      tied: { type: "boolean" },
      untied: { type: "boolean" },
      preset: { type: "string" },
      "arch-name": { type: "string" },
      nextn: { type: "string" },
      list: { type: "boolean" },
      threads: { type: "string" },
      "via-llama-quantize": { type: "boolean" },
      help: { type: "boolean", short: "h" },
      ...Object.fromEntries(Object.keys(NUMBER_FLAGS).map((k) => [k, { type: "string" }])),
    } as Record<
      string,
      { type: "string" | "boolean"; default?: string; short?: string; multiple?: boolean }
    >,
    strict: true,
  });
  if (values.help) {
    console.log(USAGE);
    Deno.exit(0);
  }
  if (values.list) {
    const layers = values.layers === undefined ? undefined : Number(values.layers);
    listPresets(layers);
    Deno.exit(0);
  }
  const presetName = values.preset as string | undefined;
  const shapePreset = presetName === undefined
    ? undefined
    : (SHAPE_PRESETS as Record<string, ShapePreset>)[presetName];
  const ciPreset = presetName === undefined
    ? undefined
    : DEEPSEEK2_PRESETS[presetName as keyof typeof DEEPSEEK2_PRESETS];
  if (presetName !== undefined && !shapePreset && !ciPreset) {
    fail(
      `--preset must be one of ${
        [...SHAPE_PRESET_NAMES, ...Object.keys(DEEPSEEK2_PRESETS)].join(", ")
      }, got ${presetName}`,
    );
  }
  const presetArch = (shapePreset?.options ?? ciPreset)?.arch;
  if (presetArch !== undefined && values.arch !== undefined && values.arch !== presetArch) {
    fail(`--preset ${presetName} is a ${presetArch} model; --arch ${values.arch} contradicts it`);
  }
  const arch = (values.arch ?? presetArch) as string | undefined;
  if (!arch || !(SYNTHETIC_ARCHS as readonly string[]).includes(arch)) {
    fail(`--arch must be one of ${SYNTHETIC_ARCHS.join(", ")}${arch ? `, got ${arch}` : ""}`);
  }
  const out = values.out as string | undefined;
  if (!out) fail("--out is required");
  const shape = values.preset !== undefined ? "b" : values.shape as string;
  if (shape !== "a" && shape !== "b") fail(`--shape must be a or b, got ${shape}`);
  const type = (values.type as string).toUpperCase();
  if (
    type !== "F32" && type !== "F16" && !(`MOSTLY_${type}` in LlamaFtype) &&
    !(type in QUANT_RECIPES)
  ) {
    fail(
      `--type ${type}: llama.cpp has no file type MOSTLY_${type} (recipes: ${
        Object.keys(QUANT_RECIPES).join(", ")
      })`,
    );
  }
  const tensorTypes: [string, string][] = [];
  for (const arg of (values["tensor-type"] as string[] | undefined) ?? []) {
    const eq = arg.lastIndexOf("=");
    if (eq <= 0) fail(`--tensor-type ${arg}: expected REGEX=TYPE, e.g. ffn_down_exps=IQ1_M`);
    tensorTypes.push([arg.slice(0, eq), arg.slice(eq + 1).toUpperCase()]);
  }
  if (tensorTypes.length > 0 && (type === "F32" || type === "F16")) {
    fail(`--tensor-type needs a quantised --type (llama.cpp's quantiser applies it)`);
  }
  try {
    tensorTypeIds(tensorTypes);
  } catch (e) {
    fail((e as Error).message);
  }
  const overrides: Record<string, unknown> = {};
  const deepseekOnly = ["arch-name", "nextn"].filter((f) => values[f] !== undefined);
  if (deepseekOnly.length > 0 && arch !== "deepseek2") {
    fail(`--${deepseekOnly.join(", --")} apply to --arch deepseek2 only`);
  }
  if (shapePreset) {
    let cut: FixtureOptions;
    try {
      cut = presetOptions(
        presetName!,
        values.layers === undefined ? undefined : Number(values.layers),
      );
    } catch (e) {
      fail((e as Error).message);
    }
    const { arch: _a, shape: _s, type: _t, ...fields } = cut;
    Object.assign(overrides, fields);
    delete values.layers; // applied above (dense leading blocks cut with it)
  } else if (ciPreset) {
    const { arch: _a, shape: _s, type: _t, ...fields } = ciPreset;
    Object.assign(overrides, fields);
  }
  if (values["arch-name"] !== undefined) overrides.archName = values["arch-name"];
  if (values.nextn !== undefined) {
    const n = Number(values.nextn);
    if (!Number.isInteger(n) || n < 0) fail(`--nextn must be an integer ≥ 0, got ${values.nextn}`);
    overrides.nNextn = n;
  }
  for (const [flag, field] of Object.entries(NUMBER_FLAGS)) {
    const raw = values[flag] as string | undefined;
    if (raw === undefined) continue;
    const n = Number(raw);
    if (!Number.isFinite(n)) fail(`--${flag} must be a number, got ${raw}`);
    overrides[field] = n;
  }
  if (values.vocab !== undefined) overrides.vocab = values.vocab;
  if (values.tied && values.untied) fail("--tied and --untied contradict each other");
  if (values.tied) overrides.tiedOutput = true;
  if (values.untied) overrides.tiedOutput = false;
  const threads = values.threads === undefined ? undefined : Number(values.threads);
  if (threads !== undefined && !(Number.isInteger(threads) && threads >= 0)) {
    fail(`--threads must be an integer ≥ 0, got ${values.threads}`);
  }
  return {
    threads,
    viaLlama: values["via-llama-quantize"] === true,
    arch: arch as SyntheticArch,
    out,
    type,
    tensorTypes,
    shape: shape as FixtureShape,
    overrides,
    preset: presetName,
  };
}

/** Prints the shape presets with their parameter counts: full, and as generated at `layers`. */
function listPresets(layers?: number): void {
  const rows = [[
    "preset",
    "arch",
    "model",
    "layers",
    "params",
    "experts",
    "generated",
    "gen. experts",
    "largest tensor",
  ]];
  for (const name of SHAPE_PRESET_NAMES) {
    const p: ShapePreset = SHAPE_PRESETS[name];
    const full = countParams(p.options);
    let cut: FixtureOptions;
    try {
      cut = presetOptions(
        name,
        layers === undefined ? undefined : Math.min(layers, p.options.nLayer),
      );
    } catch (e) {
      fail((e as Error).message);
    }
    const gen = countParams(cut);
    rows.push([
      name,
      p.options.arch,
      p.about,
      `${cut.nLayer}/${p.options.nLayer}`,
      billions(full.total),
      billions(full.experts),
      billions(gen.total),
      billions(gen.experts),
      `${(gen.largest * 4 / 2 ** 30).toFixed(2)} GiB F32`,
    ]);
  }
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  for (const r of rows) console.log(r.map((c, i) => c.padEnd(widths[i]!)).join("  ").trimEnd());
}

function billions(n: number): string {
  return n >= 1e9 ? `${(n / 1e9).toFixed(2)}B` : `${(n / 1e6).toFixed(1)}M`;
}

function human(bytes: number): string {
  if (bytes >= 1 << 30) return `${(bytes / (1 << 30)).toFixed(2)} GiB`;
  if (bytes >= 1 << 20) return `${(bytes / (1 << 20)).toFixed(2)} MiB`;
  return `${(bytes / 1024).toFixed(1)} KiB`;
}

function count(n: number): string {
  return n >= 1e6 ? `${(n / 1e6).toFixed(2)}M` : n >= 1e3 ? `${(n / 1e3).toFixed(1)}k` : `${n}`;
}

async function main(): Promise<void> {
  const { arch, out, type, tensorTypes, shape, overrides: fields, preset, threads, viaLlama } =
    parse(Deno.args);
  const spec = await fixtureSpec({ arch, shape, ...fields });
  spec.name = preset ? `od-moe synthetic ${preset} shape` : `od-moe synthetic ${arch}`;
  const quantised = type !== "F32" && type !== "F16";
  const recipe = QUANT_RECIPES[type as QuantRecipeName] as QuantRecipe | undefined;
  const ftype = recipe?.ftype ?? `MOSTLY_${type}` as LlamaFtypeName;
  const overrides = tensorTypeIds([...tensorTypes, ...(recipe?.tensorTypes ?? [])]);
  const needsImatrix = /IQ1|IQ2|IQ3_XXS/.test(ftype) ||
    overrides.some(([, id]) => IMATRIX_TYPES.has(id));
  // llama.cpp's choices for these file types differ with an importance
  // matrix, which its type-choice entry point does not take.
  const streamed = quantised && !viaLlama &&
    !(needsImatrix && /IQ3_XXS|IQ4_NL|IQ4_XS|Q4_0|Q5_0/.test(ftype));
  // The generator holds one tensor at a time, drawn in F32 (plus its F16 copy
  // for F16): refuse before starting when that cannot fit in memory.
  const counts = countParams({ arch, shape, ...fields });
  const need = counts.largest * (type === "F32" ? 4 : 6);
  const available = Deno.systemMemoryInfo().available;
  if (!streamed && need > 0.8 * available) {
    throw new Error(
      `the largest tensor of this model (${(counts.largest / 1e9).toFixed(2)} G values) needs ` +
        `${human(need)} in memory while it is written, and ${human(available)} is available; ` +
        `use fewer --layers or a smaller --experts/--ff, or a machine with more memory`,
    );
  }
  // a multi-GiB file stopped half-way should not stay on the disk
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    Deno.addSignalListener(signal, () => {
      const made = [
        `${out}.tmp-${Deno.pid}`,
        `${out}.f32-${Deno.pid}.tmp`,
        `${out}.${type}-${Deno.pid}.tmp`,
      ];
      for (const tmp of made) {
        try {
          Deno.removeSync(tmp);
        } catch { /* not made yet */ }
      }
      console.error(`make-model: stopped by ${signal}; nothing was left at ${out}`);
      Deno.exit(130);
    });
  }
  const t0 = performance.now();
  let workers = "";
  if (type === "F32" || type === "F16") {
    await writeGgufFileLazy(out, syntheticModelLazy({ ...spec, weightType: type }));
  } else if (streamed) {
    let shown = t0;
    const done = await writeQuantizedSynthetic(out, spec, {
      ftype,
      tensorTypes: overrides,
      imatrix: needsImatrix,
      workers: threads,
      onProgress: (written, total) => {
        const now = performance.now();
        if (now - shown < 15_000) return;
        shown = now;
        console.error(
          `make-model: ${human(written)} of ${human(total)} (${
            (100 * written / total).toFixed(0)
          }%) in ${((now - t0) / 1000).toFixed(0)} s`,
        );
      },
    });
    workers = ` | ${done.workers} workers`;
  } else {
    const f32 = `${out}.f32-${Deno.pid}.tmp`;
    const tmp = `${out}.${type}-${Deno.pid}.tmp`;
    try {
      const sourceType = counts.total * 4 > 16 * 2 ** 30 ? "F16" : "F32";
      await writeGgufFileLazy(f32, syntheticModelLazy({ ...spec, weightType: sourceType }));
      loadReference().quantize(f32, tmp, ftype, {
        tensorTypes: overrides,
        imatrix: needsImatrix ? syntheticImatrix(f32) : undefined,
      });
      await Deno.rename(tmp, out);
    } finally {
      await Deno.remove(f32).catch(() => {});
      await Deno.remove(tmp).catch(() => {});
    }
  }
  const ms = performance.now() - t0;

  const model = readGgufModel(out);
  let params = 0;
  let expertParams = 0;
  let expertBytes = 0;
  const types = new Map<string, number>();
  for (const t of model.tensors) {
    params += t.nElements;
    types.set(t.type.name, (types.get(t.type.name) ?? 0) + 1);
    if (isExpertTensor(t.name)) {
      expertParams += t.nElements;
      expertBytes += t.nBytes;
    }
  }
  const fileSize = model.files[0]!.fileSize;
  const typeList = [...types].map(([name, n]) => `${name}×${n}`).join(" ");
  console.log(
    `${out}: ${arch} ${type} ${spec.nLayer}L embd ${spec.nEmbd} heads ${spec.nHead}/${spec.nHeadKv}` +
      ` experts ${spec.nExpertUsed}/${spec.nExpert} vocab ${spec.vocab!.nTokens}` +
      ` | params ${count(params)} (experts ${count(expertParams)})` +
      ` | ${human(fileSize)} (experts ${human(expertBytes)}) | tensors ${typeList}` +
      ` | ${ms.toFixed(0)} ms${workers}`,
  );
}

if (import.meta.main) {
  try {
    await main();
  } catch (e) {
    console.error(`make-model: ${e instanceof Error ? e.message : e}`);
    Deno.exit(1);
  }
}
