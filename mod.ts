/**
 * od-moe: run Mixture-of-Experts language models larger than memory, straight
 * from GGUF files, on any WebGPU adapter.
 *
 * @module
 */
export * from "./src/gguf/types.ts";
