/**
 * A worker of `dev/quant_stream.ts`: draws one piece of a synthetic tensor
 * (`syntheticValues`) and quantises it with ggml (`ggml_quantize_chunk`),
 * sending back the bytes.
 *
 * @module
 */

import { syntheticValues, type SyntheticValueSource } from "../src/model/synthetic.ts";
import { ggmlQuantize } from "./ref/ggml.ts";

/** One piece to make: `nRows` rows of `nPerRow` values from value `offset` of a tensor. */
export interface QuantJob {
  /** Sequence number, echoed back. */
  readonly id: number;
  /** The tensor's values. */
  readonly source: SyntheticValueSource;
  /** First value of the piece (a row start). */
  readonly offset: number;
  /** Rows in the piece (never across an expert boundary). */
  readonly nRows: number;
  /** Values per row (`shape[0]`). */
  readonly nPerRow: number;
  /** ggml type to write (0 = F32: the values themselves). */
  readonly type: number;
  /** Importance weights of the piece's expert (`nPerRow` of them), if any. */
  readonly imatrix?: Float32Array<ArrayBuffer>;
}

/** The worker's answer: the piece's bytes, or why it failed. */
export type QuantResult = { id: number; bytes: Uint8Array<ArrayBuffer> } | {
  id: number;
  error: string;
};

/** Makes one piece's bytes (in the worker, or inline). */
export function runQuantJob(job: QuantJob): Uint8Array<ArrayBuffer> {
  const values = syntheticValues(job.source, job.offset, job.nRows * job.nPerRow);
  if (job.type === 0) return new Uint8Array(values.buffer);
  return ggmlQuantize(job.type, values, job.nRows, job.nPerRow, job.imatrix) as Uint8Array<
    ArrayBuffer
  >;
}

interface WorkerScope {
  onmessage: ((e: MessageEvent<QuantJob>) => void) | null;
  postMessage(message: QuantResult, transfer?: Transferable[]): void;
}

if (typeof (globalThis as { WorkerGlobalScope?: unknown }).WorkerGlobalScope !== "undefined") {
  const scope = globalThis as unknown as WorkerScope;
  scope.onmessage = (e) => {
    const job = e.data;
    try {
      const bytes = runQuantJob(job);
      scope.postMessage({ id: job.id, bytes }, [bytes.buffer]);
    } catch (err) {
      scope.postMessage({ id: job.id, error: err instanceof Error ? err.message : String(err) });
    }
  };
}
