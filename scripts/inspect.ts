/**
 * `deno task inspect FILE [--json]`: what is in a GGUF model — architecture,
 * hyperparameters, tokenizer, tensor table and the routed-expert layout.
 * Exits 1 with the reader's error on a bad file.
 *
 * @module
 */

import { type GgufModelFile, readGgufModel } from "../src/gguf/reader.ts";
import { describeValue } from "../src/gguf/value.ts";
import { Keys } from "../src/gguf/names.ts";
import { expertLayout } from "../src/experts/layout.ts";

/** The JSON report `inspect --json` prints. */
export function inspectReport(model: GgufModelFile) {
  const arch = model.architecture;
  const md = model.metadata;
  const hyper: Record<string, string> = {};
  for (const [k, v] of md.entries) {
    if (k.startsWith(`${arch}.`)) hyper[k.slice(arch.length + 1)] = describeValue(v);
  }
  const general: Record<string, string> = {};
  for (const [k, v] of md.entries) if (k.startsWith("general.")) general[k] = describeValue(v);
  const tokens = md.strings(Keys.tokenizerTokens);
  const tokenizer = tokens === undefined ? null : {
    model: md.string(Keys.tokenizerModel, null),
    pre: md.string(Keys.tokenizerPre, null),
    vocab_size: tokens.length,
    merges: md.array(Keys.tokenizerMerges)?.value.length ?? 0,
    bos_token_id: md.number(Keys.tokenizerBosId, null),
    eos_token_id: md.number(Keys.tokenizerEosId, null),
    add_bos_token: md.bool(Keys.tokenizerAddBos, false),
    chat_template: md.has(Keys.tokenizerChatTemplate),
  };
  const layout = expertLayout(model);
  const expertBytes = layout.reduce((s, l) => s + l.bytesPerExpert * l.nExpert, 0);
  const totalBytes = model.tensors.reduce((s, t) => s + t.nBytes, 0);
  return {
    files: model.files.map((f) => ({ path: f.path, version: f.version, bytes: f.fileSize })),
    architecture: arch,
    general,
    hyperparameters: hyper,
    tokenizer,
    tensor_count: model.tensors.length,
    tensor_bytes: totalBytes,
    base_bytes: totalBytes - expertBytes,
    expert_bytes: expertBytes,
    tensors: model.tensors.map((t) => ({
      name: t.name,
      type: t.type.name,
      shape: t.shape,
      offset: t.fileOffset,
      bytes: t.nBytes,
      file: t.fileIndex,
    })),
    expert_layout: layout.map((l) => ({
      layer: l.layer,
      experts: l.nExpert,
      bytes_per_expert: l.bytesPerExpert,
      slices: l.tensors.map((t) => ({
        tensor: t.name,
        type: t.type.name,
        slice_shape: t.sliceShape,
        slice_bytes: t.sliceBytes,
        contiguous: true,
      })),
      slices_adjacent: l.slicesAdjacent,
    })),
  };
}

function fmtBytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

function printText(r: ReturnType<typeof inspectReport>): void {
  for (const f of r.files) {
    console.log(`file         ${f.path} (GGUF v${f.version}, ${fmtBytes(f.bytes)})`);
  }
  console.log(`architecture ${r.architecture || "(none)"}`);
  for (const [k, v] of Object.entries(r.general)) console.log(`  ${k} = ${v}`);
  console.log("hyperparameters");
  for (const [k, v] of Object.entries(r.hyperparameters)) console.log(`  ${k} = ${v}`);
  if (r.tokenizer) {
    const t = r.tokenizer;
    console.log(
      `tokenizer    ${t.model} (pre ${
        t.pre ?? "-"
      }), ${t.vocab_size} tokens, ${t.merges} merges, ` +
        `bos ${t.bos_token_id ?? "-"}, eos ${t.eos_token_id ?? "-"}, add_bos ${t.add_bos_token}, ` +
        `chat template ${t.chat_template ? "yes" : "no"}`,
    );
  } else console.log("tokenizer    (none)");
  console.log(
    `tensors      ${r.tensor_count}, ${fmtBytes(r.tensor_bytes)}: base ${
      fmtBytes(r.base_bytes)
    }, routed experts ${fmtBytes(r.expert_bytes)}`,
  );
  const w = Math.max(...r.tensors.map((t) => t.name.length), 4);
  console.log(`  ${"name".padEnd(w)}  type     shape                 offset        bytes`);
  for (const t of r.tensors) {
    console.log(
      `  ${t.name.padEnd(w)}  ${t.type.padEnd(7)}  ${JSON.stringify(t.shape).padEnd(20)}  ${
        String(t.offset).padStart(12)
      }  ${String(t.bytes).padStart(11)}${r.files.length > 1 ? `  (file ${t.file})` : ""}`,
    );
  }
  console.log("expert layout");
  if (r.expert_layout.length === 0) console.log("  (no routed experts)");
  for (const l of r.expert_layout) {
    const slices = l.slices.map((s) =>
      `${s.tensor.split(".")[2]} ${s.type} ${fmtBytes(s.slice_bytes)}`
    );
    console.log(
      `  layer ${String(l.layer).padStart(3)}: ${l.experts} experts × ${
        fmtBytes(l.bytes_per_expert)
      } ` +
        `[${slices.join(", ")}]; each slice contiguous, slices ${
          l.slices_adjacent
            ? "adjacent (one read per expert)"
            : "in separate tensors (one read per slice)"
        }`,
    );
  }
}

if (import.meta.main) {
  const args = Deno.args.filter((a) => a !== "--json");
  const json = Deno.args.includes("--json");
  if (args.length !== 1) {
    console.error("usage: deno task inspect FILE.gguf [--json]");
    Deno.exit(2);
  }
  try {
    const report = inspectReport(readGgufModel(args[0]!));
    if (json) console.log(JSON.stringify(report, null, 2));
    else printText(report);
  } catch (e) {
    console.error(`inspect: ${e instanceof Error ? e.message : String(e)}`);
    Deno.exit(1);
  }
}
