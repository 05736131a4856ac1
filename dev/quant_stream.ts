/**
 * The quantising writer of `deno task make-model`: a synthetic model
 * (`src/model/synthetic.ts`) written straight to a quantised GGUF, one
 * piece at a time, with no F32 copy of the model anywhere.
 *
 * - Each tensor's type is llama.cpp's own choice for the file type and the
 *   `--tensor-type` overrides (`LlamaCpp.quantTypes`: the function
 *   `llama_model_quantize` itself calls), so the file has the same mix a
 *   user's `llama-quantize` would give it.
 * - Each piece — a few rows, never more than one expert's slice of a
 *   stacked expert tensor — is drawn (`syntheticValues`, the same floats as
 *   the F32 file) and quantised with ggml's `ggml_quantize_chunk` from the
 *   pinned libggml-base (`dev/ref/ggml.ts`), as llama.cpp does row by row,
 *   so the file equals, byte for byte, the one `llama_model_quantize` writes
 *   from the F32 file (tested in `dev/quant_stream_test.ts`).
 * - Tensors are written in llama.cpp's order (block, then name), as
 *   `llama-quantize` writes them.
 * - Pieces are made by a pool of workers, in order, a bounded number ahead
 *   of the writer, and written as they come (`writeGgufFileLazy`'s streamed
 *   tensors): memory holds a few pieces (each at most `maxPieceValues`
 *   floats), whatever the model's size.
 *
 * @module
 */

import {
  resolveSyntheticSpec,
  type SyntheticSpec,
  syntheticTensorSources,
} from "../src/model/synthetic.ts";
import { type GgufStreamedTensorSpec, writeGgufFileLazy } from "../src/gguf/writer.ts";
import { GgmlType, requireGgmlType, tensorBytes } from "../src/gguf/types.ts";
import { Keys } from "../src/gguf/names.ts";
import type { GgufValue } from "../src/gguf/value.ts";
import { LlamaFtype, type LlamaFtypeName, loadReference } from "./ref/llama_cpp.ts";
import { IMATRIX_TYPES, syntheticImatrixFor } from "./quant_recipes.ts";
import { type QuantJob, type QuantResult, runQuantJob } from "./quant_stream_worker.ts";

/** Options of {@linkcode writeQuantizedSynthetic}. */
export interface QuantStreamOptions {
  /** llama.cpp's file type (`MOSTLY_Q4_K_M`, …): the base of every tensor's type. */
  ftype: LlamaFtypeName;
  /** `[regex, ggml type id]` overrides, first match wins (llama-quantize's `--tensor-type`). */
  tensorTypes?: ReadonlyArray<readonly [string, number]>;
  /**
   * Quantise every matrix with `syntheticImatrix`'s importance weights (as
   * make-model's llama.cpp path does when a type needs them). Default: only
   * when some tensor's type requires an importance matrix.
   */
  imatrix?: boolean;
  /**
   * Worker threads (default: the machine's cores, at most 16, fewer where a
   * quarter of the available memory cannot hold them; 0 works inline).
   */
  workers?: number;
  /** Floats drawn at once per piece (default 16 M = 64 MiB). */
  maxPieceValues?: number;
  /** Called after each piece is written, with bytes written so far and the file's data size. */
  onProgress?: (written: number, total: number) => void;
}

/** What {@linkcode writeQuantizedSynthetic} wrote. */
export interface QuantStreamResult {
  /** Each tensor's name and ggml type id, in file order. */
  types: { name: string; type: number }[];
  /** Tensor data bytes. */
  dataBytes: number;
  /** Workers used. */
  workers: number;
}

/** The piece of the pool's bookkeeping one job needs. */
interface Piece {
  job: Omit<QuantJob, "id">;
  bytes: number;
}

/**
 * Writes the synthetic model `spec` to `path` quantised to `options.ftype`
 * with llama.cpp's per-tensor choices, piece by piece (see the module doc).
 *
 * @throws where the reference libraries are missing, or a tensor cannot take its type.
 */
export async function writeQuantizedSynthetic(
  path: string,
  spec: SyntheticSpec,
  options: QuantStreamOptions,
): Promise<QuantStreamResult> {
  const s = resolveSyntheticSpec({ ...spec, weightType: "F32" });
  const sources = syntheticTensorSources({ ...spec, weightType: "F32" });
  const { metadata } = sources;
  // llama.cpp's order (its loader's weight map: block number, then name):
  // the order llama_model_quantize writes and counts layers in.
  const tensors = [...sources.tensors].sort(llamaTensorOrder);
  const ftypeCode = LlamaFtype[options.ftype];
  if (ftypeCode === undefined) throw new Error(`unknown llama.cpp file type ${options.ftype}`);
  const types = loadReference().quantTypes(
    {
      architecture: s.archName,
      nEmbd: s.nEmbd,
      nFf: s.nFf,
      nLayer: s.nLayer + s.nNextn,
      nHead: s.nHead,
      nHeadKv: s.nHeadKv,
      nExpert: s.nExpert,
      nEmbdHeadK: s.headDim,
      nEmbdHeadV: s.headDim,
    },
    options.ftype,
    tensors.map((t) => ({ name: t.name, shape: t.shape, type: GgmlType.F32 })),
    { tensorTypes: options.tensorTypes },
  );
  const useImatrix = options.imatrix ?? types.some((t) => IMATRIX_TYPES.has(t));

  // llama_model_quantize sets the quantisation version, then the file type
  // (gguf_set_val moves a key it sets to the end)
  const meta: [string, GgufValue][] = metadata.filter(([k]) =>
    k !== Keys.fileType && k !== Keys.quantizationVersion
  );
  meta.push(
    [Keys.quantizationVersion, { type: "u32", value: 2 }],
    [Keys.fileType, { type: "u32", value: ftypeCode }],
  );

  const maxPiece = options.maxPieceValues ?? 16 * 2 ** 20;
  const pieces: Piece[][] = tensors.map((t, i) => {
    const type = types[i]!;
    const nPerRow = t.shape[0]!;
    const nRows = t.shape.slice(1).reduce((a, b) => a * b, 1);
    const rowsPerExpert = t.shape.length >= 3 ? t.shape[1]! : nRows;
    const imatrix = useImatrix && type !== GgmlType.F32 && t.shape.length >= 2
      ? syntheticImatrixFor(t.name, t.shape)
      : undefined;
    const rowBytes = tensorBytes(requireGgmlType(type), [nPerRow]);
    // Box–Muller pairs: a piece must start at an even value.
    const step = nPerRow % 2 === 0 ? Math.max(1, Math.floor(maxPiece / nPerRow)) : nRows;
    const out: Piece[] = [];
    for (let row = 0; row < nRows;) {
      const expert = Math.floor(row / rowsPerExpert);
      const n = Math.min(step, nRows - row, (expert + 1) * rowsPerExpert - row);
      out.push({
        job: {
          source: { init: t.init, seed: t.seed },
          offset: row * nPerRow,
          nRows: n,
          nPerRow,
          type,
          imatrix: imatrix?.slice(expert * nPerRow, (expert + 1) * nPerRow),
        },
        bytes: n * rowBytes,
      });
      row += n;
    }
    return out;
  });

  // a worker holds about 3 pieces' worth (its floats, their quantised bytes,
  // its heap): at most a quarter of the available memory goes to workers
  const nWorkers = options.workers ?? Math.max(
    1,
    Math.min(
      navigator.hardwareConcurrency ?? 1,
      16,
      Math.floor(0.25 * Deno.systemMemoryInfo().available / (12 * maxPiece)),
    ),
  );
  using pool = new QuantPool(nWorkers);
  const total = tensors.reduce(
    (a, t, i) => a + tensorBytes(requireGgmlType(types[i]!), t.shape),
    0,
  );
  const flat = pieces.flat();
  const started: Promise<Uint8Array>[] = [];
  const ahead = Math.max(2, 2 * nWorkers);
  let next = 0;
  let written = 0;
  const streamed: GgufStreamedTensorSpec[] = tensors.map((t, i) => ({
    name: t.name,
    type: types[i]!,
    shape: t.shape,
    chunks: async function* () {
      for (let k = 0; k < pieces[i]!.length; k++) {
        const at = next - started.length; // the piece consumed now
        while (next < flat.length && next < at + ahead) {
          const made = pool.run(flat[next]!.job);
          made.catch(() => {}); // reported when consumed
          started.push(made);
          next++;
        }
        const bytes = await started.shift()!;
        written += bytes.length;
        options.onProgress?.(written, total);
        yield bytes;
      }
    },
  }));
  await writeGgufFileLazy(path, { metadata: meta, tensors: streamed });
  return {
    types: tensors.map((t, i) => ({ name: t.name, type: types[i]! })),
    dataBytes: total,
    workers: nWorkers,
  };
}

/** `llama_model_loader::weight_name_comparer`: block number (none first), then the name. */
export function llamaTensorOrder(a: { name: string }, b: { name: string }): number {
  const block = (n: string) => Number(/^blk\.(\d+)\./.exec(n)?.[1] ?? -1);
  const d = block(a.name) - block(b.name);
  return d !== 0 ? d : a.name < b.name ? -1 : a.name > b.name ? 1 : 0;
}

/** Workers that make pieces, one job each at a time, answering in any order. */
class QuantPool implements Disposable {
  readonly #workers: Worker[] = [];
  readonly #idle: Worker[] = [];
  readonly #queue: QuantJob[] = [];
  readonly #waiting = new Map<
    number,
    { resolve: (b: Uint8Array) => void; reject: (e: Error) => void }
  >();
  #nextId = 0;
  #failed: string | undefined;

  constructor(n: number) {
    for (let i = 0; i < n; i++) {
      const w = new Worker(new URL("./quant_stream_worker.ts", import.meta.url).href, {
        type: "module",
      });
      w.onmessage = (e: MessageEvent<QuantResult>) => {
        const r = e.data;
        const waiter = this.#waiting.get(r.id)!;
        this.#waiting.delete(r.id);
        this.#idle.push(w);
        this.#dispatch();
        if ("error" in r) waiter.reject(new Error(r.error));
        else waiter.resolve(r.bytes);
      };
      w.onerror = (e) => {
        e.preventDefault();
        // a worker that failed (e.g. its module did not load) answers nothing more
        this.#failed = `quantising worker failed: ${e.message}`;
        for (const waiter of this.#waiting.values()) waiter.reject(new Error(this.#failed));
        this.#waiting.clear();
      };
      this.#workers.push(w);
      this.#idle.push(w);
    }
  }

  /** Makes one piece (inline when the pool has no workers). */
  run(job: Omit<QuantJob, "id">): Promise<Uint8Array> {
    const id = this.#nextId++;
    if (this.#workers.length === 0) {
      try {
        return Promise.resolve(runQuantJob({ ...job, id }));
      } catch (e) {
        return Promise.reject(e);
      }
    }
    if (this.#failed) return Promise.reject(new Error(this.#failed));
    return new Promise((resolve, reject) => {
      this.#waiting.set(id, { resolve, reject });
      this.#queue.push({ ...job, id });
      this.#dispatch();
    });
  }

  #dispatch(): void {
    while (this.#idle.length > 0 && this.#queue.length > 0) {
      this.#idle.pop()!.postMessage(this.#queue.shift()!);
    }
  }

  [Symbol.dispose](): void {
    for (const w of this.#workers) w.terminate();
  }
}
