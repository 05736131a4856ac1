/**
 * Experts read from the converter's per-expert safetensors files
 * (`DIR/experts/layer_LLL/expert_EEE.safetensors`), for `--expert-dir`.
 *
 * @module
 */

import { type ExpertDir, type ExpertFile, openExpertDir } from "../converted/reader.ts";
import { type ExpertLayerShape, ExpertReadError, type ExpertSource } from "./source.ts";

/** How many expert files stay mapped at once (views handed out stay valid until evicted). */
const OPEN_FILES = 64;

/** An {@link ExpertSource} over a converted model's expert directory. */
export class ExpertDirSource implements ExpertSource {
  /** The expert layers, in layer order. */
  readonly layers: readonly ExpertLayerShape[];
  /** The directory's reader. */
  readonly dir: ExpertDir;
  readonly #open = new Map<string, ExpertFile>();

  /** Opens `dir` (`DIR/experts`); its layout is read from `experts.json`. */
  constructor(dir: string | ExpertDir) {
    this.dir = typeof dir === "string" ? openExpertDir(dir) : dir;
    this.layers = this.dir.layers;
  }

  /** The expert's parts (gate, up, down, …) in the layer's tensor order: views of its mapped file. */
  expertParts(layer: number, expert: number): Uint8Array[] {
    const key = `${layer}:${expert}`;
    let f = this.#open.get(key);
    if (f) {
      this.#open.delete(key); // refresh its place in the LRU order
    } else {
      try {
        f = this.dir.open(layer, expert);
      } catch (e) {
        if (e instanceof RangeError) throw e;
        const detail = e instanceof Error ? e.message : String(e);
        throw new ExpertReadError(this.#path(layer, expert), layer, expert, undefined, detail, {
          cause: e,
        });
      }
      while (this.#open.size >= OPEN_FILES) {
        const [oldest, file] = this.#open.entries().next().value!;
        this.#open.delete(oldest);
        file.close();
      }
    }
    this.#open.set(key, f);
    return f.tensors.map((t) => t.bytes);
  }

  #path(layer: number, expert: number): string {
    try {
      return this.dir.path(layer, expert);
    } catch {
      return `${this.dir.dir}/layer ${layer}/expert ${expert}`;
    }
  }

  /** Closes every open file. */
  close(): void {
    for (const f of this.#open.values()) f.close();
    this.#open.clear();
  }

  /** Same as {@link close}. */
  [Symbol.dispose](): void {
    this.close();
  }
}
