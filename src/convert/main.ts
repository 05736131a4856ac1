/**
 * `deno task convert`: GGUF → base weights + per-expert files.
 *
 * ```
 * deno task convert --input model.gguf --output DIR [--base-only]
 *   [--output-dtype keep|float16|bfloat16|float32] [--dry-run] [--shard-size-gb N] [--overwrite]
 * ```
 *
 * Exit status: 0 done, 1 failed (the message says why), 2 bad arguments,
 * 130 interrupted (rerun the same command to resume).
 *
 * @module
 */

import { parseArgs } from "node:util";
import { readGgufModel } from "../gguf/reader.ts";
import {
  convertGguf,
  describeOutputState,
  outputState,
  recordedOptionsOf,
  sourceIdentity,
} from "./convert.ts";
import {
  DEFAULT_SHARD_SIZE_GB,
  describePlan,
  formatBytes,
  OUTPUT_DTYPES,
  type OutputDtype,
  planConversion,
} from "./plan.ts";
import { defaultProgress } from "./progress.ts";

const USAGE = `usage: deno task convert --input model.gguf --output DIR [options]

  --input PATH           the GGUF model (any shard of a split model)
  --output DIR           where to write: DIR/base_model/, DIR/experts/, DIR/manifest.json
  --base-only            write only DIR/base_model/ (serve experts from the GGUF with --gguf-experts)
  --output-dtype T       keep (default: quantised blocks stay as they are), float16, bfloat16, float32
  --dry-run              print what would be written, write nothing
  --shard-size-gb N      largest base shard in GiB (default ${DEFAULT_SHARD_SIZE_GB})
  --overwrite            replace what DIR holds instead of resuming or refusing
  -h, --help             this text

An interrupted conversion resumes when rerun with the same arguments.`;

class UsageError extends Error {}

interface Args {
  input: string;
  output?: string;
  baseOnly: boolean;
  outputDtype: OutputDtype;
  dryRun: boolean;
  shardSizeGb: number;
  overwrite: boolean;
}

function parse(argv: string[]): Args | "help" {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      strict: true,
      allowPositionals: false,
      options: {
        input: { type: "string" },
        output: { type: "string" },
        "base-only": { type: "boolean", default: false },
        "output-dtype": { type: "string", default: "keep" },
        "dry-run": { type: "boolean", default: false },
        "shard-size-gb": { type: "string", default: String(DEFAULT_SHARD_SIZE_GB) },
        overwrite: { type: "boolean", default: false },
        help: { type: "boolean", short: "h", default: false },
      },
    }));
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  if (values.help) return "help";
  if (!values.input) throw new UsageError("--input is required");
  if (!values.output && !values["dry-run"]) throw new UsageError("--output is required");
  const dtype = values["output-dtype"] as OutputDtype;
  if (!OUTPUT_DTYPES.includes(dtype)) {
    throw new UsageError(`--output-dtype must be one of ${OUTPUT_DTYPES.join(", ")}, got ${dtype}`);
  }
  const shard = Number(values["shard-size-gb"]);
  if (!(shard > 0) || !Number.isFinite(shard)) {
    throw new UsageError(
      `--shard-size-gb must be a positive number, got ${values["shard-size-gb"]}`,
    );
  }
  return {
    input: values.input,
    output: values.output,
    baseOnly: values["base-only"] ?? false,
    outputDtype: dtype,
    dryRun: values["dry-run"] ?? false,
    shardSizeGb: shard,
    overwrite: values.overwrite ?? false,
  };
}

/** Runs the CLI with `argv`; returns the exit status. */
export async function main(argv: string[]): Promise<number> {
  let args: Args | "help";
  try {
    args = parse(argv);
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    console.error(`error: ${e.message}\n\n${USAGE}`);
    return 2;
  }
  if (args === "help") {
    console.log(USAGE);
    return 0;
  }
  const options = {
    input: args.input,
    outputDtype: args.outputDtype,
    baseOnly: args.baseOnly,
    shardSizeGb: args.shardSizeGb,
  };

  if (args.dryRun) {
    try {
      const model = readGgufModel(args.input);
      const plan = planConversion(model, options);
      for (const line of describePlan(plan, args.output)) console.log(line);
      if (args.output !== undefined && plan.supported) {
        const state = outputState(args.output, sourceIdentity(model), recordedOptionsOf(plan));
        console.log(`output:        ${args.output}: ${describeOutputState(state, args.overwrite)}`);
      }
      console.log("dry run: nothing written");
      if (!plan.supported) throw plan.unsupported!;
      return 0;
    } catch (e) {
      console.error(`error: ${(e as Error).message}`);
      return 1;
    }
  }

  const controller = new AbortController();
  let interrupts = 0;
  const onSignal = () => {
    if (++interrupts > 1) Deno.exit(130);
    controller.abort(new Deno.errors.Interrupted("interrupted"));
  };
  const signals: Deno.Signal[] = Deno.build.os === "windows" ? ["SIGINT"] : ["SIGINT", "SIGTERM"];
  for (const s of signals) Deno.addSignalListener(s, onSignal);
  const progress = defaultProgress();
  try {
    const result = await convertGguf({
      ...options,
      output: args.output!,
      overwrite: args.overwrite,
      signal: controller.signal,
      progress,
    });
    const p = result.plan;
    if (!result.alreadyComplete) {
      console.log(
        `converted ${p.architecture}: ${p.base.tensors.length} base tensors in ${p.base.shards.length} shard(s)` +
          (p.baseOnly ? "" : `, ${p.experts.fileCount} expert files`) +
          ` -> ${result.outputDir} (${result.filesWritten} files, ${
            formatBytes(result.bytesWritten)
          } written` +
          (result.filesReused ? `, ${result.filesReused} kept from an earlier run` : "") +
          `, ${result.seconds.toFixed(1)} s)`,
      );
    }
    return 0;
  } catch (e) {
    if (controller.signal.aborted) {
      console.error(
        `interrupted: finished files are kept; rerun the same command to resume (no manifest.json was written)`,
      );
      return 130;
    }
    console.error(`error: ${(e as Error).message}`);
    return 1;
  } finally {
    for (const s of signals) Deno.removeSignalListener(s, onSignal);
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
