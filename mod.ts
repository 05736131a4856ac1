/**
 * od-moe: run Mixture-of-Experts language models larger than memory,
 * straight from GGUF files, on any WebGPU adapter. Base weights live on the
 * GPU; routed experts stream from memory-mapped files into a bounded pool
 * of GPU buffers when a token is routed to them.
 *
 * Text in, text out:
 *
 * ```ts ignore
 * import { Engine } from "jsr:@od-moe/od-moe";
 *
 * const engine = await Engine.load({ model: "qwen3-30b-a3b-q4_k_m.gguf", cacheSizeGB: 4 });
 * const { text, stats } = await engine.generate(
 *   { messages: [{ role: "user", content: "Hello!" }], maxTokens: 64 },
 *   (piece) => console.log(piece.text),
 * );
 * console.log(stats.decodeTokensPerSecond, stats.cacheHitRate);
 * engine.close();
 * ```
 *
 * Token ids in, token ids out:
 *
 * ```ts ignore
 * import { generate, loadModel } from "jsr:@od-moe/od-moe";
 *
 * const model = await loadModel({ model: "m.gguf", cacheSizeGB: 0 });
 * const logits = await model.forward([1, 2, 3]);
 * const { tokens } = await generate(model, [4, 5], { maxTokens: 8 });
 * model.close();
 * ```
 *
 * Needs `--allow-read --allow-ffi` (memory-mapped files) or `-A`.
 *
 * @module
 */

export {
  Engine,
  type EngineOptions,
  type GenerateOutput,
  RequestError,
} from "./src/generate/engine.ts";
export type {
  ChatMessage,
  FinishReason,
  GenerateRequest,
  GenerationStats,
  SamplingParams,
  StreamChunk,
} from "./src/generate/types.ts";
export {
  generate,
  generateSteps,
  Session,
  type SessionOutput,
  type StepsOptions,
  type StepsResult,
} from "./src/generate/session.ts";
export { loadModel, type LoadModelOptions, Model } from "./src/model/model.ts";
export type { ModelConfig } from "./src/model/config.ts";
export { supportedArchitectures, UnsupportedArchitectureError } from "./src/model/registry.ts";
export { Tokenizer } from "./src/tokenizer/tokenizer.ts";
export { applyChatTemplate, renderChat } from "./src/tokenizer/chat.ts";
export {
  type GgufHeader,
  GgufMetadata,
  type GgufModelFile,
  type GgufTensorInfo,
  readGgufHeader,
  readGgufModel,
} from "./src/gguf/reader.ts";
export { serializeGguf, writeGgufFile } from "./src/gguf/writer.ts";
export { GgufError } from "./src/gguf/errors.ts";
export { dequantize } from "./src/gguf/dequant.ts";
export { GgmlType, type GgmlTypeInfo, ggmlTypeInfo } from "./src/gguf/types.ts";
export { expertLayout, type LayerExpertLayout } from "./src/experts/layout.ts";
export { ExpertReadError } from "./src/experts/source.ts";
export { acquireGpu, Gpu, GpuUnavailableError } from "./src/gpu/device.ts";
