import nodeAssert from "node:assert/strict";

const assert = (cond: boolean, message: string) => nodeAssert.ok(cond, message);
const assertEquals = (a: unknown, b: unknown, message?: string) =>
  nodeAssert.deepStrictEqual(a, b, message);
import { writeQuantizedSynthetic } from "./quant_stream.ts";
import { type FixtureOptions, fixtureSpec } from "./fixtures.ts";
import {
  QUANT_RECIPES,
  type QuantRecipe,
  syntheticImatrix,
  tensorTypeIds,
} from "./quant_recipes.ts";
import { type LlamaFtypeName, loadReference, referenceUnavailableReason } from "./ref/llama_cpp.ts";
import { syntheticModelLazy } from "../src/model/synthetic.ts";
import { writeGgufFileLazy } from "../src/gguf/writer.ts";
import { readGgufModel } from "../src/gguf/reader.ts";
import { Keys } from "../src/gguf/names.ts";

const ignore = referenceUnavailableReason() !== null;
if (ignore) console.warn(`skipping quant_stream tests: ${referenceUnavailableReason()}`);

/**
 * Writes `options`' model quantised both ways — llama_model_quantize from the
 * F32 file, and the streaming writer — and asserts the tensor table, every
 * tensor's bytes, the metadata's order and so the whole file are the same.
 */
async function sameAsLlamaQuantize(
  options: FixtureOptions,
  type: LlamaFtypeName | keyof typeof QUANT_RECIPES,
  stream: { workers: number; maxPieceValues?: number },
): Promise<string> {
  const spec = await fixtureSpec(options);
  const dir = await Deno.makeTempDir({ prefix: "quant-stream-" });
  try {
    const recipe = (QUANT_RECIPES as Record<string, QuantRecipe>)[type];
    const ftype = (recipe?.ftype ?? type) as LlamaFtypeName;
    const tensorTypes = recipe ? tensorTypeIds(recipe.tensorTypes) : [];
    await writeGgufFileLazy(`${dir}/f32.gguf`, syntheticModelLazy({ ...spec, weightType: "F32" }));
    loadReference().quantize(`${dir}/f32.gguf`, `${dir}/ref.gguf`, ftype, {
      tensorTypes,
      imatrix: recipe ? syntheticImatrix(`${dir}/f32.gguf`) : undefined,
    });
    await writeQuantizedSynthetic(`${dir}/stream.gguf`, spec, {
      ftype,
      tensorTypes,
      imatrix: recipe !== undefined,
      ...stream,
    });
    const ref = readGgufModel(`${dir}/ref.gguf`);
    const got = readGgufModel(`${dir}/stream.gguf`);
    const table = (m: typeof ref) => m.tensors.map((t) => `${t.name} ${t.type.name} ${t.shape}`);
    assertEquals(table(got), table(ref), `${options.arch} ${type}: tensor names, types, shapes`);
    for (const key of [Keys.fileType, Keys.quantizationVersion]) {
      assertEquals(got.metadata.get(key), ref.metadata.get(key), key);
    }
    const refBytes = await Deno.readFile(`${dir}/ref.gguf`);
    const gotBytes = await Deno.readFile(`${dir}/stream.gguf`);
    // metadata in the same order (the header too): the whole file is llama.cpp's
    assertEquals(
      [...got.metadata.entries.keys()],
      [...ref.metadata.entries.keys()],
      `${options.arch} ${type}: metadata keys`,
    );
    for (const r of ref.tensors) {
      const g = got.tensorMap.get(r.name)!;
      const a = refBytes.subarray(r.fileOffset, r.fileOffset + r.nBytes);
      const b = gotBytes.subarray(g.fileOffset, g.fileOffset + g.nBytes);
      const at = a.findIndex((v, i) => v !== b[i]);
      assert(at < 0, `${options.arch} ${type}: ${r.name} (${r.type.name}) differs at byte ${at}`);
    }
    assert(
      gotBytes.length === refBytes.length && gotBytes.every((v, i) => v === refBytes[i]),
      `${options.arch} ${type}: the files differ`,
    );
    // llama.cpp itself loads the streamed file.
    using model = loadReference().loadModel(`${dir}/stream.gguf`);
    assertEquals(model.nLayer, spec.nLayer);
    return [...new Set(got.tensors.map((t) => t.type.name))].sort().join(" ");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test({
  name: "streamed Q4_K_M equals llama_model_quantize's file (qwen3moe, deepseek2), in workers",
  ignore,
  async fn() {
    // Pieces of two rows: many per expert, none across an expert.
    const types = await sameAsLlamaQuantize({ arch: "qwen3moe", shape: "b" }, "MOSTLY_Q4_K_M", {
      workers: 2,
      maxPieceValues: 2 * 256,
    });
    assertEquals(types, "F32 Q4_K Q6_K");
    await sameAsLlamaQuantize({ arch: "deepseek2", shape: "b" }, "MOSTLY_Q4_K_M", { workers: 2 });
  },
});

Deno.test({
  name: "streamed MXFP4_MOE (gpt-oss) and IQ2_MIX (imatrix per expert) equal llama.cpp's files",
  ignore,
  async fn() {
    const mx = await sameAsLlamaQuantize({ arch: "gpt-oss", shape: "b" }, "MOSTLY_MXFP4_MOE", {
      workers: 0,
    });
    assert(mx.includes("MXFP4") && mx.includes("Q8_0"), mx);
    // An importance-weighted type gets its own expert's weights in every piece.
    const iq = await sameAsLlamaQuantize({ arch: "qwen3moe", shape: "b" }, "IQ2_MIX", {
      workers: 0,
      maxPieceValues: 3 * 256,
    });
    assert(iq.includes("IQ2_XXS") && iq.includes("IQ3_XXS"), iq);
  },
});

Deno.test({
  name: "a type that needs an importance matrix, given none, fails naming the type, in a worker",
  ignore,
  async fn() {
    const spec = await fixtureSpec({ arch: "qwen3moe", shape: "b" });
    const path = `${await Deno.makeTempDir()}/m.gguf`;
    let message = "";
    try {
      await writeQuantizedSynthetic(path, spec, {
        ftype: "MOSTLY_Q4_K_M",
        tensorTypes: tensorTypeIds([["ffn_down_exps", "IQ2_XXS"]]),
        imatrix: false,
        workers: 1,
      });
    } catch (e) {
      message = (e as Error).message;
    }
    assert(message.includes("iq2_xxs") && message.includes("importance matrix"), message);
    // nothing half-written is left at the path
    let exists = true;
    await Deno.stat(path).catch(() => exists = false);
    assert(!exists, `${path} was left behind`);
    await Deno.remove(path.replace(/\/m\.gguf$/, ""), { recursive: true });
  },
});

Deno.test("a streamed tensor whose pieces do not add up to its size is refused, by name", async () => {
  const path = await Deno.makeTempFile();
  try {
    let message = "";
    try {
      await writeGgufFileLazy(path, {
        metadata: [],
        tensors: [{
          name: "short.weight",
          type: 0,
          shape: [4, 2],
          chunks: function* () {
            yield new Uint8Array(16);
          },
        }],
      });
    } catch (e) {
      message = (e as Error).message;
    }
    assert(message.includes("short.weight") && message.includes("32"), message);
  } finally {
    await Deno.remove(path);
  }
});
