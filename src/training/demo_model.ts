/**
 * The generated model the predictor's example, benchmark and tests run on:
 * a small qwen3moe (64 wide, 6 layers, 16 experts of 64, top-2, the built-in
 * vocabulary), so that the expert cache matters (96 experts) while a
 * software adapter still decodes it in milliseconds. Its routing is a fixed
 * function of the hidden states, so a predictor can learn it.
 *
 * @module
 */

import { syntheticModel, type SyntheticSpec } from "../model/synthetic.ts";
import { builtinTokenizer } from "../model/vocab.ts";
import { writeGgufFile } from "../gguf/writer.ts";

/** The demo model's spec. */
export function predictorDemoSpec(): SyntheticSpec {
  return {
    arch: "qwen3moe",
    name: "od-moe predictor demo (random weights)",
    nEmbd: 64,
    nLayer: 6,
    nHead: 2,
    nHeadKv: 1,
    headDim: 32,
    nFfExp: 64,
    nExpert: 16,
    nExpertUsed: 2,
    nCtx: 512,
    ropeBase: 10_000,
    rmsEps: 1e-6,
    seed: 7,
    vocab: builtinTokenizer(),
  };
}

/** Where the demo model is cached (bump the version when the spec changes). */
export const DEMO_MODEL_PATH: string =
  new URL("../../.cache/predictor/demo-v1.gguf", import.meta.url)
    .pathname;

/** The path of the demo model, generated on first use (or into `path`). */
export async function predictorDemoModel(path = DEMO_MODEL_PATH): Promise<string> {
  try {
    await Deno.stat(path);
    return path;
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  await Deno.mkdir(path.replace(/\/[^/]*$/, ""), { recursive: true });
  // writeGgufFile writes a temporary name and renames: concurrent callers never see half a file
  await writeGgufFile(path, syntheticModel(predictorDemoSpec()));
  return path;
}
