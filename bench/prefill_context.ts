/**
 * What a new turn costs as the cached context grows: the time to process
 * `--new` tokens after `--contexts` positions already in the KV cache (the
 * work of a chat turn with prefix reuse), and of the attention blocks alone
 * (q/k/v projections, RoPE, the KV write, attention, output projection; the
 * only work that depends on the context) for the same batch.
 *
 * ```sh
 * deno run -A bench/prefill_context.ts [--new 155] [--contexts 150,700,1400] [--repeats 2]
 *   [--model data/kjv-moe-Q8_0.gguf]
 * ```
 *
 * Every expert is resident (nothing streams), so the MoE part costs the
 * same at every context length. Besides wall time it reports the process's
 * CPU time (Linux `/proc/self/stat`; on llvmpipe the "GPU" is CPU threads
 * of this process), which other processes on a loaded machine disturb far
 * less. Progress to stderr, one JSON report to stdout.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { loadModel, type Model } from "../src/model/model.ts";
import { recordOps } from "../src/gpu/ops/op.ts";
import { readback } from "../src/gpu/buffers.ts";
import { intFlag, median, note, roundNumbers } from "./_util.ts";

/** CPU time of this process so far, ms (user + system; null where /proc is missing). */
function cpuMs(): number | null {
  try {
    const stat = Deno.readTextFileSync("/proc/self/stat");
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    // fields 14 and 15 (utime, stime) are the 12th and 13th after the command name, in ticks
    return (Number(f[11]) + Number(f[12])) * 10;
  } catch {
    return null;
  }
}

/** Wall and CPU time of `fn`, ms. */
async function measure(fn: () => Promise<unknown>): Promise<{ wall: number; cpu: number | null }> {
  const c0 = cpuMs();
  const t0 = performance.now();
  await fn();
  const wall = performance.now() - t0;
  const c1 = cpuMs();
  return { wall, cpu: c0 === null || c1 === null ? null : c1 - c0 };
}

/** The attention blocks of every layer for a batch of `n` at `pos` (one submit, one sync). */
async function attention(model: Model, pos: number, n: number): Promise<void> {
  const t = model.transformer;
  model.writeStep(pos, n);
  const enc = model.gpu.device.createCommandEncoder();
  const pass = enc.beginComputePass({ label: "attention blocks" });
  for (let l = 0; l < model.config.nLayer; l++) recordOps(pass, t.attention[l]!, n);
  pass.end();
  model.gpu.submit(enc);
  await readback(model.gpu, [{ buffer: t.state.x, offset: 0, size: 4 }]);
}

const tokens = (n: number, salt: number) =>
  Array.from({ length: n }, (_, i) => 10 + ((i * 7 + salt) % 500));

if (import.meta.main) {
  const { values: v } = parseArgs({
    args: Deno.args,
    options: {
      new: { type: "string" },
      contexts: { type: "string" },
      repeats: { type: "string" },
      model: { type: "string" },
    },
  });
  const nNew = intFlag("new", v.new, 155);
  const repeats = intFlag("repeats", v.repeats, 2);
  const contexts = (v.contexts ?? "150,700,1400").split(",").map((s) => intFlag("contexts", s, 1));
  const path = v.model ?? new URL("../data/kjv-moe-Q8_0.gguf", import.meta.url).pathname;
  const nCtx = Math.max(...contexts) + nNew + 1;
  const model = await loadModel({ model: path, cacheSizeGB: 64, nCtx, maxBatch: nNew });
  try {
    await model.forward(tokens(Math.min(64, nNew), 1)); // pipelines compiled
    const rows = [];
    for (const ctx of contexts) {
      const whole: { wall: number; cpu: number | null }[] = [];
      const attn: { wall: number; cpu: number | null }[] = [];
      for (let r = 0; r < repeats; r++) {
        model.reset();
        await model.forward(tokens(ctx, 3));
        attn.push(await measure(() => attention(model, ctx, nNew)));
        whole.push(await measure(() => model.forward(tokens(nNew, 5))));
      }
      const fmt = (xs: { wall: number; cpu: number | null }[]) =>
        xs.map((x) => `${x.wall.toFixed(0)} (cpu ${x.cpu ?? "?"})`).join(", ");
      note(
        `context ${ctx}: ${nNew} new tokens ${fmt(whole)} ms; attention blocks ${fmt(attn)} ms`,
      );
      rows.push({
        context: ctx,
        new_tokens: nNew,
        whole_ms: whole.map((x) => x.wall),
        whole_cpu_ms: whole.map((x) => x.cpu),
        attention_ms: attn.map((x) => x.wall),
        attention_cpu_ms: attn.map((x) => x.cpu),
      });
    }
    console.log(JSON.stringify(
      roundNumbers({
        model: path,
        load_average: Deno.loadavg()[0],
        rows: rows.map((r) => ({
          ...r,
          whole_median_ms: median(r.whole_ms),
          whole_cpu_median_ms: median(r.whole_cpu_ms.map((x) => x ?? NaN)),
          attention_median_ms: median(r.attention_ms),
          attention_cpu_median_ms: median(r.attention_cpu_ms.map((x) => x ?? NaN)),
        })),
      }),
      null,
      2,
    ));
  } finally {
    model.close();
  }
}
