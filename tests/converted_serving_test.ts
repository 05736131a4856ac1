/**
 * The converter's output serves: `--base-weights DIR/base_model` with
 * `--expert-dir DIR/experts` or `--gguf-experts model.gguf` gives exactly the
 * original GGUF's tokens for `keep`, and llama.cpp's tokens on the same
 * dequantised weights for `float16`.
 */

import assert from "node:assert/strict";
import { gpu, gpuTest, requireGpu } from "../dev/gpu.ts";
import { loadModel, type LoadModelOptions } from "../src/model/model.ts";
import { generate } from "../src/generate/session.ts";
import { convertGguf } from "../src/convert/convert.ts";
import { Rng } from "../src/util/rng.ts";
import { fixtureDequantized, fixtureModel } from "../dev/fixtures.ts";
import type { SyntheticArch } from "../src/model/synthetic.ts";
import { loadReference, referenceUnavailableReason } from "../dev/ref/llama_cpp.ts";

const N = 12;

async function greedy(o: LoadModelOptions, prompt: number[]) {
  const model = await loadModel({ ...o, gpu: requireGpu(), nCtx: 64, maxBatch: 8 });
  try {
    const logits = await model.forward(prompt);
    model.reset();
    return { tokens: (await generate(model, prompt, { maxTokens: N })).tokens, logits };
  } finally {
    model.close();
  }
}

for (const arch of ["llama", "qwen2moe", "qwen3moe"] as SyntheticArch[]) {
  gpuTest({
    name:
      `converted ${arch}: keep serves the original's tokens both ways; float16 matches llama.cpp`,
    sanitizeResources: false,
    async fn(_gpu, t) {
      const src = await fixtureModel({ arch, type: "Q4_K_M", shape: "b" });
      const dir = await Deno.makeTempDir();
      try {
        await convertGguf({ input: src, output: `${dir}/keep`, outputDtype: "keep", sync: false });
        await convertGguf({
          input: src,
          output: `${dir}/f16`,
          outputDtype: "float16",
          sync: false,
        });
        const rng = new Rng(3);
        const prompt = Array.from({ length: 8 }, () => rng.int(1000));
        const original = await greedy({ model: src }, prompt);
        const keepDir = await greedy({
          baseWeights: `${dir}/keep/base_model`,
          expertDir: `${dir}/keep/experts`,
        }, prompt);
        assert.deepEqual(keepDir.tokens, original.tokens, "keep + expert dir");
        assert.deepEqual(keepDir.logits, original.logits, "keep + expert dir: logits bit for bit");
        const keepGguf = await greedy(
          { baseWeights: `${dir}/keep/base_model`, ggufExperts: src, cacheSizeGB: 0 },
          prompt,
        );
        assert.deepEqual(keepGguf.tokens, original.tokens, "keep base + GGUF experts, streaming");
        const streamedDir = await greedy(
          {
            baseWeights: `${dir}/keep/base_model`,
            expertDir: `${dir}/keep/experts`,
            cacheSizeGB: 0,
          },
          prompt,
        );
        assert.deepEqual(streamedDir.tokens, original.tokens, "keep + expert dir, streaming");

        const f16 = await greedy({
          baseWeights: `${dir}/f16/base_model`,
          expertDir: `${dir}/f16/experts`,
        }, prompt);
        const f16Gguf = await greedy(
          { baseWeights: `${dir}/f16/base_model`, ggufExperts: src },
          prompt,
        );
        assert.equal(f16Gguf.tokens.length, N);
        const skip = referenceUnavailableReason();
        if (skip) {
          // visible in the report as an ignored step, not a silent pass
          await t.step({ name: `llama.cpp comparison (${skip})`, ignore: true, fn() {} });
          return;
        }
        const ref = loadReference().loadModel(
          await fixtureDequantized({ arch, type: "Q4_K_M", shape: "b" }),
        );
        try {
          const run = ref.greedy(prompt, N);
          const want = run.logits[0]!;
          let min = Infinity, max = -Infinity, diff = 0;
          for (let i = 0; i < want.length; i++) {
            min = Math.min(min, want[i]!);
            max = Math.max(max, want[i]!);
            diff = Math.max(diff, Math.abs(want[i]! - f16.logits[i]!));
          }
          assert.ok(diff <= 0.01 * (max - min), `float16: logit diff ${diff} > 1% of ${max - min}`);
          assert.deepEqual(
            f16.tokens,
            run.tokens,
            "float16 tokens vs llama.cpp on the dequantised weights",
          );
          console.log(
            `${arch}: float16 max logit diff ${(100 * diff / (max - min)).toFixed(3)}% of range`,
          );
        } finally {
          ref.close();
        }
      } finally {
        await Deno.remove(dir, { recursive: true });
      }
    },
  });
}

Deno.test({
  name: "converted: mismatched or missing pieces give clear errors",
  sanitizeResources: false,
  async fn() {
    const a = await fixtureModel({ arch: "qwen3moe", type: "F16", shape: "a" });
    const b = await fixtureModel({ arch: "qwen3moe", type: "F16", shape: "b" });
    const dir = await Deno.makeTempDir();
    try {
      await convertGguf({ input: a, output: `${dir}/a`, outputDtype: "keep", sync: false });
      await assert.rejects(
        () => loadModel({ baseWeights: `${dir}/a/base_model`, ggufExperts: b, gpu: gpu }),
        /experts from another model/,
      );
      await assert.rejects(
        () => loadModel({ baseWeights: `${dir}/a/base_model` }),
        /add expertDir .* or ggufExperts/,
      );
      await assert.rejects(
        () => loadModel({ baseWeights: `${dir}/nope`, expertDir: `${dir}/a/experts` }),
        /nope/,
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
