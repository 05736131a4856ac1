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

import { readGgufModel } from "../gguf/reader.ts";
import { MappedFile } from "../../ffi/mmap.ts";
import { writeFileAtomic } from "../safetensors/writer.ts";
import { DiskFullError, isNoSpaceError } from "../safetensors/errors.ts";
import {
  CONVERTED_VERSION,
  ConvertedFiles,
  ConvertedFormats,
  layerDirName,
} from "../converted/layout.ts";
import { type ConversionPlan, planConversion, type PlanOptions } from "./plan.ts";
import { type Progress, silentProgress } from "./progress.ts";
import type {
  FileRecord,
  Manifest,
  RecordedOptions,
  SourceIdentity,
} from "../converted/manifest.ts";
import { json, manifestJson, planJobs } from "./output_files.ts";
import {
  fileMatches,
  Journal,
  type JournalHeader,
  prepareOutput,
  recordedOptionsOf,
  sourceIdentity,
} from "./output_dir.ts";

export type { FileRecord, Manifest, RecordedOptions, SourceIdentity };
export {
  describeOutputState,
  type OutputState,
  outputState,
  recordedOptionsOf,
  sourceIdentity,
} from "./output_dir.ts";

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
