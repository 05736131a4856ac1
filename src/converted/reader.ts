/**
 * Reading a converted model: what the engine calls for
 * `--base-weights DIR/base_model` ({@link openBaseModel}),
 * `--expert-dir DIR/experts` ({@link openExpertDir}), or both through the
 * manifest ({@link openConvertedModel}).
 *
 * A {@link BaseModel} is a `GgufModelFile` (metadata rebuilt from
 * `config.json` and `tokenizer.json`, the tensor table with ggml types and
 * shapes from each shard's `ggml_tensors` metadata, `fileOffset` absolute in
 * shard `fileIndex`) and a `TensorBytes` (zero-copy views of the mapped
 * shards), so the engine's GGUF code paths (`archSpec(…).readConfig`,
 * `checkTensorPlan`, `uploadPlannedTensors`, the tokenizer) take it as is.
 *
 * An {@link ExpertDir} gives each expert's file and the byte range of each of
 * its tensors; within a layer every expert file has the same layout, and an
 * expert's tensors are back to back (one read per expert).
 *
 * Each directory is accepted only when complete: `base_model/` when its
 * index is there, `experts/` when `experts.json` is, the whole output when
 * `manifest.json` is. Anything inconsistent raises
 * {@link ConvertedModelError} naming the file.
 *
 * @example
 * ```ts ignore
 * import { openConvertedModel } from "./reader.ts";
 * using model = openConvertedModel("out");
 * const embd = model.base.tensorBytes("token_embd.weight");
 * using expert = model.experts!.open(0, 3);
 * console.log(model.base.architecture, embd.length, expert.gate.type.name, expert.down.bytes.length);
 * ```
 *
 * @module
 */

import {
  type GgufHeader,
  GgufMetadata,
  type GgufModelFile,
  type GgufTensorInfo,
} from "../gguf/reader.ts";
import { Keys } from "../gguf/names.ts";
import { allGgmlTypes, type GgmlTypeInfo, tensorBytes } from "../gguf/types.ts";
import type { GgufValue } from "../gguf/value.ts";
import { SafetensorsError } from "../safetensors/errors.ts";
import { openSafetensors, type SafetensorsFile } from "../safetensors/reader.ts";
import { ConvertedModelError } from "./errors.ts";
import {
  CONVERTED_VERSION,
  ConvertedFiles,
  ConvertedFormats,
  expertFileName,
  layerDirName,
  MetadataKeys,
} from "./layout.ts";
import type { Manifest } from "./manifest.ts";
import { decodeMetadata, GgufJsonError } from "./values.ts";

const typesByName: ReadonlyMap<string, GgmlTypeInfo> = new Map(
  allGgmlTypes().map((t) => [t.name, t]),
);

function readJson(path: string, what: string): Record<string, unknown> {
  let text: string;
  try {
    text = Deno.readTextFileSync(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new ConvertedModelError(
        path,
        `${what} is missing: the conversion is incomplete or this is not a converted model; ` +
          `rerun the converter (it resumes where it stopped)`,
      );
    }
    throw e;
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new ConvertedModelError(path, `${what} is not valid JSON (${(e as Error).message})`);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new ConvertedModelError(path, `${what} must hold a JSON object`);
  }
  return value as Record<string, unknown>;
}

function checkFormat(doc: Record<string, unknown>, format: string, path: string): void {
  if (doc.format !== format) {
    throw new ConvertedModelError(
      path,
      `format is ${JSON.stringify(doc.format)}, expected "${format}"`,
    );
  }
  if (doc.version !== CONVERTED_VERSION) {
    throw new ConvertedModelError(
      path,
      `layout version ${
        JSON.stringify(doc.version)
      } is not ${CONVERTED_VERSION}; convert the model again`,
    );
  }
}

function ggmlType(name: unknown, where: string, tensor: string): GgmlTypeInfo {
  const t = typeof name === "string" ? typesByName.get(name) : undefined;
  if (!t) {
    throw new ConvertedModelError(
      where,
      `tensor ${tensor}: unknown ggml type ${JSON.stringify(name)}`,
    );
  }
  return t;
}

function ggmlShape(shape: unknown, where: string, tensor: string): number[] {
  if (
    !Array.isArray(shape) || shape.length === 0 ||
    !shape.every((d) => Number.isSafeInteger(d) && d >= 0)
  ) {
    throw new ConvertedModelError(
      where,
      `tensor ${tensor}: bad ggml shape ${JSON.stringify(shape)}`,
    );
  }
  return shape as number[];
}

/** The `ggml_tensors` map of a safetensors file, checked against its tensors' byte sizes. */
function ggmlTensorsOf(
  file: SafetensorsFile,
): Map<string, { type: GgmlTypeInfo; shape: number[]; source?: string }> {
  const raw = file.metadata[MetadataKeys.ggmlTensors];
  let map: Record<string, { ggml_type?: unknown; shape?: unknown; source?: unknown }>;
  try {
    map = JSON.parse(raw ?? "");
  } catch {
    throw new ConvertedModelError(
      file.path,
      `__metadata__.${MetadataKeys.ggmlTensors} is missing or not JSON`,
    );
  }
  const out = new Map<string, { type: GgmlTypeInfo; shape: number[]; source?: string }>();
  for (const t of file.tensors) {
    const entry = map?.[t.name];
    if (entry === undefined) {
      throw new ConvertedModelError(
        file.path,
        `tensor ${t.name} has no ggml type in __metadata__.${MetadataKeys.ggmlTensors}`,
      );
    }
    const type = ggmlType(entry.ggml_type, file.path, t.name);
    const shape = ggmlShape(entry.shape, file.path, t.name);
    let n: number;
    try {
      n = tensorBytes(type, shape);
    } catch (e) {
      throw new ConvertedModelError(file.path, `tensor ${t.name}: ${(e as Error).message}`);
    }
    if (n !== t.nBytes) {
      throw new ConvertedModelError(
        file.path,
        `tensor ${t.name}: ${type.name} ${
          JSON.stringify(shape)
        } needs ${n} bytes, the file holds ${t.nBytes}`,
      );
    }
    out.set(t.name, {
      type,
      shape,
      source: typeof entry.source === "string" ? entry.source : undefined,
    });
  }
  return out;
}

function openChecked(path: string): SafetensorsFile {
  try {
    return openSafetensors(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new ConvertedModelError(path, "file is missing; rerun the converter");
    }
    if (e instanceof SafetensorsError) throw new ConvertedModelError(path, e.message, { cause: e });
    throw e;
  }
}

/**
 * The base weights of a converted model (`DIR/base_model`). Also a
 * `GgufModelFile` (for the engine's loaders) and a `TensorBytes`.
 */
export class BaseModel implements GgufModelFile {
  /** The directory. */
  readonly dir: string;
  /** One record per shard, shaped as a GGUF header (version 0: not a GGUF file). */
  readonly files: readonly GgufHeader[];
  /** The source model's metadata, rebuilt from `config.json` and `tokenizer.json`. */
  readonly metadata: GgufMetadata;
  /** Every base tensor, shard by shard. */
  readonly tensors: readonly GgufTensorInfo[];
  /** Tensors by name. */
  readonly tensorMap: ReadonlyMap<string, GgufTensorInfo>;
  /** `general.architecture`. */
  readonly architecture: string;
  /** The parsed `config.json`. */
  readonly configJson: Readonly<Record<string, unknown>>;
  /** The parsed `tokenizer.json`. */
  readonly tokenizerJson: Readonly<Record<string, unknown>>;
  readonly #shards: readonly SafetensorsFile[];

  private constructor(
    dir: string,
    shards: SafetensorsFile[],
    metadata: GgufMetadata,
    tensors: GgufTensorInfo[],
    configJson: Record<string, unknown>,
    tokenizerJson: Record<string, unknown>,
  ) {
    this.dir = dir;
    this.#shards = shards;
    this.metadata = metadata;
    this.tensors = tensors;
    this.tensorMap = new Map(tensors.map((t) => [t.name, t]));
    this.architecture = metadata.string(Keys.architecture, "");
    this.configJson = configJson;
    this.tokenizerJson = tokenizerJson;
    this.files = shards.map((s, i) => ({
      path: s.path,
      fileSize: s.header.fileSize,
      version: 0,
      metadata,
      tensors: tensors.filter((t) => t.fileIndex === i),
      alignment: 1,
      dataOffset: s.header.dataOffset,
    }));
  }

  /**
   * Opens `dir` (a converted model's `base_model/`). Throws
   * {@link ConvertedModelError} when it is incomplete or inconsistent. Whether
   * the architecture is one od-moe runs is the engine's question, asked when
   * it reads the hyperparameters (`archSpec(base.architecture)`).
   */
  static open(dir: string): BaseModel {
    const d = dir.replace(/\/+$/, "");
    const indexPath = `${d}/${ConvertedFiles.baseIndex}`;
    const index = readJson(indexPath, "the base index");
    const meta = index.metadata as Record<string, unknown> | undefined;
    if (meta?.format !== ConvertedFormats.baseShard || meta?.version !== CONVERTED_VERSION) {
      throw new ConvertedModelError(
        indexPath,
        `not an od-moe base index (metadata.format ${JSON.stringify(meta?.format)}, version ${
          JSON.stringify(meta?.version)
        }; expected "${ConvertedFormats.baseShard}", ${CONVERTED_VERSION})`,
      );
    }
    const weightMap = index.weight_map;
    if (typeof weightMap !== "object" || weightMap === null) {
      throw new ConvertedModelError(indexPath, "weight_map is missing");
    }
    const configPath = `${d}/${ConvertedFiles.config}`;
    const tokenizerPath = `${d}/${ConvertedFiles.tokenizer}`;
    const configJson = readJson(configPath, "config.json");
    const tokenizerJson = readJson(tokenizerPath, "tokenizer.json");
    checkFormat(configJson, ConvertedFormats.config, configPath);
    checkFormat(tokenizerJson, ConvertedFormats.tokenizer, tokenizerPath);
    let entries: Map<string, GgufValue>;
    try {
      entries = decodeMetadata(configJson.gguf_metadata, configPath);
      for (const [k, v] of decodeMetadata(tokenizerJson.gguf_metadata, tokenizerPath)) {
        entries.set(k, v);
      }
    } catch (e) {
      if (e instanceof GgufJsonError) throw new ConvertedModelError(d, e.message, { cause: e });
      throw e;
    }
    const metadata = new GgufMetadata(entries, configPath);

    const shardNames = [...new Set(Object.values(weightMap as Record<string, unknown>))];
    const shards: SafetensorsFile[] = [];
    try {
      const tensors: GgufTensorInfo[] = [];
      for (const name of shardNames) {
        if (typeof name !== "string" || name.includes("/")) {
          throw new ConvertedModelError(
            indexPath,
            `weight_map names a bad file ${JSON.stringify(name)}`,
          );
        }
        const file = openChecked(`${d}/${name}`);
        shards.push(file);
        if (file.metadata[MetadataKeys.format] !== ConvertedFormats.baseShard) {
          throw new ConvertedModelError(file.path, "not an od-moe base shard");
        }
        const ggml = ggmlTensorsOf(file);
        for (const t of file.tensors) {
          if ((weightMap as Record<string, unknown>)[t.name] !== name) {
            throw new ConvertedModelError(
              file.path,
              `tensor ${t.name} is not in the index under this file`,
            );
          }
          const g = ggml.get(t.name)!;
          tensors.push({
            name: t.name,
            type: g.type,
            shape: g.shape,
            nElements: g.shape.reduce((a, b) => a * b, 1),
            nBytes: t.nBytes,
            dataOffset: t.dataOffsets[0],
            fileOffset: t.fileOffset,
            fileIndex: shards.length - 1,
          });
        }
      }
      const have = new Set(tensors.map((t) => t.name));
      const lost = Object.keys(weightMap).filter((n) => !have.has(n));
      if (lost.length > 0) {
        throw new ConvertedModelError(
          indexPath,
          `tensors in the index but in no shard: ${lost.slice(0, 5).join(", ")}`,
        );
      }
      return new BaseModel(d, shards, metadata, tensors, configJson, tokenizerJson);
    } catch (e) {
      for (const s of shards) s.close();
      throw e;
    }
  }

  /** The bytes of a tensor of this model: a zero-copy view of its mapped shard. */
  bytes(t: GgufTensorInfo): Uint8Array {
    const shard = this.#shards[t.fileIndex];
    if (!shard) {
      throw new RangeError(
        `${this.dir}: tensor ${t.name} names shard ${t.fileIndex}, which does not exist`,
      );
    }
    return shard.range(t.fileOffset, t.nBytes);
  }

  /** The bytes of the tensor called `name`; throws naming it when it is not in the base. */
  tensorBytes(name: string): Uint8Array {
    const t = this.tensorMap.get(name);
    if (!t) throw new ConvertedModelError(this.dir, `tensor ${name} is not in the base model`);
    return this.bytes(t);
  }

  /** The shards as open safetensors files. */
  get shards(): readonly SafetensorsFile[] {
    return this.#shards;
  }

  /** Unmaps the shards; views handed out become empty. */
  close(): void {
    for (const s of this.#shards) s.close();
  }

  /** Calls {@link close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/**
 * One tensor of an expert file. Shaped like the expert sources'
 * `ExpertPartShape` (`src/experts/source.ts`), so an {@link ExpertLayerLayout}
 * can stand for an `ExpertLayerShape`.
 */
export interface ExpertTensor {
  /** The GGUF expert stack it was cut from (`blk.12.ffn_gate_exps.weight`). */
  readonly name: string;
  /** Its name inside the expert file (`ffn_gate.weight`). */
  readonly fileTensor: string;
  /** `gate`, `up`, `down` or `gate_up`. */
  readonly role: string;
  /** `weight`, `bias` or `scale`. */
  readonly kind: string;
  /** ggml type of the bytes. */
  readonly type: GgmlTypeInfo;
  /** ggml-order shape of one expert's slice. */
  readonly sliceShape: readonly number[];
  /** Bytes of the slice. */
  readonly sliceBytes: number;
  /** Absolute offset in the expert file (the same in every file of the layer). */
  readonly fileOffset: number;
}

/** The layout every expert file of one layer shares. */
export interface ExpertLayerLayout {
  /** Layer index. */
  readonly layer: number;
  /** Routed experts. */
  readonly nExpert: number;
  /** Size of each expert file. */
  readonly fileBytes: number;
  /** Where the tensor data starts in each file; it runs to the end. */
  readonly dataOffset: number;
  /** Tensor bytes of one expert (`fileBytes - dataOffset`). */
  readonly bytesPerExpert: number;
  /** The tensors, in file order (gate, up, down), back to back. */
  readonly tensors: readonly ExpertTensor[];
}

/** One expert's file, open, with views of its tensors. */
export class ExpertFile {
  /** Layer index. */
  readonly layer: number;
  /** Expert index. */
  readonly expert: number;
  /** The open file. */
  readonly file: SafetensorsFile;
  /** The tensors, in file order. */
  readonly tensors: readonly (ExpertTensor & { readonly bytes: Uint8Array })[];

  /** Wraps a checked file; see {@link ExpertDir.open}. */
  constructor(layer: number, expert: number, file: SafetensorsFile, layout: ExpertLayerLayout) {
    this.layer = layer;
    this.expert = expert;
    this.file = file;
    this.tensors = layout.tensors.map((t) => ({
      ...t,
      bytes: file.range(t.fileOffset, t.sliceBytes),
    }));
  }

  /** The path of the file. */
  get path(): string {
    return this.file.path;
  }

  /** The `weight` tensor of a role, or undefined. */
  tensor(
    role: string,
    kind = "weight",
  ): (ExpertTensor & { readonly bytes: Uint8Array }) | undefined {
    return this.tensors.find((t) => t.role === role && t.kind === kind);
  }

  /** The gate projection weight (throws if the model has a fused gate_up instead). */
  get gate(): ExpertTensor & { readonly bytes: Uint8Array } {
    return this.#required("gate");
  }

  /** The up projection weight (throws if the model has a fused gate_up instead). */
  get up(): ExpertTensor & { readonly bytes: Uint8Array } {
    return this.#required("up");
  }

  /** The down projection weight. */
  get down(): ExpertTensor & { readonly bytes: Uint8Array } {
    return this.#required("down");
  }

  /** All tensor bytes of the expert: one contiguous view from the first tensor to the end. */
  get data(): Uint8Array {
    const first = this.tensors[0];
    const end = this.file.header.fileSize;
    return first ? this.file.range(first.fileOffset, end - first.fileOffset) : new Uint8Array(0);
  }

  #required(role: string): ExpertTensor & { readonly bytes: Uint8Array } {
    const t = this.tensor(role);
    if (!t) {
      throw new ConvertedModelError(this.path, `no ffn_${role}.weight tensor in this expert file`);
    }
    return t;
  }

  /** Unmaps the file; views handed out become empty. */
  close(): void {
    this.file.close();
  }

  /** Calls {@link close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/** The per-expert files of a converted model (`DIR/experts`). */
export class ExpertDir {
  /** The directory. */
  readonly dir: string;
  /** `general.architecture` of the source. */
  readonly architecture: string;
  /** The layout of each MoE layer, in layer order (an `ExpertSource`'s `layers`). */
  readonly layers: readonly ExpertLayerLayout[];
  readonly #byLayer: ReadonlyMap<number, ExpertLayerLayout>;
  readonly #layerWidth: number;
  readonly #expertWidth: number;

  private constructor(
    dir: string,
    architecture: string,
    layers: Map<number, ExpertLayerLayout>,
    layerWidth: number,
    expertWidth: number,
  ) {
    this.dir = dir;
    this.architecture = architecture;
    this.#byLayer = layers;
    this.layers = [...layers.values()].sort((a, b) => a.layer - b.layer);
    this.#layerWidth = layerWidth;
    this.#expertWidth = expertWidth;
  }

  /**
   * Opens `dir` (a converted model's `experts/`) from its `experts.json`.
   * Throws {@link ConvertedModelError} when that is missing (an incomplete
   * conversion) or inconsistent. Expert files are checked when opened.
   */
  static open(dir: string): ExpertDir {
    const d = dir.replace(/\/+$/, "");
    const path = `${d}/${ConvertedFiles.expertIndex}`;
    const doc = readJson(path, "the expert index");
    checkFormat(doc, ConvertedFormats.expertIndex, path);
    const width = (v: unknown) => (Number.isSafeInteger(v) && (v as number) > 0 ? v as number : 3);
    const layers = new Map<number, ExpertLayerLayout>();
    if (!Array.isArray(doc.layers)) throw new ConvertedModelError(path, "layers must be a list");
    for (const l of doc.layers as Record<string, unknown>[]) {
      const num = (k: string) => {
        const v = l?.[k];
        if (!Number.isSafeInteger(v) || (v as number) < 0) {
          throw new ConvertedModelError(path, `layer entry: ${k} must be a non-negative integer`);
        }
        return v as number;
      };
      const layer = num("layer");
      const dataOffset = num("data_offset");
      const fileBytes = num("file_bytes");
      let at = dataOffset;
      if (!Array.isArray(l.tensors)) {
        throw new ConvertedModelError(path, `layer ${layer}: tensors must be a list`);
      }
      const tensors = (l.tensors as Record<string, unknown>[]).map((t): ExpertTensor => {
        const name = String(t?.source);
        const type = ggmlType(t?.ggml_type, path, name);
        const shape = ggmlShape(t?.shape, path, name);
        let nBytes: number;
        try {
          nBytes = tensorBytes(type, shape);
        } catch (e) {
          throw new ConvertedModelError(
            path,
            `layer ${layer}: tensor ${name}: ${(e as Error).message}`,
          );
        }
        const entry = {
          name,
          fileTensor: String(t.name),
          role: String(t.role),
          kind: String(t.kind),
          type,
          sliceShape: shape,
          sliceBytes: nBytes,
          fileOffset: at,
        };
        at += nBytes;
        return entry;
      });
      if (at !== fileBytes) {
        throw new ConvertedModelError(
          path,
          `layer ${layer}: tensors end at ${at}, files are ${fileBytes} bytes`,
        );
      }
      if (layers.has(layer)) throw new ConvertedModelError(path, `layer ${layer} is listed twice`);
      layers.set(layer, {
        layer,
        nExpert: num("n_expert"),
        fileBytes,
        dataOffset,
        bytesPerExpert: fileBytes - dataOffset,
        tensors,
      });
    }
    return new ExpertDir(
      d,
      String(doc.architecture ?? ""),
      layers,
      width(doc.layer_name_width),
      width(doc.expert_name_width),
    );
  }

  /** The layout of `layer`; throws naming the layer when it has no routed experts. */
  layout(layer: number): ExpertLayerLayout {
    const l = this.#byLayer.get(layer);
    if (!l) {
      throw new ConvertedModelError(
        this.dir,
        `layer ${layer} has no routed experts (MoE layers: ${
          [...this.#byLayer.keys()].join(", ")
        })`,
      );
    }
    return l;
  }

  /** The path of expert `expert` of `layer`. */
  path(layer: number, expert: number): string {
    const l = this.layout(layer);
    if (!Number.isInteger(expert) || expert < 0 || expert >= l.nExpert) {
      throw new RangeError(
        `${this.dir}: layer ${layer} has experts 0–${l.nExpert - 1}, not ${expert}`,
      );
    }
    return `${this.dir}/${layerDirName(layer, this.#layerWidth)}/${
      expertFileName(expert, this.#expertWidth)
    }`;
  }

  /**
   * Opens (maps) expert `expert` of `layer` and checks its header against
   * the layer's layout. Close it when done (`using`).
   */
  open(layer: number, expert: number): ExpertFile {
    const layout = this.layout(layer);
    const path = this.path(layer, expert);
    const file = openChecked(path);
    try {
      const h = file.header;
      const meta = file.metadata;
      if (
        meta[MetadataKeys.format] !== ConvertedFormats.expertFile ||
        Number(meta[MetadataKeys.layer]) !== layer || Number(meta[MetadataKeys.expert]) !== expert
      ) {
        throw new ConvertedModelError(
          path,
          `metadata says ${meta[MetadataKeys.format]} layer ${meta[MetadataKeys.layer]} expert ${
            meta[MetadataKeys.expert]
          }, expected ${ConvertedFormats.expertFile} layer ${layer} expert ${expert}`,
        );
      }
      if (h.fileSize !== layout.fileBytes || h.dataOffset !== layout.dataOffset) {
        throw new ConvertedModelError(
          path,
          `layout differs from experts.json (size ${h.fileSize}, data at ${h.dataOffset}; expected ${layout.fileBytes}, ${layout.dataOffset})`,
        );
      }
      for (const t of layout.tensors) {
        const s = h.tensorMap.get(t.fileTensor);
        if (!s || s.fileOffset !== t.fileOffset || s.nBytes !== t.sliceBytes) {
          throw new ConvertedModelError(
            path,
            `tensor ${t.fileTensor} is missing or not where experts.json says`,
          );
        }
      }
      return new ExpertFile(layer, expert, file, layout);
    } catch (e) {
      file.close();
      throw e;
    }
  }
}

/** A whole converted model: the manifest, the base, and the experts unless converted `--base-only`. */
export class ConvertedModel {
  /** The output directory. */
  readonly dir: string;
  /** The parsed `manifest.json`. */
  readonly manifest: Manifest;
  /** The base weights. */
  readonly base: BaseModel;
  /** The experts, or undefined for a `--base-only` conversion. */
  readonly experts: ExpertDir | undefined;

  /** Wraps opened parts; see {@link openConvertedModel}. */
  constructor(dir: string, manifest: Manifest, base: BaseModel, experts: ExpertDir | undefined) {
    this.dir = dir;
    this.manifest = manifest;
    this.base = base;
    this.experts = experts;
  }

  /** The source metadata (tokenizer included). */
  get metadata(): GgufMetadata {
    return this.base.metadata;
  }

  /** Closes the base. */
  close(): void {
    this.base.close();
  }

  /** Calls {@link close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/** Opens `DIR/base_model`; same as {@link BaseModel.open}. */
export function openBaseModel(dir: string): BaseModel {
  return BaseModel.open(dir);
}

/** Opens `DIR/experts`; same as {@link ExpertDir.open}. */
export function openExpertDir(dir: string): ExpertDir {
  return ExpertDir.open(dir);
}

/**
 * Opens a converted model's output directory. Refuses (with
 * {@link ConvertedModelError}) a directory without `manifest.json`: an
 * interrupted conversion, which a rerun of the converter completes.
 */
export function openConvertedModel(dir: string): ConvertedModel {
  const d = dir.replace(/\/+$/, "");
  const path = `${d}/${ConvertedFiles.manifest}`;
  const manifest = readJson(path, "manifest.json") as unknown as Manifest;
  checkFormat(manifest as unknown as Record<string, unknown>, ConvertedFormats.manifest, path);
  if (manifest.complete !== true) {
    throw new ConvertedModelError(path, "the conversion is not complete");
  }
  const base = BaseModel.open(`${d}/${manifest.base?.dir ?? ConvertedFiles.baseDir}`);
  try {
    const experts = manifest.experts ? ExpertDir.open(`${d}/${manifest.experts.dir}`) : undefined;
    return new ConvertedModel(d, manifest, base, experts);
  } catch (e) {
    base.close();
    throw e;
  }
}
