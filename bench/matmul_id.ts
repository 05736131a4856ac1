/**
 * The routed experts' matrix product (mul_mat_id) alone, at a real MoE
 * shape: `--experts` matrices of `--rows × --cols` in `--type`, each of
 * `--tokens` tokens choosing `--used` distinct experts at random, through
 *
 * - `entry`: the per-(token, slot) matvec (one entry a workgroup);
 * - `tiles`: the route op and the route tiles (`matvec_routedT` on a CPU
 *   adapter, the tiled kernel on a GPU), over the tiles the route op counted;
 * - `plain`: the reference in the same run, the same number of products
 *   through one plain matrix (`--tokens × --used` tokens, at most 4096);
 *
 * and, with `--arenas N`, the stack split into N stacks (the expert pool's
 * arenas, one op list each) with and without the entry lists that dispatch
 * each stack's one-entry matvec over its own entries only
 * (src/gpu/ops/entry_lists.ts). GPU time (timestamp queries; else wall
 * time of a submit and its sync), fastest of `--reps`. Prints one JSON
 * object.
 *
 * ```sh
 * deno run -A bench/matmul_id.ts [--type Q4_K] [--rows 768] [--cols 2048] [--experts 128]
 *   [--used 8] [--tokens 1,64,128,256,512] [--arenas 6] [--reps 3]
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";
import { acquireGpu, type Gpu } from "../src/gpu/device.ts";
import { createBuffer } from "../src/gpu/buffers.ts";
import { prepareMatmul, prepareMatmulId } from "../src/gpu/ops/matmul.ts";
import { prepareEntryLists } from "../src/gpu/ops/entry_lists.ts";
import { type Op, recordOps, stepWords } from "../src/gpu/ops/op.ts";
import { randomWeightBytes, uploadWeight } from "../src/gpu/ops/weights.ts";
import { GgmlType, requireGgmlType } from "../src/gguf/types.ts";
import { Rng } from "../src/util/rng.ts";
import { GpuTimer } from "../src/gpu/timer.ts";
import { intFlag, note } from "./_util.ts";

/**
 * The fastest of `reps` runs of `ops` for `nTokens`, ms: GPU time from
 * timestamp queries where the device has them, else the wall time of a
 * submit and its sync.
 */
async function time(gpu: Gpu, ops: readonly Op[], nTokens: number, reps: number): Promise<number> {
  const timer = new GpuTimer(gpu, 1);
  const once = async () => {
    const t0 = performance.now();
    const enc = gpu.device.createCommandEncoder();
    const pass = enc.beginComputePass({ timestampWrites: timer.pass("ops") });
    recordOps(pass, ops, nTokens);
    pass.end();
    if (timer.enabled) timer.resolve(enc);
    gpu.submit(enc);
    if (timer.enabled) return (await timer.read())[0]!.ms;
    await gpu.device.queue.onSubmittedWorkDone();
    return performance.now() - t0;
  };
  try {
    await once(); // a CPU adapter compiles the kernel at its first dispatch
    let best = Infinity;
    for (let r = 0; r < reps; r++) best = Math.min(best, await once());
    return best;
  } finally {
    timer.destroy();
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      type: { type: "string", default: "Q4_K" },
      rows: { type: "string" },
      cols: { type: "string" },
      experts: { type: "string" },
      used: { type: "string" },
      tokens: { type: "string", default: "1,64,128,256,512" },
      arenas: { type: "string" },
      reps: { type: "string" },
    },
  });
  const typeId = GgmlType[values.type as keyof typeof GgmlType];
  if (typeId === undefined) throw new Error(`matmul_id: unknown --type ${values.type}`);
  const type = requireGgmlType(typeId);
  const R = intFlag("rows", values.rows, 768);
  const C = intFlag("cols", values.cols, 2048);
  const N = intFlag("experts", values.experts, 128);
  const K = intFlag("used", values.used, 8);
  const A = intFlag("arenas", values.arenas, 6);
  const reps = intFlag("reps", values.reps, 3);
  const tokenCounts = values.tokens!.split(",").map((s) => intFlag("tokens", s, 1));
  if (K > N) throw new Error(`matmul_id: --used ${K} > --experts ${N}`);
  const gpu = await acquireGpu();
  const rng = new Rng(7);
  const bytes = randomWeightBytes(type, R * C * N, () => rng.next());
  const matBytes = bytes.length / N;
  // the arenas' stacks: N split as evenly as it goes
  const sizes = Array.from(
    { length: A },
    (_, a) => Math.floor(N * (a + 1) / A) - Math.floor(N * a / A),
  );
  const starts = sizes.map((_, a) => Math.floor(N * a / A));
  const stacks = sizes.map((n, a) =>
    uploadWeight(
      gpu,
      `arena${a}`,
      type,
      [C, R, n],
      bytes.subarray(starts[a]! * matBytes, (starts[a]! + n) * matBytes),
    )
  );
  const whole = N * matBytes <= gpu.limits.maxStorageBufferBindingSize
    ? uploadWeight(gpu, "stack", type, [C, R, N], bytes)
    : undefined;
  const plainW = uploadWeight(gpu, "plain", type, [C, R], bytes.subarray(0, matBytes));
  const maxT = Math.max(...tokenCounts);
  const xb = createBuffer(gpu, {
    label: "x",
    data: Float32Array.from({ length: Math.max(maxT * K, 4096) * C }, () => rng.next() - 0.5),
  });
  const yb = createBuffer(gpu, { label: "y", size: 4 * Math.max(maxT * K, 4096) * R });
  const rows: Record<string, unknown>[] = [];
  for (const T of tokenCounts) {
    note(`matmul_id: ${T} tokens`);
    const ids = new Uint32Array(T * K);
    for (let t = 0; t < T; t++) {
      const chosen = new Set<number>();
      while (chosen.size < K) chosen.add(rng.int(N));
      [...chosen].forEach((e, s) => ids[t * K + s] = e);
    }
    const ib = createBuffer(gpu, { label: "ids", data: ids });
    const step = createBuffer(gpu, { label: "step", data: stepWords(0, T) });
    const common = {
      ids: { buffer: ib, offset: 0 },
      nUsed: K,
      x: { buffer: xb, offset: 0, stride: C },
      xPerSlot: false,
      y: { buffer: yb, offset: 0, stride: K * R },
      step,
      maxTokens: T,
      nChoices: N,
    };
    const entry = { idMatvecMaxTokens: 1 << 20 };
    const tiles = { idMatvecMaxTokens: 0 };
    const macs = T * K * R * C;
    const row: Record<string, number> = { tokens: T, entries_per_expert: T * K / N };
    const put = (name: string, ms: number) => {
      row[`${name}_ms`] = ms;
      row[`${name}_GMACps`] = macs / ms / 1e6;
    };
    if (whole) {
      put(
        "entry",
        await time(
          gpu,
          await prepareMatmulId(gpu, { ...common, w: whole, label: "entry", tuning: entry }),
          T,
          reps,
        ),
      );
      put(
        "tiles",
        await time(
          gpu,
          await prepareMatmulId(gpu, { ...common, w: whole, label: "tiles", tuning: tiles }),
          T,
          reps,
        ),
      );
    }
    const split = async (lists: boolean) => {
      const el = lists
        ? await prepareEntryLists(gpu, {
          ids: common.ids,
          nUsed: K,
          stacks: stacks.map((w, a) => ({ idBase: starts[a]!, nMats: w.nMats })),
          maxTokens: T,
          step,
          label: "lists",
        })
        : undefined;
      const ops: Op[] = el ? [el.op] : [];
      for (const [a, w] of stacks.entries()) {
        ops.push(
          ...await prepareMatmulId(gpu, {
            ...common,
            w,
            idBase: starts[a]!,
            label: `arena${a}`,
            tuning: entry,
            entryLists: el ? { lists: el, stack: a } : undefined,
          }),
        );
      }
      return await time(gpu, ops, T, reps);
    };
    if (A > 1) {
      put(`entry_${A}_arenas`, await split(false));
      put(`entry_${A}_arenas_lists`, await split(true));
    }
    const Tp = Math.min(T * K, 4096);
    const pstep = createBuffer(gpu, { label: "pstep", data: stepWords(0, Tp) });
    const plain = await prepareMatmul(gpu, {
      w: plainW,
      x: { buffer: xb, offset: 0, stride: C },
      y: { buffer: yb, offset: 0, stride: R },
      step: pstep,
      label: "plain",
    });
    const pms = await time(gpu, plain, Tp, reps);
    row.plain_tokens = Tp;
    row.plain_GMACps = Tp * R * C / pms / 1e6;
    rows.push(row);
  }
  const info = gpu.adapterInfo;
  console.log(JSON.stringify({
    bench: "matmul_id",
    device: `${info.description || info.device || info.vendor}`,
    shape: { type: type.name, rows: R, cols: C, experts: N, used: K, arenas: A },
    note:
      "ms of one pass (timestamp queries, else wall time with a sync), fastest of reps; GMAC/s = tokens × used × rows × cols / time; " +
      "plain = the same kernel family over one matrix (tokens × used tokens, ≤ 4096)",
    results: rows,
  }));
}

if (import.meta.main) await main();
