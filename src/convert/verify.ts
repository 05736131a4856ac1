/**
 * `deno task verify DIR|FILE`: checks a model on disk before it is served.
 *
 * - A converter output directory (or its `experts/` or `base_model/`):
 *   every file `manifest.json` lists is there, with the recorded size and
 *   SHA-256.
 * - A GGUF file (any shard of a split model): every tensor's bytes lie
 *   inside its file, and every value decodes to a finite number (the CPU
 *   reference dequantisers; types without one are listed as unchecked).
 *   GGUF files carry no checksum, so corrupt bytes that still decode to
 *   finite values cannot be told from weights.
 *
 * Prints one line per problem and a summary; exit code 0 when the model is
 * intact, 1 when it is not, 2 for a usage error.
 *
 * @module
 */

import { createHash } from "node:crypto";
import { readGgufModel } from "../gguf/reader.ts";
import { canDequantize, dequantizeRows } from "../gguf/dequant.ts";
import { MappedFile } from "../../ffi/mmap.ts";
import { ConvertedFiles } from "../converted/layout.ts";

/** One thing found wrong. */
export interface VerifyProblem {
  /** The file at fault. */
  readonly file: string;
  /** What is wrong with it. */
  readonly detail: string;
}

/** What {@linkcode verifyModel} found. */
export interface VerifyReport {
  /** `converted` (checksums) or `gguf` (ranges and values). */
  readonly kind: "converted" | "gguf";
  /** Files checked. */
  readonly files: number;
  /** Bytes read. */
  readonly bytes: number;
  /** Problems, empty when the model is intact. */
  readonly problems: readonly VerifyProblem[];
  /** GGUF tensors whose type has no CPU decoder (their values were not checked). */
  readonly unchecked: readonly string[];
}

async function sha256File(path: string, onBytes: (n: number) => void): Promise<string> {
  using file = await Deno.open(path, { read: true });
  const hash = createHash("sha256");
  const buf = new Uint8Array(4 << 20);
  for (;;) {
    const n = await file.read(buf);
    if (n === null) break;
    hash.update(buf.subarray(0, n));
    onBytes(n);
  }
  return hash.digest("hex");
}

/** The converter output root holding `path` (itself, or its parent for `experts/`, `base_model/`). */
function convertedRoot(path: string): { root: string; under: string } | undefined {
  const p = path.replace(/\/+$/, "");
  const exists = (f: string) => {
    try {
      return Deno.statSync(f).isFile;
    } catch {
      return false;
    }
  };
  if (exists(`${p}/${ConvertedFiles.manifest}`)) return { root: p, under: "" };
  const cut = p.lastIndexOf("/");
  const parent = cut < 0 ? "." : p.slice(0, cut) || "/";
  if (exists(`${parent}/${ConvertedFiles.manifest}`)) {
    return { root: parent, under: `${p.slice(cut + 1)}/` };
  }
  return undefined;
}

async function verifyConverted(root: string, under: string): Promise<VerifyReport> {
  const manifestPath = `${root}/${ConvertedFiles.manifest}`;
  const problems: VerifyProblem[] = [];
  let doc: { files?: unknown; complete?: unknown };
  try {
    doc = JSON.parse(await Deno.readTextFile(manifestPath));
  } catch (e) {
    return {
      kind: "converted",
      files: 0,
      bytes: 0,
      problems: [{ file: manifestPath, detail: `cannot be read: ${(e as Error).message}` }],
      unchecked: [],
    };
  }
  if (doc.complete !== true) {
    problems.push({ file: manifestPath, detail: "the conversion is not complete" });
  }
  const records = Array.isArray(doc.files) ? doc.files : [];
  if (records.length === 0) problems.push({ file: manifestPath, detail: "lists no files" });
  let files = 0;
  let bytes = 0;
  for (const r of records as { path?: unknown; size?: unknown; sha256?: unknown }[]) {
    if (typeof r?.path !== "string" || typeof r.size !== "number" || typeof r.sha256 !== "string") {
      problems.push({ file: manifestPath, detail: `a malformed file record ${JSON.stringify(r)}` });
      continue;
    }
    if (!r.path.startsWith(under)) continue;
    const path = `${root}/${r.path}`;
    files++;
    let size: number;
    try {
      size = (await Deno.stat(path)).size;
    } catch (e) {
      problems.push({
        file: path,
        detail: e instanceof Deno.errors.NotFound ? "missing" : (e as Error).message,
      });
      continue;
    }
    if (size !== r.size) {
      problems.push({ file: path, detail: `${size} bytes, the manifest says ${r.size}` });
      continue;
    }
    const sha = await sha256File(path, (n) => bytes += n);
    if (sha !== r.sha256) {
      problems.push({ file: path, detail: `SHA-256 ${sha}, the manifest says ${r.sha256}` });
    }
  }
  return { kind: "converted", files, bytes, problems, unchecked: [] };
}

function verifyGguf(path: string): VerifyReport {
  const model = readGgufModel(path);
  const problems: VerifyProblem[] = [];
  const unchecked: string[] = [];
  const mapped = model.files.map((f) => MappedFile.open(f.path));
  let bytes = 0;
  try {
    for (const t of model.tensors) {
      const m = mapped[t.fileIndex]!;
      const file = model.files[t.fileIndex]!.path;
      if (t.fileOffset + t.nBytes > m.size) {
        problems.push({
          file,
          detail: `tensor ${t.name}: bytes [${t.fileOffset}, ${
            t.fileOffset + t.nBytes
          }) run past the end of the ${m.size}-byte file (truncated?)`,
        });
        continue;
      }
      if (!canDequantize(t.type.id)) {
        unchecked.push(`${t.name} (${t.type.name})`);
        continue;
      }
      const rowLength = t.shape[0] ?? 1;
      const nRows = t.nElements / rowLength;
      const src = m.view(t.fileOffset, t.nBytes);
      bytes += t.nBytes;
      const rowsPerChunk = Math.max(1, Math.floor((1 << 20) / rowLength));
      const out = new Float32Array(rowsPerChunk * rowLength);
      scan: for (let r0 = 0; r0 < nRows; r0 += rowsPerChunk) {
        const n = Math.min(rowsPerChunk, nRows - r0);
        const v = dequantizeRows(t.type.id, src, rowLength, r0, n, out);
        for (let i = 0; i < n * rowLength; i++) {
          if (!Number.isFinite(v[i]!)) {
            const row = r0 + Math.floor(i / rowLength);
            problems.push({
              file,
              detail: `tensor ${t.name}: element ${i % rowLength} of row ${row} is ${v[i]} ` +
                `(the file is corrupt: download or convert it again)`,
            });
            break scan;
          }
        }
      }
    }
  } finally {
    for (const m of mapped) m.close();
  }
  return { kind: "gguf", files: model.files.length, bytes, problems, unchecked };
}

/**
 * Checks a converted model (checksums from `manifest.json`) or a GGUF file
 * (tensor ranges and finite values). Problems are reported, not thrown; a
 * path that is neither throws.
 */
export async function verifyModel(path: string): Promise<VerifyReport> {
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(path);
  } catch (e) {
    throw new Error(`${path}: ${(e as Error).message}`);
  }
  if (info.isDirectory) {
    const c = convertedRoot(path);
    if (!c) {
      throw new Error(
        `${path}: no ${ConvertedFiles.manifest} here or in the parent directory; ` +
          `give the converter's output directory (or a .gguf file)`,
      );
    }
    return await verifyConverted(c.root, c.under);
  }
  return verifyGguf(path);
}

const USAGE = `usage: deno task verify DIR|FILE.gguf

  DIR          the converter's output (or its experts/ or base_model/): every file's
               size and SHA-256 against manifest.json
  FILE.gguf    a GGUF model (any shard): tensor ranges inside the file, every value finite`;

/** Runs the command; resolves with the exit code. */
export async function main(args: string[]): Promise<number> {
  if (args.length !== 1 || args[0] === "-h" || args[0] === "--help") {
    console.error(USAGE);
    return args[0] === "-h" || args[0] === "--help" ? 0 : 2;
  }
  const t0 = performance.now();
  let r: VerifyReport;
  try {
    r = await verifyModel(args[0]!);
  } catch (e) {
    console.error(`verify: ${(e as Error).message}`);
    return 2;
  }
  for (const p of r.problems) console.log(`BAD ${p.file}: ${p.detail}`);
  if (r.unchecked.length > 0) {
    console.log(`values not checked (no CPU decoder): ${r.unchecked.join(", ")}`);
  }
  const s = ((performance.now() - t0) / 1000).toFixed(1);
  const mb = (r.bytes / 1e6).toFixed(1);
  console.log(
    r.problems.length === 0
      ? `OK ${args[0]}: ${r.files} files, ${mb} MB checked in ${s} s`
      : `${r.problems.length} problem(s) in ${args[0]} (${r.files} files, ${mb} MB read in ${s} s)`,
  );
  return r.problems.length === 0 ? 0 : 1;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
