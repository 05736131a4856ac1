/**
 * What a conversion writes, as jobs in write order: the base safetensors
 * shards, `config.json`, `tokenizer.json` and the base index, then one file
 * per routed expert and the expert index (`planJobs`); and `manifest.json`,
 * written last (`manifestJson`). Each job writes its file atomically and
 * returns its size and SHA-256; `convert.ts` runs them and journals them.
 *
 * @module
 */

import type { GgufModelFile } from "../gguf/reader.ts";
import { dequantizeRows } from "../gguf/dequant.ts";
import { f32ToBf16Array, f32ToF16Array } from "../gguf/f16.ts";
import { GgmlType, type GgmlTypeInfo } from "../gguf/types.ts";
import { Keys } from "../gguf/names.ts";
import type { MappedFile } from "../../ffi/mmap.ts";
import {
  buildSafetensorsHeader,
  writeFileAtomic,
  writeSafetensors,
  type WrittenFile,
} from "../safetensors/writer.ts";
import {
  CONVERTED_VERSION,
  ConvertedFiles,
  ConvertedFormats,
  expertPath,
  layerDirName,
} from "../converted/layout.ts";
import { type ConversionPlan, expertFileMetadata, type TensorOutput } from "./plan.ts";
import { encodeMetadata } from "../converted/values.ts";
import type {
  FileRecord,
  Manifest,
  RecordedOptions,
  SourceIdentity,
} from "../converted/manifest.ts";

const encoder = new TextEncoder();

/** A JSON file's bytes, as the converter writes them. */
export function json(value: unknown): Uint8Array {
  return encoder.encode(JSON.stringify(value, null, 1) + "\n");
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
export interface Job {
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

/** `manifest.json`: what was converted, with which options, and every file's record. */
export function manifestJson(
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
export function planJobs(
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
