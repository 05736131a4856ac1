/**
 * The content of a converted model's `manifest.json`: the source, the options,
 * and every file written with its size and sha256.
 *
 * @module
 */

/** One output file recorded in the journal and the manifest. */
export interface FileRecord {
  /** Path relative to the output directory. */
  readonly path: string;
  /** Size in bytes. */
  readonly size: number;
  /** SHA-256, hex. */
  readonly sha256: string;
}

/** Identifies the source model: per shard its size and the SHA-256 of its header. */
export interface SourceIdentity {
  /** Absolute path of the first shard. */
  readonly path: string;
  /** `general.architecture`. */
  readonly architecture: string;
  /** Each shard's name, size, header length and header checksum. */
  readonly files: readonly {
    readonly name: string;
    readonly size: number;
    readonly header_bytes: number;
    readonly header_sha256: string;
  }[];
}

/** The options recorded with a conversion; a resume must use the same. */
export interface RecordedOptions {
  /** `--output-dtype`. */
  readonly output_dtype: string;
  /** `--base-only`. */
  readonly base_only: boolean;
  /** `--shard-size-gb` in bytes. */
  readonly shard_size_bytes: number;
}

/** The content of `manifest.json`. */
export interface Manifest {
  /** {@link ConvertedFormats.manifest}. */
  readonly format: string;
  /** {@link CONVERTED_VERSION}. */
  readonly version: number;
  /** Always true: the manifest is written only when everything else is. */
  readonly complete: true;
  /** When the conversion finished (ISO 8601). */
  readonly created: string;
  /** The source model. */
  readonly source: SourceIdentity;
  /** The options used. */
  readonly options: RecordedOptions;
  /** The base: directory, tensor → file map and sizes. */
  readonly base: {
    readonly dir: string;
    readonly tensor_count: number;
    readonly bytes: number;
    readonly tensors: Record<
      string,
      { file: string; dtype: string; ggml_type: string; shape: readonly number[]; bytes: number }
    >;
  };
  /** The experts (null with `--base-only`): each GGUF expert stack → its per-expert files. */
  readonly experts: null | {
    readonly dir: string;
    readonly layers: number;
    readonly file_count: number;
    readonly bytes: number;
    readonly tensors: Record<string, {
      file_pattern: string;
      tensor: string;
      ggml_type: string;
      slice_shape: readonly number[];
      bytes_per_expert: number;
    }>;
  };
  /** Every file written, with size and checksum. */
  readonly files: readonly FileRecord[];
}
