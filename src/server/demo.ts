/**
 * The demo models. `deno task serve` and `deno task run` without a model
 * flag run the trained one committed with the repository,
 * `data/kjv-moe-Q8_0.gguf` (a small Mixtral-style MoE trained on the King
 * James Bible, see `data/kjv-moe-Q8_0.md`), at an expert budget below its
 * expert bytes so that experts stream from the first request.
 *
 * Where that file is absent (a package imported from JSR, which does not
 * ship `data/`), they fall back to the random-weight demo model, which tests
 * also use: generated from `demoModelSpec()` on first use and cached under
 * `$XDG_CACHE_HOME/od-moe/` (or `~/.cache/od-moe/`), named from a hash of
 * the spec so a changed spec makes a new file. Written to a temporary name
 * and renamed; a cached file that cannot be read whole is made again.
 *
 * ```ts ignore
 * import { ensureDemoModel } from "./demo.ts";
 * const path = await ensureDemoModel();
 * ```
 *
 * @module
 */

import { demoModelSpec, syntheticModel, type SyntheticSpec } from "../model/synthetic.ts";
import { writeGgufFile } from "../gguf/writer.ts";
import { readGgufHeader, readGgufModel } from "../gguf/reader.ts";
import { expertLayout } from "../experts/layout.ts";

/** The trained demo model's file name, in the repository's `data/` folder. */
export const TRAINED_DEMO_FILE = "kjv-moe-Q8_0.gguf";

/**
 * The fraction of the trained demo's expert bytes that `serve` and `run`
 * give the expert pool by default: about a third of its 32 experts, so a
 * token's 8 routed experts are often but not always resident and `/metrics`
 * shows loads, hits and prefetches from the first request.
 */
export const TRAINED_DEMO_BUDGET_FRACTION = 1 / 3;

/** The trained demo model and the default expert budget it is served with. */
export interface TrainedDemo {
  /** Path of `data/kjv-moe-Q8_0.gguf`. */
  path: string;
  /** Bytes of all its routed experts. */
  expertBytes: number;
  /** The default budget, GiB ({@linkcode TRAINED_DEMO_BUDGET_FRACTION} of `expertBytes`). */
  cacheSizeGB: number;
}

/**
 * The trained demo model next to this module (`../../data/`), or null when
 * this copy of od-moe has no readable one (imported over the network, or
 * the file is missing or cut short).
 */
export function trainedDemoModel(dataDir?: string): TrainedDemo | null {
  let path: string;
  if (dataDir !== undefined) {
    path = `${dataDir}/${TRAINED_DEMO_FILE}`;
  } else {
    const url = new URL(`../../data/${TRAINED_DEMO_FILE}`, import.meta.url);
    if (url.protocol !== "file:") return null;
    path = decodeURIComponent(url.pathname);
    if (Deno.build.os === "windows") path = path.replace(/^\/([A-Za-z]:)/, "$1");
  }
  if (!isCompleteGguf(path)) return null;
  const expertBytes = expertLayout(readGgufModel(path)).reduce(
    (s, l) => s + l.nExpert * l.bytesPerExpert,
    0,
  );
  return { path, expertBytes, cacheSizeGB: (expertBytes * TRAINED_DEMO_BUDGET_FRACTION) / 2 ** 30 };
}

/** Bump when the generator changes the bytes a spec gives. */
const DEMO_FORMAT = 1;

/**
 * The cache directory: `$XDG_CACHE_HOME/od-moe`, else `$HOME/.cache/od-moe`
 * (`%LOCALAPPDATA%\od-moe` on Windows), else a folder in the temp directory.
 */
export function demoCacheDir(): string {
  const env = (k: string) => {
    try {
      return Deno.env.get(k) || undefined;
    } catch {
      return undefined; // no --allow-env: fall through
    }
  };
  const xdg = env("XDG_CACHE_HOME");
  if (xdg) return `${xdg}/od-moe`;
  const local = env("LOCALAPPDATA");
  if (Deno.build.os === "windows" && local) return `${local}\\od-moe`;
  const home = env("HOME") ?? env("USERPROFILE");
  if (home) return `${home}/.cache/od-moe`;
  return `${env("TMPDIR") ?? "/tmp"}/od-moe-cache`;
}

/** The cache file name of a spec: `demo-<12 hex digits of its SHA-256>.gguf`. */
export async function demoFileName(spec: SyntheticSpec = demoModelSpec()): Promise<string> {
  const json = JSON.stringify({ format: DEMO_FORMAT, spec }, (_k, v) => {
    if (typeof v === "bigint") return `${v}n`;
    if (ArrayBuffer.isView(v)) return Array.from(v as unknown as ArrayLike<number>);
    return v;
  });
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(json));
  const hex = Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
  return `demo-${hex.slice(0, 12)}.gguf`;
}

/** Whether `path` is a GGUF file whose every tensor lies inside it. */
export function isCompleteGguf(path: string): boolean {
  try {
    const h = readGgufHeader(path);
    if (h.tensors.length === 0) return false;
    const end = Math.max(...h.tensors.map((t) => t.fileOffset + t.nBytes));
    return end <= h.fileSize;
  } catch {
    return false;
  }
}

/** Options of {@linkcode ensureDemoModel}. */
export interface DemoModelOptions {
  /** Where to cache it (default {@linkcode demoCacheDir}). */
  cacheDir?: string;
  /** The spec (default `demoModelSpec()`). */
  spec?: SyntheticSpec;
  /** Told when the file is being generated. */
  log?: (message: string) => void;
}

/** The path of the demo model's GGUF, generating it when absent or unreadable. */
export async function ensureDemoModel(o: DemoModelOptions = {}): Promise<string> {
  const spec = o.spec ?? demoModelSpec();
  const dir = o.cacheDir ?? demoCacheDir();
  const path = `${dir}/${await demoFileName(spec)}`;
  if (isCompleteGguf(path)) return path;
  try {
    await Deno.mkdir(dir, { recursive: true });
  } catch (e) {
    throw new Error(
      `cannot create the demo model's cache directory '${dir}': ${(e as Error).message}. ` +
        `Set XDG_CACHE_HOME to a writable directory, or pass --model.`,
      { cause: e },
    );
  }
  o.log?.(`generating the demo model into ${path} (first start only)`);
  await Deno.remove(path).catch(() => {});
  await writeGgufFile(path, syntheticModel(spec));
  if (!isCompleteGguf(path)) {
    throw new Error(`the demo model written to '${path}' cannot be read back`);
  }
  return path;
}
