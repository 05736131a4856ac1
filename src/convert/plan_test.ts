import assert from "node:assert/strict";
import { GgmlType, requireGgmlType } from "../gguf/types.ts";
import { parseGguf } from "../gguf/reader.ts";
import { serializeGguf } from "../gguf/writer.ts";
import { gv } from "../gguf/value.ts";
import { ConvertError } from "./errors.ts";
import { baseShardName, expertPath } from "../converted/layout.ts";
import { planConversion, tensorOutput } from "./plan.ts";

const t = requireGgmlType;

Deno.test("tensorOutput: keep stores quantised blocks as U8 and plain types as themselves", () => {
  const q = tensorOutput("w", t(GgmlType.Q4_K), [256, 3], "keep");
  assert.deepEqual([q.dtype, q.shape, q.ggmlType.name, q.nBytes, q.dequantize], [
    "U8",
    [432],
    "Q4_K",
    432,
    false,
  ]);
  const h = tensorOutput("w", t(GgmlType.F16), [8, 3], "keep");
  assert.deepEqual([h.dtype, h.shape, h.ggmlShape, h.nBytes], ["F16", [3, 8], [8, 3], 48]);
  const i = tensorOutput("w", t(GgmlType.I32), [4], "float16");
  assert.deepEqual([i.dtype, i.dequantize], ["I32", false]);
});

Deno.test("tensorOutput: float targets dequantise matrices and keep vectors in F32", () => {
  const m = tensorOutput("w", t(GgmlType.Q8_0), [64, 2], "bfloat16");
  assert.deepEqual([m.dtype, m.shape, m.ggmlType.name, m.nBytes, m.dequantize], [
    "BF16",
    [2, 64],
    "BF16",
    256,
    true,
  ]);
  const v = tensorOutput("n", t(GgmlType.F32), [64], "float16");
  assert.deepEqual([v.dtype, v.dequantize], ["F32", false]);
  const vh = tensorOutput("n", t(GgmlType.F16), [64], "float16");
  assert.deepEqual([vh.dtype, vh.dequantize], ["F32", true]);
  const same = tensorOutput("w", t(GgmlType.F16), [64, 2], "float16");
  assert.equal(same.dequantize, false);
  const iq = tensorOutput("blk.0.ffn_up_exps.weight", t(GgmlType.IQ2_XXS), [256, 2], "float16");
  assert.deepEqual([iq.dtype, iq.nBytes, iq.dequantize], ["F16", 1024, true]);
  const iqKeep = tensorOutput("blk.0.ffn_up_exps.weight", t(GgmlType.IQ1_M), [256, 2], "keep");
  assert.deepEqual([iqKeep.dtype, iqKeep.nBytes, iqKeep.ggmlType.name], ["U8", 112, "IQ1_M"]);
  // A type without a CPU dequantiser (ggml's retired interleaved Q4_0_4_4, id 31).
  const retired = { id: 31, name: "Q4_0_4_4", blockSize: 32, typeSize: 18, quantized: true };
  assert.throws(
    () => tensorOutput("blk.0.ffn_up_exps.weight", retired, [256, 2], "float16"),
    (e: unknown) =>
      e instanceof ConvertError &&
      /blk\.0\.ffn_up_exps\.weight: ggml type Q4_0_4_4 has no CPU dequantiser.*--output-dtype keep/
        .test(e.message),
  );
});

Deno.test("planConversion: a model missing a tensor of its plan is refused naming it", () => {
  const f32 = (name: string, shape: number[]) => ({
    name,
    type: GgmlType.F32,
    shape,
    data: new Uint8Array(shape.reduce((a, b) => a * b, 4)),
  });
  const bytes = serializeGguf({
    metadata: [
      ["general.architecture", gv.str("qwen3moe")],
      ["qwen3moe.context_length", gv.u32(64)],
      ["qwen3moe.embedding_length", gv.u32(8)],
      ["qwen3moe.block_count", gv.u32(1)],
      ["qwen3moe.attention.head_count", gv.u32(2)],
      ["qwen3moe.expert_count", gv.u32(2)],
      ["qwen3moe.expert_used_count", gv.u32(1)],
      ["qwen3moe.expert_feed_forward_length", gv.u32(4)],
      ["qwen3moe.vocab_size", gv.u32(10)],
    ],
    tensors: [f32("token_embd.weight", [8, 10]), f32("output_norm.weight", [8])],
  });
  const header = parseGguf(bytes, "m.gguf");
  const model = {
    files: [header],
    metadata: header.metadata,
    tensors: header.tensors,
    tensorMap: new Map(header.tensors.map((x) => [x.name, x])),
    architecture: "qwen3moe",
  };
  assert.throws(
    () => planConversion(model),
    /m\.gguf: tensor blk\.0\.attn_norm\.weight is missing \(expected shape \[8\]\), so the qwen3moe base would be incomplete/,
  );
});

Deno.test("file names", () => {
  assert.equal(baseShardName(0, 1), "model.safetensors");
  assert.equal(baseShardName(1, 3), "model-00002-of-00003.safetensors");
  assert.equal(expertPath(12, 37), "layer_012/expert_037.safetensors");
  assert.equal(expertPath(3, 1000, 3, 4), "layer_003/expert_1000.safetensors");
});
