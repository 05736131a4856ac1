/**
 * The converter: GGUF → `DIR/base_model/` (base weights as safetensors
 * shards, `config.json`, `tokenizer.json`), `DIR/experts/` (one safetensors
 * file per routed expert) and `DIR/manifest.json`.
 *
 * Crash safety. Every file is written to a temporary name, flushed and
 * renamed into place, so a file at its final name is always complete. Each
 * finished file is then recorded (size, SHA-256) in a journal,
 * `DIR/.convert-journal.jsonl`; `manifest.json` is written last and marks
 * the conversion complete. A rerun after an interruption removes stale
 * temporary files, keeps every file the journal records whose size and
 * checksum still match, and writes the rest. A directory that holds
 * something else, or a conversion of another model or with other options, is
 * refused unless `overwrite` is set.
 *
 * @module
 */

import { createHash } from "node:crypto";
import { type GgufModelFile, readGgufModel } from "../gguf/reader.ts";
import { dequantizeRows } from "../gguf/dequant.ts";
import { f32ToBf16Array, f32ToF16Array } from "../gguf/f16.ts";
import { GgmlType, type GgmlTypeInfo } from "../gguf/types.ts";
import { Keys } from "../gguf/names.ts";
import { MappedFile } from "../../ffi/mmap.ts";
import {
  buildSafetensorsHeader,
  isTemporaryName,
  writeFileAtomic,
  writeSafetensors,
  type WrittenFile,
} from "../safetensors/writer.ts";
import { DiskFullError, isNoSpaceError } from "../safetensors/errors.ts";
import { ConvertError } from "./errors.ts";
import {
  CONVERTED_VERSION,
  ConvertedFiles,
  ConvertedFormats,
  expertPath,
  layerDirName,
} from "../converted/layout.ts";
import {
  type ConversionPlan,
  expertFileMetadata,
  formatBytes,
  planConversion,
  type PlanOptions,
  type TensorOutput,
} from "./plan.ts";
import { type Progress, silentProgress } from "./progress.ts";
import { encodeMetadata } from "../converted/values.ts";
import type {
  FileRecord,
  Manifest,
  RecordedOptions,
  SourceIdentity,
} from "../converted/manifest.ts";

export type { FileRecord, Manifest, RecordedOptions, SourceIdentity };

const encoder = new TextEncoder();

function json(value: unknown): Uint8Array {
  return encoder.encode(JSON.stringify(value, null, 1) + "\n");
}

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

/** Options of {@link convertGguf}. */
export interface ConvertOptions extends PlanOptions {
  /** The GGUF to convert (any shard of a split model). */
  input: string;
  /** The output directory. */
  output: string;
  /** Replace what the output directory holds instead of refusing or resuming (default false). */
  overwrite?: boolean;
  /** Stops the conversion between chunks; the file being written is removed, finished ones are kept. */
  signal?: AbortSignal;
  /** Where progress goes (default: nowhere). */
  progress?: Progress;
  /** Flush each file to disk before renaming it (default true). */
  sync?: boolean;
}

/** What {@link convertGguf} did. */
export interface ConvertResult {
  /** The plan it carried out. */
  readonly plan: ConversionPlan;
  /** The output directory. */
  readonly outputDir: string;
  /** Files written by this run. */
  readonly filesWritten: number;
  /** Files found complete from an earlier run and kept. */
  readonly filesReused: number;
  /** Bytes written by this run. */
  readonly bytesWritten: number;
  /** The directory already held this complete conversion: nothing was written. */
  readonly alreadyComplete: boolean;
  /** Wall time in seconds. */
  readonly seconds: number;
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
async function fileMatches(
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

/** The tensor's output bytes, chunk by chunk: the source view itself, or dequantised rows. */
function* tensorChunks(
  src: Uint8Array,
  sourceType: GgmlTypeInfo,
  out: TensorOutput,
): Generator<Uint8Array> {
  if (!out.dequantize) {
    yield src;
    return;
  }
  const rowLength = out.ggmlShape[0] ?? 1;
  const nRows = out.ggmlShape.slice(1).reduce((a, b) => a * b, 1);
  const rowsPerChunk = Math.max(1, Math.floor((1 << 22) / rowLength));
  const f32 = new Float32Array(Math.min(nRows, rowsPerChunk) * rowLength);
  const half = out.ggmlType.id === GgmlType.F32 ? undefined : new Uint16Array(f32.length);
  for (let row = 0; row < nRows; row += rowsPerChunk) {
    const n = Math.min(rowsPerChunk, nRows - row);
    const values = f32.subarray(0, n * rowLength);
    dequantizeRows(sourceType.id, src, rowLength, row, n, values);
    if (half === undefined) {
      yield new Uint8Array(values.buffer, 0, values.byteLength);
      continue;
    }
    const h = half.subarray(0, values.length);
    if (out.ggmlType.id === GgmlType.F16) f32ToF16Array(values, h);
    else f32ToBf16Array(values, h);
    yield new Uint8Array(h.buffer, 0, h.byteLength);
  }
}

/** An output file to produce. */
interface Job {
  /** Path relative to the output directory. */
  rel: string;
  /** Expected size. */
  size: number;
  /** Writes it (atomically) and returns its record. */
  run(onBytes: (n: number) => void, signal?: AbortSignal): Promise<WrittenFile>;
}

function jsonJob(rel: string, bytes: Uint8Array, dir: string, sync: boolean): Job {
  return {
    rel,
    size: bytes.length,
    run: (onBytes, signal) =>
      writeFileAtomic(`${dir}/${rel}`, (sink) => sink.write(bytes), { onBytes, signal, sync }),
  };
}

function tokenizerJson(model: GgufModelFile): unknown {
  const md = model.metadata;
  const entries = [...md.entries].filter(([k]) => k.startsWith("tokenizer."));
  const special: Record<string, number> = {};
  for (
    const [name, key] of [
      ["bos", Keys.tokenizerBosId],
      ["eos", Keys.tokenizerEosId],
      ["eot", Keys.tokenizerEotId],
      ["eom", Keys.tokenizerEomId],
      ["unknown", Keys.tokenizerUnknownId],
      ["separator", Keys.tokenizerSeparatorId],
      ["padding", Keys.tokenizerPaddingId],
    ] as const
  ) {
    const id = md.number(key, undefined);
    if (id !== undefined) special[name] = id;
  }
  return {
    format: ConvertedFormats.tokenizer,
    version: CONVERTED_VERSION,
    model: md.string(Keys.tokenizerModel, null),
    pre: md.string(Keys.tokenizerPre, null),
    vocab_size: md.strings(Keys.tokenizerTokens)?.length ?? 0,
    special_token_ids: special,
    add_bos_token: md.has(Keys.tokenizerAddBos) ? md.bool(Keys.tokenizerAddBos, false) : null,
    add_eos_token: md.has(Keys.tokenizerAddEos) ? md.bool(Keys.tokenizerAddEos, false) : null,
    chat_template: md.string(Keys.tokenizerChatTemplate, null),
    gguf_metadata: encodeMetadata(entries),
  };
}

/** Metadata keys that describe the GGUF file rather than the model. */
function isFileKey(key: string): boolean {
  return key.startsWith("split.") || key === Keys.alignment;
}

function configJson(model: GgufModelFile, plan: ConversionPlan, source: SourceIdentity): unknown {
  const entries = [...model.metadata.entries].filter(([k]) =>
    !k.startsWith("tokenizer.") && !isFileKey(k)
  );
  return {
    format: ConvertedFormats.config,
    version: CONVERTED_VERSION,
    architecture: plan.architecture,
    output_dtype: plan.outputDtype,
    source: { file: source.files[0]?.name, header_sha256: source.files[0]?.header_sha256 },
    hyperparameters: plan.config,
    gguf_metadata: encodeMetadata(entries),
  };
}

function baseIndexJson(plan: ConversionPlan): unknown {
  const weightMap: Record<string, string> = {};
  for (const s of plan.base.shards) for (const t of s.tensors) weightMap[t.name] = s.name;
  return {
    metadata: {
      format: ConvertedFormats.baseShard,
      version: CONVERTED_VERSION,
      total_size: plan.base.dataBytes,
    },
    weight_map: weightMap,
  };
}

function expertIndexJson(plan: ConversionPlan): unknown {
  return {
    format: ConvertedFormats.expertIndex,
    version: CONVERTED_VERSION,
    architecture: plan.architecture,
    output_dtype: plan.outputDtype,
    layer_name_width: plan.experts.layerWidth,
    expert_name_width: plan.experts.expertWidth,
    file_count: plan.experts.fileCount,
    total_bytes: plan.experts.fileBytes,
    layers: plan.experts.layers.map((l) => {
      let offset = 0;
      return {
        layer: l.layer,
        n_expert: l.nExpert,
        dir: layerDirName(l.layer, plan.experts.layerWidth),
        file_bytes: l.fileBytes,
        data_offset: l.dataOffset,
        bytes_per_expert: l.bytesPerExpert,
        tensors: l.tensors.map((t) => {
          const entry = {
            name: t.name,
            source: t.source.name,
            role: t.source.role,
            kind: t.source.kind,
            ggml_type: t.output.ggmlType.name,
            shape: t.output.ggmlShape,
            dtype: t.output.dtype,
            offset,
            bytes: t.output.nBytes,
          };
          offset += t.output.nBytes;
          return entry;
        }),
      };
    }),
  };
}

function manifestJson(
  plan: ConversionPlan,
  source: SourceIdentity,
  options: RecordedOptions,
  files: FileRecord[],
): Manifest {
  const base: Manifest["base"]["tensors"] = {};
  for (const s of plan.base.shards) {
    for (const t of s.tensors) {
      base[t.name] = {
        file: `${ConvertedFiles.baseDir}/${s.name}`,
        dtype: t.output.dtype,
        ggml_type: t.output.ggmlType.name,
        shape: t.output.ggmlShape,
        bytes: t.output.nBytes,
      };
    }
  }
  const ex = plan.experts;
  const expertTensors: NonNullable<Manifest["experts"]>["tensors"] = {};
  for (const l of ex.layers) {
    for (const t of l.tensors) {
      expertTensors[t.source.name] = {
        file_pattern: `${ConvertedFiles.expertDir}/${
          layerDirName(l.layer, ex.layerWidth)
        }/expert_{expert}.safetensors`,
        tensor: t.name,
        ggml_type: t.output.ggmlType.name,
        slice_shape: t.output.ggmlShape,
        bytes_per_expert: t.output.nBytes,
      };
    }
  }
  return {
    format: ConvertedFormats.manifest,
    version: CONVERTED_VERSION,
    complete: true,
    created: new Date().toISOString(),
    source,
    options,
    base: {
      dir: ConvertedFiles.baseDir,
      tensor_count: plan.base.tensors.length,
      bytes: plan.base.fileBytes,
      tensors: base,
    },
    experts: plan.baseOnly ? null : {
      dir: ConvertedFiles.expertDir,
      layers: ex.layers.length,
      file_count: ex.fileCount,
      bytes: ex.fileBytes,
      tensors: expertTensors,
    },
    files,
  };
}

/** Every file of the conversion in write order, the manifest excepted. */
function planJobs(
  model: GgufModelFile,
  plan: ConversionPlan,
  source: SourceIdentity,
  mapped: readonly MappedFile[],
  dir: string,
  sync: boolean,
): Job[] {
  const jobs: Job[] = [];
  const view = (fileIndex: number, offset: number, length: number) =>
    mapped[fileIndex]!.view(offset, length);
  const base = ConvertedFiles.baseDir;
  for (const shard of plan.base.shards) {
    const rel = `${base}/${shard.name}`;
    jobs.push({
      rel,
      size: shard.fileBytes,
      run: (onBytes, signal) =>
        writeSafetensors(
          `${dir}/${rel}`,
          shard.tensors.map((t) => ({
            name: t.name,
            dtype: t.output.dtype,
            shape: t.output.shape,
            data: tensorChunks(
              view(t.source.fileIndex, t.source.fileOffset, t.source.nBytes),
              t.source.type,
              t.output,
            ),
          })),
          { metadata: shard.metadata, onBytes, signal, sync },
        ),
    });
  }
  jobs.push(
    jsonJob(`${base}/${ConvertedFiles.config}`, json(configJson(model, plan, source)), dir, sync),
  );
  jobs.push(jsonJob(`${base}/${ConvertedFiles.tokenizer}`, json(tokenizerJson(model)), dir, sync));
  // The index goes last: its presence says the base directory is complete.
  jobs.push(jsonJob(`${base}/${ConvertedFiles.baseIndex}`, json(baseIndexJson(plan)), dir, sync));
  if (plan.baseOnly) return jobs;

  const { layerWidth, expertWidth } = plan.experts;
  for (const layer of plan.experts.layers) {
    for (let e = 0; e < layer.nExpert; e++) {
      const rel = `${ConvertedFiles.expertDir}/${
        expertPath(layer.layer, e, layerWidth, expertWidth)
      }`;
      jobs.push({
        rel,
        size: layer.fileBytes,
        run: (onBytes, signal) => {
          const metadata = expertFileMetadata(layer, e, layerWidth, expertWidth);
          const specs = layer.tensors.map((t) => ({
            name: t.name,
            dtype: t.output.dtype,
            shape: t.output.shape,
            data: tensorChunks(
              view(
                t.source.fileIndex,
                t.source.fileOffset + e * t.source.sliceBytes,
                t.source.sliceBytes,
              ),
              t.source.type,
              t.output,
            ),
          }));
          if (buildSafetensorsHeader(specs, metadata).header.length !== layer.dataOffset) {
            throw new Error(`${rel}: header length differs from the layer's (a converter bug)`);
          }
          return writeSafetensors(`${dir}/${rel}`, specs, { metadata, onBytes, signal, sync });
        },
      });
    }
  }
  jobs.push(
    jsonJob(
      `${ConvertedFiles.expertDir}/${ConvertedFiles.expertIndex}`,
      json(expertIndexJson(plan)),
      dir,
      sync,
    ),
  );
  return jobs;
}

/** The journal: a header line, then one line per finished file. */
interface JournalHeader {
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
function prepareOutput(
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

class Journal {
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

  async append(record: FileRecord): Promise<void> {
    const bytes = encoder.encode(JSON.stringify(record) + "\n");
    for (let off = 0; off < bytes.length;) off += await this.#file.write(bytes.subarray(off));
  }

  close(): void {
    this.#file.close();
  }
}

/**
 * Converts a GGUF model (see the module doc for the layout and the crash
 * safety). Throws `UnsupportedArchitectureError` for an architecture od-moe
 * does not run, `GgufError` for a malformed GGUF, {@link ConvertError} for
 * a model that does not match its architecture or an output directory that
 * cannot be used, `DiskFullError` on a full disk, and the abort reason when
 * `signal` fires.
 */
export async function convertGguf(options: ConvertOptions): Promise<ConvertResult> {
  const t0 = performance.now();
  const progress = options.progress ?? silentProgress;
  const sync = options.sync ?? true;
  const dir = options.output.replace(/\/+$/, "") || "/";
  const model = readGgufModel(options.input);
  const plan = planConversion(model, options);
  if (!plan.supported) throw plan.unsupported!;
  const source = sourceIdentity(model);
  const recordedOptions = recordedOptionsOf(plan);
  const { known, manifest } = prepareOutput(
    dir,
    source,
    recordedOptions,
    options.overwrite ?? false,
  );

  const mapped: MappedFile[] = [];
  let journal: Journal | undefined;
  try {
    for (const f of model.files) {
      const m = MappedFile.open(f.path);
      mapped.push(m);
      if (m.size > 0) m.advise(0, m.size, "sequential");
    }
    const jobs = planJobs(model, plan, source, mapped, dir, sync);
    const total = jobs.reduce((s, j) => s + j.size, 0);
    const knownByPath = new Map(known.map((r) => [r.path, r]));
    progress.start(total, 0);

    if (manifest) {
      let intact = jobs.every((j) => knownByPath.get(j.rel)?.size === j.size);
      for (const j of jobs) {
        if (!intact) break;
        intact = await fileMatches(
          `${dir}/${j.rel}`,
          knownByPath.get(j.rel)!,
          (n) => progress.advance(n, false),
          options.signal,
        );
      }
      if (intact) {
        progress.finish();
        progress.note(`${dir} already holds this conversion, complete and intact: nothing to do`);
        return {
          plan,
          outputDir: dir,
          filesWritten: 0,
          filesReused: jobs.length,
          bytesWritten: 0,
          alreadyComplete: true,
          seconds: (performance.now() - t0) / 1000,
        };
      }
      progress.start(total, 0);
    }

    const header: JournalHeader = {
      format: ConvertedFormats.journal,
      version: CONVERTED_VERSION,
      source,
      options: recordedOptions,
    };
    Deno.mkdirSync(`${dir}/${ConvertedFiles.baseDir}`, { recursive: true });
    if (!plan.baseOnly) {
      for (const l of plan.experts.layers) {
        Deno.mkdirSync(
          `${dir}/${ConvertedFiles.expertDir}/${layerDirName(l.layer, plan.experts.layerWidth)}`,
          {
            recursive: true,
          },
        );
      }
    }
    // The journal takes over from a finished run's manifest before that is removed,
    // so that the directory never claims completeness while files change.
    journal = await Journal.create(`${dir}/${ConvertedFiles.journal}`, header, known);
    if (manifest) Deno.removeSync(`${dir}/${ConvertedFiles.manifest}`);

    const records: FileRecord[] = [];
    let filesWritten = 0;
    let filesReused = 0;
    let bytesWritten = 0;
    for (const job of jobs) {
      options.signal?.throwIfAborted();
      progress.label(job.rel);
      const old = knownByPath.get(job.rel);
      if (old && old.size === job.size) {
        let read = 0;
        const ok = await fileMatches(`${dir}/${job.rel}`, old, (n) => {
          read += n;
          progress.advance(n, false);
        }, options.signal);
        if (ok) {
          records.push(old);
          filesReused++;
          continue;
        }
        progress.advance(-read, false);
      }
      const w = await job.run((n) => progress.advance(n), options.signal);
      if (w.size !== job.size) {
        throw new Error(`${job.rel}: wrote ${w.size} bytes, planned ${job.size} (a converter bug)`);
      }
      const record = { path: job.rel, size: w.size, sha256: w.sha256 };
      await journal.append(record);
      records.push(record);
      filesWritten++;
      bytesWritten += w.size;
    }
    if (filesReused > 0) {
      progress.note(
        `resumed: kept ${filesReused} of ${jobs.length} files from an earlier run (checksums verified)`,
      );
    }
    const manifestBytes = json(manifestJson(plan, source, recordedOptions, records));
    await writeFileAtomic(
      `${dir}/${ConvertedFiles.manifest}`,
      (sink) => sink.write(manifestBytes),
      {
        sync,
        signal: options.signal,
      },
    );
    journal.close();
    journal = undefined;
    Deno.removeSync(`${dir}/${ConvertedFiles.journal}`);
    progress.finish();
    return {
      plan,
      outputDir: dir,
      filesWritten,
      filesReused,
      bytesWritten,
      alreadyComplete: false,
      seconds: (performance.now() - t0) / 1000,
    };
  } catch (e) {
    progress.finish();
    if (isNoSpaceError(e) && !(e instanceof DiskFullError)) {
      throw new DiskFullError(dir, "free some space and rerun (finished files are kept)", e);
    }
    throw e;
  } finally {
    journal?.close();
    for (const m of mapped) m.close();
  }
}
