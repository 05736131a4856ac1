/**
 * llama.cpp's source tree, as pinned by the `node-llama-cpp` npm package.
 *
 * The package ships the exact llama.cpp commit its binaries were built from
 * as a git bundle. Tests need files from it — the vocabulary-only GGUFs
 * (`models/ggml-vocab-*.gguf`) with their tokenizer test cases, and headers
 * to read — so it is cloned once into `<repo>/.cache/llama.cpp-src`.
 *
 * @module
 */

import { fileURLToPath } from "node:url";

/** The repository root (two levels above this file). */
export const REPO_ROOT: string = fileURLToPath(new URL("../../", import.meta.url)).replace(
  /\/$/,
  "",
);

/** The git bundle of llama.cpp's source that `deno install` puts in `node_modules`. */
export const LLAMA_BUNDLE_PATH: string =
  `${REPO_ROOT}/node_modules/node-llama-cpp/llama/gitRelease.bundle`;

/** Where {@linkcode llamaSourceDir} clones the bundle. */
export const LLAMA_SOURCE_DIR: string = `${REPO_ROOT}/.cache/llama.cpp-src`;

let pending: Promise<string> | undefined;

/**
 * Returns the path of a checkout of llama.cpp's source matching the reference
 * libraries, cloning the bundle the first time.
 *
 * The clone goes to a temporary directory that is renamed into place only once
 * `git clone` has succeeded, so a directory at {@linkcode LLAMA_SOURCE_DIR} is
 * always complete; two processes racing both clone and the loser discards its
 * copy.
 *
 * @throws if the bundle is missing (run `deno install`) or `git` fails.
 */
export function llamaSourceDir(): Promise<string> {
  pending ??= ensureClone().catch((e) => {
    pending = undefined;
    throw e;
  });
  return pending;
}

/**
 * The path of llama.cpp's vocabulary-only GGUF for `name`
 * (`<src>/models/ggml-vocab-<name>.gguf`), cloning the source first if needed.
 * Its tokenizer test cases sit beside it with `.inp` and `.out` appended.
 *
 * @param name the vocabulary name (`"qwen2"`, `"llama-spm"`, `"gpt-2"`, …)
 * @throws if llama.cpp has no such vocabulary; the message lists those it has.
 */
export async function vocabPath(name: string): Promise<string> {
  const src = await llamaSourceDir();
  const path = `${src}/models/ggml-vocab-${name}.gguf`;
  if (!(await exists(path))) {
    const names: string[] = [];
    for await (const e of Deno.readDir(`${src}/models`)) {
      const m = /^ggml-vocab-(.+)\.gguf$/.exec(e.name);
      if (m?.[1] !== undefined) names.push(m[1]);
    }
    throw new Error(
      `no llama.cpp vocabulary "${name}" (${path}); have: ${names.sort().join(", ")}`,
    );
  }
  return path;
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

/** A file every complete checkout has; its absence means a damaged cache. */
const MARKER = "include/llama.h";

async function ensureClone(): Promise<string> {
  if (await exists(LLAMA_SOURCE_DIR)) {
    if (await exists(`${LLAMA_SOURCE_DIR}/${MARKER}`)) return LLAMA_SOURCE_DIR;
    // Only renamed-into-place clones live here, so this was damaged by hand.
    await Deno.remove(LLAMA_SOURCE_DIR, { recursive: true });
  }
  if (!(await exists(LLAMA_BUNDLE_PATH))) {
    throw new Error(
      `llama.cpp source bundle not found at ${LLAMA_BUNDLE_PATH}: run \`deno install\` in ${REPO_ROOT}`,
    );
  }
  const cacheDir = `${REPO_ROOT}/.cache`;
  await Deno.mkdir(cacheDir, { recursive: true });
  const tmp = await Deno.makeTempDir({ dir: cacheDir, prefix: "llama.cpp-src.partial-" });
  try {
    const target = `${tmp}/src`;
    const out = await new Deno.Command("git", {
      args: ["clone", "-q", LLAMA_BUNDLE_PATH, target],
      stdout: "piped",
      stderr: "piped",
    }).output().catch((e) => {
      throw new Error(`cannot run git to clone llama.cpp's source: ${e}`);
    });
    if (!out.success) {
      throw new Error(
        `git clone -q ${LLAMA_BUNDLE_PATH} ${target} failed (exit ${out.code}): ${
          new TextDecoder().decode(out.stderr).trim()
        }`,
      );
    }
    try {
      await Deno.rename(target, LLAMA_SOURCE_DIR);
    } catch (e) {
      // Another process finished first; its clone is as good as ours.
      if (!(await exists(LLAMA_SOURCE_DIR))) throw e;
    }
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
  return LLAMA_SOURCE_DIR;
}
