/**
 * Experts read from the converter's per-expert safetensors files
 * (`DIR/experts/layer_LLL/expert_EEE.safetensors`), for `--expert-dir`.
 *
 * Each file is checked before its bytes are handed out: against the
 * SHA-256 the converter recorded in `DIR/manifest.json`, the first time it
 * is opened (and again whenever it changes on disk), and against its size
 * and identity on disk at every read, so a file truncated, replaced or
 * deleted while the server runs gives {@link ExpertReadError} naming the
 * file, the layer and the expert instead of a SIGBUS when a mapped page
 * past the new end is touched. Restoring the file makes the next read work.
 *
 * @module
 */

import { createHash } from "node:crypto";
import { type ExpertDir, type ExpertFile, openExpertDir } from "../converted/reader.ts";
import { ConvertedFiles } from "../converted/layout.ts";
import { type ExpertLayerShape, ExpertReadError, type ExpertSource } from "./source.ts";

/** How many expert files stay mapped at once (views handed out stay valid until evicted). */
const OPEN_FILES = 64;

/** Options of {@link ExpertDirSource}. */
export interface ExpertDirSourceOptions {
  /**
   * Check each expert file's SHA-256 against `manifest.json` (in the
   * experts directory's parent) when it is first opened. Default: true when
   * that manifest exists; a directory without one is read unchecked.
   */
  verify?: boolean;
}

/** What a file looked like on disk when it was opened and checked. */
interface Identity {
  readonly ino: number | null;
  readonly dev: number;
  readonly size: number;
  readonly mtime: number | undefined;
  readonly ctime: number | undefined;
}

interface OpenExpert {
  readonly file: ExpertFile;
  readonly id: Identity;
}

function identity(st: Deno.FileInfo): Identity {
  return {
    ino: st.ino,
    dev: st.dev,
    size: st.size,
    mtime: st.mtime?.getTime(),
    ctime: st.ctime?.getTime(),
  };
}

function sameIdentity(a: Identity, b: Identity): boolean {
  return a.ino === b.ino && a.dev === b.dev && a.size === b.size && a.mtime === b.mtime &&
    a.ctime === b.ctime;
}

/**
 * The `manifest.json` records of the files under the experts directory
 * `dir`, keyed by their path relative to `dir`; undefined without a manifest.
 */
function manifestChecksums(
  dir: string,
): Map<string, { size: number; sha256: string }> | undefined {
  const d = dir.replace(/\/+$/, "");
  const cut = d.lastIndexOf("/");
  const root = cut < 0 ? "." : d.slice(0, cut) || "/";
  const name = d.slice(cut + 1);
  let doc: { experts?: { dir?: unknown } | null; files?: unknown };
  try {
    doc = JSON.parse(Deno.readTextFileSync(`${root}/${ConvertedFiles.manifest}`));
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return undefined;
    throw new Error(
      `${root}/${ConvertedFiles.manifest}: cannot read the converter's manifest (${
        (e as Error).message
      }); restore it, or pass verify: false to read the experts unchecked`,
    );
  }
  if (doc?.experts?.dir !== undefined && doc.experts.dir !== name) return undefined;
  const out = new Map<string, { size: number; sha256: string }>();
  if (!Array.isArray(doc?.files)) return out;
  for (const f of doc.files as { path?: unknown; size?: unknown; sha256?: unknown }[]) {
    if (
      typeof f?.path === "string" && f.path.startsWith(`${name}/`) &&
      typeof f.size === "number" && typeof f.sha256 === "string"
    ) {
      out.set(f.path.slice(name.length + 1), { size: f.size, sha256: f.sha256 });
    }
  }
  return out;
}

/** An {@link ExpertSource} over a converted model's expert directory. */
export class ExpertDirSource implements ExpertSource {
  /** The expert layers, in layer order. */
  readonly layers: readonly ExpertLayerShape[];
  /** The directory's reader. */
  readonly dir: ExpertDir;
  /** Files whose checksum was compared with the manifest, since open. */
  verifiedFiles = 0;
  /** Bytes hashed for those checks. */
  verifiedBytes = 0;
  readonly #open = new Map<string, OpenExpert>();
  readonly #checksums: Map<string, { size: number; sha256: string }> | undefined;
  // what each file looked like when its checksum last matched
  readonly #verified = new Map<string, Identity>();

  /** Opens `dir` (`DIR/experts`); its layout is read from `experts.json`. */
  constructor(dir: string | ExpertDir, options: ExpertDirSourceOptions = {}) {
    this.dir = typeof dir === "string" ? openExpertDir(dir) : dir;
    this.layers = this.dir.layers;
    this.#checksums = options.verify === false ? undefined : manifestChecksums(this.dir.dir);
    if (options.verify === true && this.#checksums === undefined) {
      throw new Error(
        `${this.dir.dir}: no ${ConvertedFiles.manifest} next to it to verify the experts against`,
      );
    }
  }

  /** Whether expert files are checked against the manifest's SHA-256. */
  get verifying(): boolean {
    return this.#checksums !== undefined;
  }

  /** The expert's parts (gate, up, down, …) in the layer's tensor order: views of its mapped file. */
  expertParts(layer: number, expert: number): Uint8Array[] {
    const key = `${layer}:${expert}`;
    const path = this.#path(layer, expert);
    const fail = (detail: string, cause?: unknown) =>
      new ExpertReadError(path, layer, expert, undefined, detail, { cause });
    // the file as it is on disk now: a mapped file cut short raises SIGBUS when read
    let now: Identity;
    try {
      now = identity(Deno.statSync(path));
    } catch (e) {
      if (e instanceof RangeError) throw e;
      this.#forget(key);
      throw fail(
        e instanceof Deno.errors.NotFound
          ? "the file is gone (deleted or renamed since the server started)"
          : `the file cannot be examined (${(e as Error).message})`,
        e,
      );
    }
    let f = this.#open.get(key);
    if (f && !sameIdentity(f.id, now)) {
      this.#forget(key); // truncated, rewritten or replaced: open it again and check it
      f = undefined;
    }
    if (f) {
      this.#open.delete(key); // refresh its place in the LRU order
    } else {
      let file: ExpertFile;
      try {
        file = this.dir.open(layer, expert);
      } catch (e) {
        if (e instanceof RangeError) throw e;
        throw fail(e instanceof Error ? e.message : String(e), e);
      }
      try {
        this.#verify(file, now, fail);
      } catch (e) {
        file.close();
        throw e;
      }
      f = { file, id: now };
      while (this.#open.size >= OPEN_FILES) {
        const [oldest, old] = this.#open.entries().next().value!;
        this.#open.delete(oldest);
        old.file.close();
      }
    }
    this.#open.set(key, f);
    return f.file.tensors.map((t) => t.bytes);
  }

  /** Compares the file's SHA-256 with the manifest's, unless it did already for this identity. */
  #verify(
    file: ExpertFile,
    now: Identity,
    fail: (detail: string, cause?: unknown) => ExpertReadError,
  ): void {
    if (!this.#checksums) return;
    const rel = file.path.slice(this.dir.dir.length + 1);
    const seen = this.#verified.get(rel);
    if (seen && sameIdentity(seen, now)) return;
    const want = this.#checksums.get(rel);
    if (!want) {
      throw fail(
        `${ConvertedFiles.manifest} lists no checksum for ${rel}; convert the model again`,
      );
    }
    const size = file.file.header.fileSize;
    if (size !== want.size) {
      throw fail(`the file has ${size} bytes, the manifest says ${want.size}`);
    }
    // hashed from read(2), not the mapping: a file cut short meanwhile reads short (a
    // mismatch) instead of raising SIGBUS on the lost pages during the tens of ms a hash takes
    let bytes: Uint8Array;
    try {
      bytes = Deno.readFileSync(file.path);
    } catch (e) {
      throw fail(`the file cannot be read (${(e as Error).message})`, e);
    }
    const sha = createHash("sha256").update(bytes).digest("hex");
    this.verifiedFiles++;
    this.verifiedBytes += size;
    if (sha !== want.sha256) {
      this.#verified.delete(rel);
      throw fail(
        `its SHA-256 is ${sha}, the manifest says ${want.sha256} (the file is corrupt: ` +
          `restore it or convert the model again)`,
      );
    }
    this.#verified.set(rel, now);
  }

  #forget(key: string): void {
    const f = this.#open.get(key);
    if (!f) return;
    this.#open.delete(key);
    f.file.close();
  }

  #path(layer: number, expert: number): string {
    return this.dir.path(layer, expert); // RangeError or a layout error for a bad id
  }

  /** Closes every open file. */
  close(): void {
    for (const f of this.#open.values()) f.file.close();
    this.#open.clear();
  }

  /** Same as {@link close}. */
  [Symbol.dispose](): void {
    this.close();
  }
}
