/**
 * The npm packages that only the tests, benchmarks and development tools use.
 *
 * They are not in `deno.json`'s imports, so a user's `deno task serve`, `run` or
 * `convert` never downloads them (node-llama-cpp pulls in every platform build of
 * llama.cpp, ~770 MB). `deno task dev-install` caches this file's graph into
 * `node_modules/` with its own lockfile, `dev/deno.lock`; the test, bench and
 * development tasks run with `--lock=dev/deno.lock`. A test-only package is added
 * here and imported elsewhere by its full `npm:name@version` specifier.
 *
 * - `node-llama-cpp`: llama.cpp's source as a git bundle (vocabularies, headers).
 * - `@node-llama-cpp/linux-x64`: llama.cpp's CPU shared libraries, the reference.
 * - `@node-llama-cpp/linux-x64-vulkan`, `-cuda` and `-cuda-ext`: llama.cpp's
 *   GPU builds of the same release, for `deno task bench gpu` (od-moe
 *   against llama.cpp on the same GPU; the CUDA 12 fallback is in `-ext`).
 * - `openai`: the official client, to test the OpenAI-compatible endpoints.
 * - `ajv`: a JSON-schema validator, to check that constrained decoding's
 *   output validates against the schema it was given.
 * - `playwright-core`: drives the system's Chromium (no browser download) for
 *   the web page's tests.
 *
 * @module
 */

export type {} from "npm:node-llama-cpp@3.21.1";
export type {} from "npm:@node-llama-cpp/linux-x64@3.21.1";
export type {} from "npm:@node-llama-cpp/linux-x64-vulkan@3.21.1";
export type {} from "npm:@node-llama-cpp/linux-x64-cuda@3.21.1";
export type {} from "npm:@node-llama-cpp/linux-x64-cuda-ext@3.21.1";
export { default as OpenAI } from "npm:openai@7.57.0";
export { Ajv } from "npm:ajv@8.20.0";
export { type BrowserContext, chromium, type Page } from "npm:playwright-core@1.65.1";
