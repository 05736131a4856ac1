/**
 * Where routed experts' bytes come from. An {@link ExpertSource} hands out
 * each expert as a list of byte views, one per expert tensor of its layer
 * (gate, up, down, and any per-expert bias or scale), in the layer's tensor
 * order; the pool copies them to the GPU with `writeBuffer` and no copy in
 * JS. {@link GgufExpertSource} reads them from the `*_exps` tensors of a
 * memory-mapped GGUF model (split files included); the converter's
 * per-expert files can implement the same interface.
 *
 * A missing or truncated file, or a slice past the end of its file, raises
 * {@link ExpertReadError} naming the file, the layer and the expert; the
 * source stays usable for the other experts and retries the file next time.
 *
 * @example
 * ```ts ignore
 * import { GgufExpertSource } from "./source.ts";
 *
 * using source = GgufExpertSource.open("model.gguf");
 * const [gate, up, down] = source.expertParts(3, 17); // zero-copy views
 * ```
 *
 * @module
 */

import { type GgufModelFile, readGgufModel } from "../gguf/reader.ts";
import type { GgmlTypeInfo } from "../gguf/types.ts";
import { type ByteSource, type FileReader, MappedFile, openFile } from "../../ffi/mmap.ts";
import { expertLayout, expertSliceRange, type LayerExpertLayout } from "./layout.ts";

/** The shape of one expert part: its slice of one expert tensor. */
export interface ExpertPartShape {
  /** Tensor name (`blk.3.ffn_up_exps.weight`). */
  readonly name: string;
  /** `gate`, `up`, `down` or `gate_up`. */
  readonly role: string;
  /** `weight`, `bias` or `scale`. */
  readonly kind: string;
  /** ggml type. */
  readonly type: GgmlTypeInfo;
  /** Shape of one expert's slice (ggml order: `[nCols, nRows]` for a matrix). */
  readonly sliceShape: readonly number[];
  /** Bytes of one expert's slice. */
  readonly sliceBytes: number;
}

/** The routed experts of one layer as a source describes them. */
export interface ExpertLayerShape {
  /** Layer (block) index. */
  readonly layer: number;
  /** Number of routed experts. */
  readonly nExpert: number;
  /** The parts of one expert, in the order {@link ExpertSource.expertParts} returns them. */
  readonly tensors: readonly ExpertPartShape[];
}

/**
 * A provider of routed experts' bytes. {@link LayerExpertLayout} (from
 * `expertLayout`) satisfies {@link ExpertLayerShape}.
 */
export interface ExpertSource extends Disposable {
  /** The expert layers, in layer order. */
  readonly layers: readonly ExpertLayerShape[];
  /**
   * Expert `expert` of `layer`: one view per part, `tensors[i].sliceBytes`
   * long, in the layer's tensor order. Views, not copies, where the source
   * can (valid until {@link close}). Throws {@link ExpertReadError} when the
   * bytes cannot be read, `RangeError` for a layer without experts or an
   * expert id out of range.
   */
  expertParts(layer: number, expert: number): Uint8Array[];
  /**
   * How many of the expert's bytes are in the OS page cache now, or
   * `undefined` when the source cannot tell. The pool uses it to tell cold
   * uploads from warm ones.
   */
  residentBytes?(layer: number, expert: number): number | undefined;
  /** Hints that the expert will be read soon (`madvise(WILLNEED)`); best effort. */
  willNeed?(layer: number, expert: number): void;
  /** Releases files. Idempotent. */
  close(): void;
}

/** Expert bytes could not be read: missing, unreadable or truncated file. */
export class ExpertReadError extends Error {
  /** The file that failed. */
  readonly file: string;
  /** Layer of the expert. */
  readonly layer: number;
  /** Expert id within the layer. */
  readonly expert: number;
  /** The tensor whose slice was being read, when known. */
  readonly tensor: string | undefined;

  /** Builds the error; `detail` says what went wrong. */
  constructor(
    file: string,
    layer: number,
    expert: number,
    tensor: string | undefined,
    detail: string,
    options?: ErrorOptions,
  ) {
    super(
      `cannot read expert ${expert} of layer ${layer}${
        tensor === undefined ? "" : ` (${tensor})`
      } from '${file}': ${detail}. Check that the model file is complete and unchanged ` +
        `since it was opened (re-download or re-convert it), then retry.`,
      options,
    );
    this.name = "ExpertReadError";
    this.file = file;
    this.layer = layer;
    this.expert = expert;
    this.tensor = tensor;
  }
}

/** Options of {@link GgufExpertSource}. */
export interface GgufExpertSourceOptions {
  /** The expert layout, when already computed (default: `expertLayout(model)`). */
  layout?: readonly LayerExpertLayout[];
  /**
   * Memory-map the files (default `true`, when FFI is available). `false`
   * reads through `Deno.FsFile`, one copy per part.
   */
  preferMmap?: boolean;
}

interface OpenShard {
  readonly bytes: ByteSource;
  // A second descriptor to fstat: a mapped file truncated after mmap raises
  // SIGBUS on access to the lost pages, so the size is checked before each read.
  readonly stat: Deno.FsFile | undefined;
  // The inode opened, to tell a file replaced or deleted at its path since.
  readonly ino: number | null;
  readonly dev: number;
}

/**
 * Experts read from the `*_exps` tensors of a GGUF model: each expert part
 * is a zero-copy view into the memory-mapped file (or a copy read through
 * `Deno.FsFile` without FFI). Shards are opened on first use and kept open;
 * an open that fails is retried on the next read.
 *
 * A file truncated while mapped is caught before its pages are touched (its
 * size is checked on every read), except for a truncation racing the copy
 * itself, which the OS reports as SIGBUS. A file deleted at its path is an
 * error too (the open copy is not served), and a file replaced there is
 * opened again, so what is served is what is on disk.
 */
export class GgufExpertSource implements ExpertSource {
  /** The expert layers, in layer order. */
  readonly layers: readonly LayerExpertLayout[];
  /** Shard paths, by file index. */
  readonly paths: readonly string[];
  readonly #byLayer = new Map<number, LayerExpertLayout>();
  readonly #shards: (OpenShard | undefined)[];
  readonly #preferMmap: boolean;
  #closed = false;

  /** A source over an already read model; files are opened on first use. */
  constructor(
    model: Pick<GgufModelFile, "files" | "tensors">,
    options: GgufExpertSourceOptions = {},
  ) {
    this.layers = options.layout ?? expertLayout(model);
    this.paths = model.files.map((f) => f.path);
    this.#shards = this.paths.map(() => undefined);
    this.#preferMmap = options.preferMmap ?? true;
    for (const l of this.layers) this.#byLayer.set(l.layer, l);
  }

  /** Reads the model's header(s) at `path` (any shard of a split model) and opens a source. */
  static open(
    path: string,
    options: Omit<GgufExpertSourceOptions, "layout"> = {},
  ): GgufExpertSource {
    return new GgufExpertSource(readGgufModel(path), options);
  }

  /** The layout of `layer`; throws `RangeError` when it has no routed experts. */
  layer(layer: number): LayerExpertLayout {
    const l = this.#byLayer.get(layer);
    if (!l) {
      throw new RangeError(
        `layer ${layer} has no routed experts (expert layers: ${
          [...this.#byLayer.keys()].join(", ") || "none"
        })`,
      );
    }
    return l;
  }

  /** {@inheritDoc ExpertSource.expertParts} */
  expertParts(layer: number, expert: number): Uint8Array[] {
    const l = this.#checked(layer, expert);
    const sizes = new Map<number, number>();
    return l.tensors.map((t) => {
      const path = this.paths[t.fileIndex] ?? `<file ${t.fileIndex}>`;
      const { offset, length } = expertSliceRange(t, expert);
      const fail = (detail: string, cause?: unknown) =>
        new ExpertReadError(path, layer, expert, t.name, detail, { cause });
      let size = sizes.get(t.fileIndex);
      if (size === undefined) this.#checkIdentity(t.fileIndex, path, fail);
      let shard: OpenShard;
      try {
        shard = this.#shard(t.fileIndex);
      } catch (e) {
        throw fail(`the file cannot be opened (${(e as Error).message})`, e);
      }
      if (size === undefined) {
        try {
          size = shard.stat?.statSync().size ?? shard.bytes.size;
        } catch (e) {
          throw fail(`the file cannot be examined (${(e as Error).message})`, e);
        }
        sizes.set(t.fileIndex, size);
      }
      const end = offset + length;
      if (end > size || end > shard.bytes.size) {
        throw fail(
          `its slice is bytes [${offset}, ${end}) but the file has ${
            Math.min(size, shard.bytes.size)
          } bytes (truncated?)`,
        );
      }
      try {
        const b = shard.bytes;
        return b instanceof MappedFile
          ? b.view(offset, length)
          : (b as FileReader).readSync(offset, length);
      } catch (e) {
        throw fail((e as Error).message, e);
      }
    });
  }

  /**
   * {@inheritDoc ExpertSource.residentBytes}
   * Mapped files only (`mincore`); `undefined` for the `FsFile` fallback or
   * when the file cannot be opened.
   */
  residentBytes(layer: number, expert: number): number | undefined {
    const l = this.#checked(layer, expert);
    let total = 0;
    for (const t of l.tensors) {
      const shard = this.#tryShard(t.fileIndex);
      if (!(shard?.bytes instanceof MappedFile)) return undefined;
      const { offset, length } = expertSliceRange(t, expert);
      if (offset + length > shard.bytes.size) return undefined;
      total += shard.bytes.residentBytes(offset, length);
    }
    return total;
  }

  /** {@inheritDoc ExpertSource.willNeed} */
  willNeed(layer: number, expert: number): void {
    const l = this.#checked(layer, expert);
    for (const t of l.tensors) {
      const shard = this.#tryShard(t.fileIndex);
      if (!(shard?.bytes instanceof MappedFile)) continue;
      const { offset, length } = expertSliceRange(t, expert);
      if (offset + length <= shard.bytes.size) shard.bytes.advise(offset, length, "willneed");
    }
  }

  /**
   * Evicts every opened shard from the OS page cache (see
   * `MappedFile.dropPageCache`), so the next reads are cold. For benchmarks.
   */
  dropPageCache(): void {
    for (const s of this.#shards) if (s?.bytes instanceof MappedFile) s.bytes.dropPageCache();
  }

  /** Closes every opened file. Idempotent; later reads throw `Deno.errors.BadResource`. */
  close(): void {
    this.#closed = true;
    for (let i = 0; i < this.#shards.length; i++) {
      const s = this.#shards[i];
      s?.bytes.close();
      s?.stat?.close();
      this.#shards[i] = undefined;
    }
  }

  /** Calls {@link close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }

  #checked(layer: number, expert: number): LayerExpertLayout {
    if (this.#closed) {
      throw new Deno.errors.BadResource("GgufExpertSource is closed; open a new one");
    }
    const l = this.layer(layer);
    if (!Number.isInteger(expert) || expert < 0 || expert >= l.nExpert) {
      throw new RangeError(`layer ${layer}: expert ${expert} is out of range [0, ${l.nExpert})`);
    }
    return l;
  }

  /**
   * Throws when the file at the shard's path is gone; closes the shard when
   * another file took its place (it is opened again on use).
   */
  #checkIdentity(
    i: number,
    path: string,
    fail: (detail: string, cause?: unknown) => ExpertReadError,
  ): void {
    let st: Deno.FileInfo;
    try {
      st = Deno.statSync(path);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) {
        throw fail("the file is gone (deleted or renamed since it was opened)", e);
      }
      throw fail(`the file cannot be examined (${(e as Error).message})`, e);
    }
    const open = this.#shards[i];
    if (open && (open.ino !== st.ino || open.dev !== st.dev)) {
      open.bytes.close();
      open.stat?.close();
      this.#shards[i] = undefined;
    }
  }

  #tryShard(i: number): OpenShard | undefined {
    try {
      return this.#shard(i);
    } catch {
      return undefined;
    }
  }

  #shard(i: number): OpenShard {
    const open = this.#shards[i];
    if (open) return open;
    const path = this.paths[i];
    if (path === undefined) throw new RangeError(`no file with index ${i}`);
    const bytes = openFile(path, { preferMmap: this.#preferMmap });
    let stat: Deno.FsFile | undefined;
    let info: Deno.FileInfo;
    try {
      stat = Deno.openSync(path, { read: true });
      info = stat.statSync();
      if (!(bytes instanceof MappedFile)) {
        stat.close();
        stat = undefined;
      }
    } catch (e) {
      bytes.close();
      stat?.close();
      throw e;
    }
    const shard = { bytes, stat, ino: info.ino, dev: info.dev };
    this.#shards[i] = shard;
    return shard;
  }
}
