/**
 * The output directory of a conversion: what it holds (`outputState`: new,
 * empty, foreign, a partial or finished run of this conversion, or of
 * another), what a run does with it (`prepareOutput`: create, resume, or
 * refuse), and the journal of finished files (`Journal`) that lets an
 * interrupted run resume. A source is identified by its shards' sizes and
 * header checksums (`sourceIdentity`).
 *
 * @module
 */

import { createHash } from "node:crypto";
import type { GgufModelFile } from "../gguf/reader.ts";
import { isTemporaryName, writeFileAtomic } from "../safetensors/writer.ts";
import { ConvertError } from "./errors.ts";
import { CONVERTED_VERSION, ConvertedFiles, ConvertedFormats } from "../converted/layout.ts";
import { type ConversionPlan, formatBytes } from "./plan.ts";
import type {
  FileRecord,
  Manifest,
  RecordedOptions,
  SourceIdentity,
} from "../converted/manifest.ts";

const encoder = new TextEncoder();

function hex(hash: ReturnType<typeof createHash>): string {
  return hash.digest("hex");
}

function basename(path: string): string {
  return path.slice(path.lastIndexOf("/") + 1);
}

/** Reads `[0, length)` of a file. */
function readPrefix(path: string, length: number): Uint8Array {
  const file = Deno.openSync(path, { read: true });
  try {
    const buf = new Uint8Array(length);
    let got = 0;
    while (got < length) {
      const n = file.readSync(buf.subarray(got));
      if (n === null || n === 0) break;
      got += n;
    }
    return buf.subarray(0, got);
  } finally {
    file.close();
  }
}

/** The identity of a model: per shard, its size and the checksum of its header. */
export function sourceIdentity(model: GgufModelFile): SourceIdentity {
  return {
    path: Deno.realPathSync(model.files[0]!.path),
    architecture: model.architecture,
    files: model.files.map((f) => ({
      name: basename(f.path),
      size: f.fileSize,
      header_bytes: f.dataOffset,
      header_sha256: hex(createHash("sha256").update(readPrefix(f.path, f.dataOffset))),
    })),
  };
}

function sameSource(a: SourceIdentity, b: SourceIdentity): boolean {
  return a.files.length === b.files.length &&
    a.files.every((f, i) =>
      f.size === b.files[i]!.size && f.header_sha256 === b.files[i]!.header_sha256
    );
}

function sameOptions(a: RecordedOptions, b: RecordedOptions): boolean {
  return a.output_dtype === b.output_dtype && a.base_only === b.base_only &&
    a.shard_size_bytes === b.shard_size_bytes;
}

/** The options of a plan as a conversion records them. */
export function recordedOptionsOf(plan: ConversionPlan): RecordedOptions {
  return {
    output_dtype: plan.outputDtype,
    base_only: plan.baseOnly,
    shard_size_bytes: plan.shardSizeBytes,
  };
}

/** Whether `path` holds `size` bytes with SHA-256 `sha256`; reports bytes read to `onBytes`. */
export async function fileMatches(
  path: string,
  record: FileRecord,
  onBytes: (n: number) => void,
  signal?: AbortSignal,
): Promise<boolean> {
  let file: Deno.FsFile;
  try {
    file = await Deno.open(path, { read: true });
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
  try {
    if ((await file.stat()).size !== record.size) return false;
    const hash = createHash("sha256");
    const buf = new Uint8Array(4 << 20);
    for (;;) {
      signal?.throwIfAborted();
      const n = await file.read(buf);
      if (n === null) break;
      hash.update(buf.subarray(0, n));
      onBytes(n);
    }
    return hex(hash) === record.sha256;
  } finally {
    file.close();
  }
}

/** The journal: a header line, then one line per finished file. */
export interface JournalHeader {
  format: string;
  version: number;
  source: SourceIdentity;
  options: RecordedOptions;
}

function parseJsonFile(path: string): unknown {
  let text: string;
  try {
    text = Deno.readTextFileSync(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return undefined;
    throw e;
  }
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

function readJournal(
  path: string,
): { header: JournalHeader; records: FileRecord[] } | null | undefined {
  let text: string;
  try {
    text = Deno.readTextFileSync(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return undefined;
    throw e;
  }
  const lines = text.split("\n");
  let header: JournalHeader;
  try {
    header = JSON.parse(lines[0]!);
  } catch {
    return null;
  }
  if (header?.format !== ConvertedFormats.journal || header.version !== CONVERTED_VERSION) {
    return null;
  }
  const records: FileRecord[] = [];
  for (const line of lines.slice(1)) {
    try {
      const r = JSON.parse(line);
      if (
        typeof r?.path === "string" && typeof r.size === "number" && typeof r.sha256 === "string"
      ) {
        records.push({ path: r.path, size: r.size, sha256: r.sha256 });
      }
    } catch {
      // A line cut short by a kill: that file is simply written again.
    }
  }
  return { header, records };
}

/** Removes stale temporary files left by an interrupted run. */
function removeTemporaryFiles(dir: string): number {
  let removed = 0;
  const sweep = (d: string, depth: number) => {
    let entries: Deno.DirEntry[];
    try {
      entries = [...Deno.readDirSync(d)];
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return;
      throw e;
    }
    for (const e of entries) {
      if (e.isFile && isTemporaryName(e.name)) {
        Deno.removeSync(`${d}/${e.name}`);
        removed++;
      } else if (e.isDirectory && depth > 0) sweep(`${d}/${e.name}`, depth - 1);
    }
  };
  sweep(dir, 0);
  sweep(`${dir}/${ConvertedFiles.baseDir}`, 0);
  sweep(`${dir}/${ConvertedFiles.expertDir}`, 1);
  return removed;
}

function removeIfPresent(path: string): void {
  try {
    Deno.removeSync(path, { recursive: true });
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
}

function clearOutput(dir: string): void {
  for (
    const name of [
      ConvertedFiles.manifest,
      ConvertedFiles.journal,
      ConvertedFiles.baseDir,
      ConvertedFiles.expertDir,
    ]
  ) removeIfPresent(`${dir}/${name}`);
  removeTemporaryFiles(dir);
}

function describeSource(s: SourceIdentity | undefined): string {
  return s ? `${s.files.map((f) => f.name).join(", ")} (${s.architecture})` : "an unknown source";
}

function describeOptions(o: RecordedOptions | undefined): string {
  if (!o) return "unknown options";
  return `--output-dtype ${o.output_dtype}${o.base_only ? " --base-only" : ""}, shards of ${
    formatBytes(o.shard_size_bytes)
  }`;
}

/** What an output directory holds, as a run with given source and options sees it. */
export type OutputState =
  /** Absent: it will be created. */
  | { readonly kind: "new" }
  /** An empty directory. */
  | { readonly kind: "empty" }
  /** Something that is not an od-moe conversion: refused without `overwrite`. */
  | { readonly kind: "foreign"; readonly message: string }
  /** An interrupted run of the same conversion: resumed. */
  | { readonly kind: "partial"; readonly records: readonly FileRecord[] }
  /** A finished run of the same conversion: verified, and completed if damaged. */
  | { readonly kind: "complete"; readonly manifest: Manifest }
  /** A conversion of another model or with other options: refused without `overwrite`. */
  | { readonly kind: "mismatch"; readonly message: string };

/**
 * Looks at the output directory without changing it: is it new, empty,
 * foreign, a partial or finished run of this conversion, or of another?
 * Throws {@link ConvertError} when it is not a directory.
 */
export function outputState(
  dir: string,
  source: SourceIdentity,
  options: RecordedOptions,
): OutputState {
  let names: string[];
  try {
    const stat = Deno.statSync(dir);
    if (!stat.isDirectory) throw new ConvertError(`output ${dir} exists and is not a directory`);
    names = [...Deno.readDirSync(dir)].map((e) => e.name);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return { kind: "new" };
    throw e;
  }
  const manifest = parseJsonFile(`${dir}/${ConvertedFiles.manifest}`) as
    | Manifest
    | null
    | undefined;
  const journal = readJournal(`${dir}/${ConvertedFiles.journal}`);
  if (manifest === undefined && journal === undefined) {
    if (names.length === 0) return { kind: "empty" };
    const shown = names.slice(0, 5).join(", ") + (names.length > 5 ? ", …" : "");
    return {
      kind: "foreign",
      message:
        `output directory ${dir} is not empty and holds no od-moe conversion (found: ${shown}); ` +
        `choose an empty or new directory, or pass --overwrite to write into it ` +
        `(replaces ${ConvertedFiles.baseDir}/, ${ConvertedFiles.expertDir}/ and ${ConvertedFiles.manifest})`,
    };
  }
  if (
    manifest === null || journal === null ||
    (manifest !== undefined &&
      (manifest.format !== ConvertedFormats.manifest || manifest.version !== CONVERTED_VERSION))
  ) {
    return {
      kind: "mismatch",
      message: `output directory ${dir} holds an unreadable ${
        manifest === null ? ConvertedFiles.manifest : ConvertedFiles.journal
      }; pass --overwrite to start again`,
    };
  }
  const recorded = (manifest ?? journal?.header)!;
  if (!sameSource(recorded.source, source) || !sameOptions(recorded.options, options)) {
    return {
      kind: "mismatch",
      message: `output directory ${dir} holds a ${
        manifest ? "finished" : "partial"
      } conversion of ${describeSource(recorded.source)} with ${
        describeOptions(recorded.options)
      }; this run converts ${describeSource(source)} with ${
        describeOptions(options)
      }. Pass --overwrite to replace it, or choose another directory`,
    };
  }
  if (manifest) return { kind: "complete", manifest };
  return { kind: "partial", records: journal!.records };
}

/** One line saying what a run would do with the output directory (for `--dry-run`). */
export function describeOutputState(state: OutputState, overwrite: boolean): string {
  if (overwrite && state.kind !== "new" && state.kind !== "empty") {
    return `exists; --overwrite would replace ${ConvertedFiles.baseDir}/, ${ConvertedFiles.expertDir}/ and ${ConvertedFiles.manifest}`;
  }
  switch (state.kind) {
    case "new":
      return "new directory";
    case "empty":
      return "empty directory";
    case "partial":
      return `resumes an interrupted run (${state.records.length} files recorded as done)`;
    case "complete":
      return "already holds this conversion (a run verifies it and rewrites only damaged files)";
    default:
      return `would be refused: ${state.message}`;
  }
}

/**
 * Decides what to do with the output directory: create it, resume the run
 * recorded there, or refuse. Returns the files known from an earlier run,
 * and the manifest when that run had finished.
 */
export function prepareOutput(
  dir: string,
  source: SourceIdentity,
  options: RecordedOptions,
  overwrite: boolean,
): { known: FileRecord[]; manifest?: Manifest } {
  const state = outputState(dir, source, options);
  if (state.kind === "new") {
    Deno.mkdirSync(dir, { recursive: true });
    return { known: [] };
  }
  if (overwrite) {
    clearOutput(dir);
    return { known: [] };
  }
  switch (state.kind) {
    case "empty":
      return { known: [] };
    case "foreign":
    case "mismatch":
      throw new ConvertError(state.message);
    case "partial":
      removeTemporaryFiles(dir);
      return { known: [...state.records] };
    case "complete":
      removeTemporaryFiles(dir);
      return { known: [...state.manifest.files], manifest: state.manifest };
  }
}

/** The journal file of a run: a header line, then one line per finished file, appended. */
export class Journal {
  #file: Deno.FsFile;
  private constructor(file: Deno.FsFile) {
    this.#file = file;
  }

  /** Starts a journal holding `header` and `records`, replacing any old one atomically. */
  static async create(
    path: string,
    header: JournalHeader,
    records: FileRecord[],
  ): Promise<Journal> {
    const text = [header, ...records].map((r) => JSON.stringify(r)).join("\n") + "\n";
    const bytes = encoder.encode(text);
    await writeFileAtomic(path, (sink) => sink.write(bytes), { sync: false });
    return new Journal(await Deno.open(path, { append: true }));
  }

  /** Records a finished file. */
  async append(record: FileRecord): Promise<void> {
    const bytes = encoder.encode(JSON.stringify(record) + "\n");
    for (let off = 0; off < bytes.length;) off += await this.#file.write(bytes.subarray(off));
  }

  /** Closes the file (the journal stays on disk until the manifest replaces it). */
  close(): void {
    this.#file.close();
  }
}
