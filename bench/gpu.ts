/**
 * `deno task bench gpu`: the GPU check. On a Linux machine with an NVIDIA
 * GPU it
 *
 * 1. looks at the machine — the GPU (`nvidia-smi`, `/proc/driver/nvidia`),
 *    the Vulkan loader (`libvulkan.so.1`), the Vulkan drivers (ICD files,
 *    NVIDIA's `libGLX_nvidia.so.0`), CUDA's libraries — and installs what
 *    Deno's WebGPU needs (`apt-get install libvulkan1`; an ICD file for
 *    NVIDIA's driver when the container has the library but no file);
 * 2. prints the WebGPU adapter od-moe gets and the devices llama.cpp's
 *    Vulkan and CUDA builds (the same pinned release, npm
 *    `@node-llama-cpp/linux-x64-vulkan` and `-cuda`) find;
 * 3. writes the preset files (`dev/quant_stream.ts`, cached in
 *    `.cache/models/gpu-bench-*.gguf`);
 * 4. runs the parity tests (od-moe against llama.cpp's CPU reference, on
 *    this adapter);
 * 5. runs the decode bench (`bench/decode.ts`) at two presets against each
 *    llama.cpp GPU build on the same GPU and file, each in its own process;
 * 6. prints one table (and writes `bench/out/gpu.md` and `gpu.json`).
 *
 * Without an NVIDIA GPU it says so and runs the same steps on the adapter
 * there is, against llama.cpp's CPU build — and against its Vulkan build on
 * the same adapter when llama.cpp's Vulkan backend can use it (Mesa's
 * lavapipe is a CPU-type device, which llama.cpp skips unless
 * `GGML_VK_VISIBLE_DEVICES` names it; this check names it).
 *
 * ```sh
 * deno task bench gpu [--presets qwen3-30b-a3b,gpt-oss-20b] [--layers 4] [--type Q4_K_M]
 *   [--prompt-tokens 128] [--tokens 32] [--parity all|quick|none|FILE,…] [--no-install]
 *   [--budget-s 480]
 * ```
 *
 * Defaults with an NVIDIA GPU: `qwen3-30b-a3b` and `gpt-oss-20b` at 4
 * layers, Q4_K_M, a 128-token prompt and 32 decoded tokens, every parity
 * test file; without one: `olmoe-1b-7b` and `qwen3-30b-a3b` at 1 layer, a
 * 16-token prompt and 8 tokens, the quick parity files. Steps past
 * `--budget-s` are skipped and said so.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { presetOptions, SHAPE_PRESET_NAMES } from "../dev/presets.ts";
import { fixtureSpec } from "../dev/fixtures.ts";
import { writeQuantizedSynthetic } from "../dev/quant_stream.ts";
import { QUANT_RECIPES, type QuantRecipe, tensorTypeIds } from "../dev/quant_recipes.ts";
import type { LlamaBuild, LlamaDevice, LlamaFtypeName } from "../dev/ref/llama_cpp.ts";
import { REPO_ROOT } from "../dev/ref/llama_src.ts";
import { note } from "./_util.ts";

/** What a command printed, or why it could not run. */
export interface CommandResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a command (no shell); a missing program gives code 127. */
export type CommandRunner = (cmd: string, args: string[]) => Promise<CommandResult>;

/** The default {@linkcode CommandRunner}: `Deno.Command`. */
export const runCommand: CommandRunner = async (cmd, args) => {
  try {
    const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
    const dec = new TextDecoder();
    return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
  } catch (e) {
    return { code: 127, stdout: "", stderr: (e as Error).message };
  }
};

/** One Vulkan driver manifest (ICD JSON). */
export interface VulkanIcd {
  /** The JSON file. */
  file: string;
  /** The driver library it names. */
  library: string;
  /** NVIDIA's driver. */
  nvidia: boolean;
}

/** What {@linkcode probeMachine} found. */
export interface MachineProbe {
  /** The NVIDIA GPUs (`nvidia-smi -L`, else `/proc/driver/nvidia/gpus`), by name. */
  nvidiaGpus: string[];
  /** NVIDIA's driver version, if any. */
  nvidiaDriver?: string;
  /** Shared libraries found (`ldconfig -p`, `LD_LIBRARY_PATH`, CUDA's usual folders): name → path. */
  libraries: Record<string, string>;
  /** Vulkan driver manifests in the loader's search folders (or `VK_DRIVER_FILES`). */
  icds: VulkanIcd[];
  /** Running as root. */
  root: boolean;
  /** `apt-get` exists. */
  apt: boolean;
}

/** The libraries the check looks for. */
export const PROBED_LIBRARIES = [
  "libvulkan.so.1",
  "libGLX_nvidia.so.0",
  "libEGL_nvidia.so.0",
  "libcuda.so.1",
  "libcudart.so.13",
  "libcublas.so.13",
  "libcudart.so.12",
  "libcublas.so.12",
] as const;

const ICD_DIRS = [
  "/etc/vulkan/icd.d",
  "/usr/share/vulkan/icd.d",
  "/usr/local/share/vulkan/icd.d",
  "/usr/share/vulkan/implicit_layer.d/../icd.d",
];

/**
 * Looks at the machine without changing it: NVIDIA GPUs and driver, the
 * libraries of {@linkcode PROBED_LIBRARIES}, Vulkan driver manifests.
 */
export async function probeMachine(run: CommandRunner = runCommand): Promise<MachineProbe> {
  const nvidiaGpus: string[] = [];
  let nvidiaDriver: string | undefined;
  const smi = await run("nvidia-smi", [
    "--query-gpu=name,driver_version",
    "--format=csv,noheader",
  ]);
  if (smi.code === 0) {
    for (const line of smi.stdout.split("\n").map((l) => l.trim()).filter((l) => l)) {
      const [name, driver] = line.split(",").map((s) => s.trim());
      nvidiaGpus.push(name!);
      nvidiaDriver ??= driver;
    }
  } else {
    try {
      for (const e of Deno.readDirSync("/proc/driver/nvidia/gpus")) {
        const info = Deno.readTextFileSync(`/proc/driver/nvidia/gpus/${e.name}/information`);
        nvidiaGpus.push(/Model:\s*(.*)/.exec(info)?.[1]?.trim() ?? "NVIDIA GPU");
      }
      nvidiaDriver = /Kernel Module\s+([\d.]+)/.exec(
        Deno.readTextFileSync("/proc/driver/nvidia/version"),
      )?.[1];
    } catch { /* no NVIDIA kernel driver */ }
  }

  const libraries: Record<string, string> = {};
  const ldconfig = await run("ldconfig", ["-p"]);
  for (const line of ldconfig.stdout.split("\n")) {
    const m = /^\s*(\S+) \(([^)]*)\) => (\S+)/.exec(line);
    if (m && (PROBED_LIBRARIES as readonly string[]).includes(m[1]!) && m[2]!.includes("x86-64")) {
      libraries[m[1]!] ??= m[3]!;
    }
  }
  const dirs = [
    ...(Deno.env.get("LD_LIBRARY_PATH") ?? "").split(":").filter((d) => d),
    "/usr/local/cuda/lib64",
    "/usr/local/cuda/targets/x86_64-linux/lib",
    "/usr/lib/x86_64-linux-gnu",
  ];
  for (const lib of PROBED_LIBRARIES) {
    if (libraries[lib]) continue;
    for (const d of dirs) {
      try {
        Deno.statSync(`${d}/${lib}`);
        libraries[lib] = `${d}/${lib}`;
        break;
      } catch { /* not here */ }
    }
  }

  const icds: VulkanIcd[] = [];
  const explicit = Deno.env.get("VK_DRIVER_FILES") ?? Deno.env.get("VK_ICD_FILENAMES");
  const files = explicit ? explicit.split(":") : ICD_DIRS.flatMap((d) => {
    try {
      return [...Deno.readDirSync(d)].filter((e) => e.name.endsWith(".json")).map((e) =>
        `${d}/${e.name}`
      );
    } catch {
      return [];
    }
  });
  for (const file of new Set(files)) {
    try {
      const json = JSON.parse(Deno.readTextFileSync(file));
      const library = String(json?.ICD?.library_path ?? "");
      if (icds.some((i) => i.library === library)) continue;
      icds.push({ file, library, nvidia: /nvidia/i.test(library) });
    } catch { /* unreadable manifest */ }
  }
  const id = await run("id", ["-u"]);
  const apt = await run("apt-get", ["--version"]);
  return {
    nvidiaGpus,
    nvidiaDriver,
    libraries,
    icds,
    root: id.stdout.trim() === "0",
    apt: apt.code === 0,
  };
}

/** What {@linkcode planSetup} decided. */
export interface SetupPlan {
  /** Commands to run, in order (`apt-get …`). */
  commands: string[][];
  /** An ICD manifest to write for NVIDIA's driver: path and JSON text. */
  writeIcd?: { path: string; text: string };
  /** Environment for the processes that use the GPU. */
  env: Record<string, string>;
  /** What was found or is missing, for the report. */
  notes: string[];
  /** The llama.cpp builds worth trying. */
  builds: LlamaBuild[];
}

/**
 * Decides what to install and set, from a {@linkcode MachineProbe}: nothing
 * is assumed (a container may have NVIDIA's compute driver without its
 * Vulkan driver, or the loader without a manifest).
 */
export function planSetup(p: MachineProbe, options: { install: boolean }): SetupPlan {
  const plan: SetupPlan = { commands: [], env: {}, notes: [], builds: ["vulkan"] };
  const canInstall = options.install && p.root && p.apt;
  const nvidia = p.nvidiaGpus.length > 0;
  if (!nvidia) {
    plan.notes.push(
      "no NVIDIA GPU on this machine (no nvidia-smi, no /proc/driver/nvidia): od-moe runs on " +
        "the adapter there is, against llama.cpp's CPU build, and its Vulkan build where " +
        "llama.cpp's Vulkan backend accepts that adapter",
    );
    plan.builds = ["cpu", "vulkan"];
    // lavapipe/llvmpipe are CPU-type Vulkan devices, which llama.cpp skips unless named
    plan.env.GGML_VK_VISIBLE_DEVICES = "0";
    if (!p.libraries["libvulkan.so.1"]) {
      plan.notes.push("no Vulkan loader (libvulkan.so.1): llama.cpp's Vulkan build cannot load");
      plan.builds = ["cpu"];
    }
    return plan;
  }
  plan.notes.push(`NVIDIA GPU: ${p.nvidiaGpus.join(", ")} (driver ${p.nvidiaDriver ?? "?"})`);
  if (!p.libraries["libvulkan.so.1"]) {
    if (canInstall) {
      plan.commands.push(["apt-get", "update", "-qq"]);
      plan.commands.push(["apt-get", "install", "-y", "-qq", "libvulkan1"]);
      plan.notes.push("installing the Vulkan loader: apt-get install libvulkan1");
    } else {
      plan.notes.push(
        "no Vulkan loader (libvulkan.so.1) and no way to install it here " +
          `(${
            !options.install ? "--no-install" : !p.root ? "not root" : "no apt-get"
          }): run \`apt-get install libvulkan1\``,
      );
    }
  }
  const nvidiaIcd = p.icds.find((i) => i.nvidia);
  const glx = p.libraries["libGLX_nvidia.so.0"] ?? p.libraries["libEGL_nvidia.so.0"];
  if (nvidiaIcd) {
    plan.notes.push(`NVIDIA Vulkan driver manifest: ${nvidiaIcd.file} (${nvidiaIcd.library})`);
    plan.env.VK_DRIVER_FILES = nvidiaIcd.file;
    plan.env.VK_ICD_FILENAMES = nvidiaIcd.file;
  } else if (glx) {
    const path = `${REPO_ROOT}/.cache/vulkan/nvidia_icd.json`;
    plan.writeIcd = {
      path,
      text: JSON.stringify(
        {
          file_format_version: "1.0.0",
          ICD: { library_path: glx, api_version: "1.3.0" },
        },
        null,
        2,
      ),
    };
    plan.env.VK_DRIVER_FILES = path;
    plan.env.VK_ICD_FILENAMES = path;
    plan.notes.push(
      `NVIDIA's Vulkan driver ${glx} has no manifest in the loader's folders: writing ${path}`,
    );
  } else {
    plan.notes.push(
      "NVIDIA's Vulkan driver (libGLX_nvidia.so.0) is not on this machine — a container " +
        "started without the graphics capability (NVIDIA_DRIVER_CAPABILITIES=all or " +
        "…,graphics) has only the compute driver: WebGPU and llama.cpp's Vulkan build " +
        "cannot see the GPU",
    );
  }
  if (!p.libraries["libcuda.so.1"]) {
    plan.notes.push("no CUDA driver library (libcuda.so.1): llama.cpp's CUDA build is skipped");
  } else if (
    (p.libraries["libcudart.so.13"] && p.libraries["libcublas.so.13"]) ||
    (p.libraries["libcudart.so.12"] && p.libraries["libcublas.so.12"])
  ) {
    plan.builds.push("cuda");
  } else if (canInstall) {
    // Ubuntu's multiverse packages of the CUDA 12 runtime (node-llama-cpp's fallback build links them)
    plan.commands.push(["apt-get", "install", "-y", "-qq", "libcudart12", "libcublas12"]);
    plan.notes.push(
      "CUDA runtime (libcudart, libcublas 12 or 13) missing: installing libcudart12 libcublas12",
    );
    plan.builds.push("cuda");
  } else {
    plan.notes.push(
      "CUDA runtime (libcudart, libcublas 12 or 13) missing: llama.cpp's CUDA build is " +
        "skipped (apt-get install libcudart12 libcublas12, or NVIDIA's cuda-cudart-13 libcublas-13)",
    );
  }
  return plan;
}

/** One decode-bench result row of the table. */
export interface GpuBenchRow {
  preset: string;
  engine: string;
  device: string;
  prefill: number | null;
  decode: number | null;
  /** od-moe's tokens/s divided by this engine's (prefill, decode); null for od-moe. */
  ratio: [number, number] | null;
  /** Whether the greedy tokens match od-moe's, from the first (or where they part). */
  tokens: string;
  error?: string;
}

/** The table {@linkcode runGpuCheck} prints. */
export function gpuTable(rows: GpuBenchRow[]): string {
  const f = (x: number | null | undefined) =>
    typeof x === "number" && Number.isFinite(x) ? String(Number(x.toPrecision(3))) : "–";
  return [
    "| preset | engine | device | prefill tok/s | decode tok/s | od-moe (row above) ÷ it (prefill, decode) | tokens vs od-moe |",
    "|---|---|---|---|---|---|---|",
    ...rows.map((r) =>
      `| ${r.preset} | ${r.engine} | ${r.device} | ${f(r.prefill)} | ${f(r.decode)} | ${
        r.ratio ? `${f(r.ratio[0])}×, ${f(r.ratio[1])}×` : r.error ? `failed: ${r.error}` : "–"
      } | ${r.tokens} |`
    ),
  ].join("\n");
}

/** The parity test files: all, and the quick set for a software adapter. */
export const PARITY_FILES = {
  all: [
    "tests/engine_parity_test.ts",
    "tests/parity_deepseek2_test.ts",
    "tests/parity_gpt_oss_olmoe_test.ts",
    "tests/parity_real_width_test.ts",
    "tests/parity_iq_test.ts",
  ],
  quick: ["tests/engine_parity_test.ts"],
} as const;

function denoExe(): string {
  return Deno.execPath();
}

/** Runs `deno` with `args` and `env`, killing it after `timeoutS`. */
async function deno(
  args: string[],
  env: Record<string, string>,
  timeoutS: number,
): Promise<CommandResult & { timedOut: boolean; seconds: number }> {
  const t0 = performance.now();
  const child = new Deno.Command(denoExe(), {
    args,
    env: { NO_COLOR: "1", ...env },
    cwd: REPO_ROOT,
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    try {
      child.kill("SIGKILL");
    } catch { /* already gone */ }
  }, Math.max(1, timeoutS) * 1000);
  const out = await child.output();
  clearTimeout(timer);
  const dec = new TextDecoder();
  return {
    code: out.code,
    stdout: dec.decode(out.stdout),
    stderr: dec.decode(out.stderr),
    timedOut,
    seconds: (performance.now() - t0) / 1000,
  };
}

/** The last JSON object a child printed on a line of its own (or spanning lines). */
function lastJson(text: string): Record<string, unknown> | null {
  const start = text.lastIndexOf("\n{");
  const body = start >= 0 ? text.slice(start + 1) : text.trimStart().startsWith("{") ? text : "";
  try {
    return body ? JSON.parse(body) : null;
  } catch {
    return null;
  }
}

const SELF = new URL(import.meta.url).pathname;

/** Options of {@linkcode runGpuCheck}. */
export interface GpuCheckOptions {
  presets?: string[];
  layers?: number;
  type: string;
  promptTokens?: number;
  tokens?: number;
  parity?: string;
  install: boolean;
  budgetS: number;
}

/** Runs the whole check; returns the report (also written to bench/out/gpu.json). */
export async function runGpuCheck(o: GpuCheckOptions): Promise<Record<string, unknown>> {
  const t0 = performance.now();
  const elapsed = () => (performance.now() - t0) / 1000;
  const left = () => o.budgetS - elapsed();
  const say = (s: string) => console.log(s);

  // 1. the machine
  const probe = await probeMachine();
  const plan = planSetup(probe, { install: o.install });
  const gpuMachine = probe.nvidiaGpus.length > 0;
  say(`# GPU check (${new Date().toISOString()})`);
  for (const n of plan.notes) say(`- ${n}`);
  const installs: Record<string, unknown>[] = [];
  for (const cmd of plan.commands) {
    say(`- running: ${cmd.join(" ")}`);
    const r = await runCommand(cmd[0]!, cmd.slice(1));
    installs.push({ command: cmd.join(" "), code: r.code, stderr: r.stderr.slice(-400) });
    if (r.code !== 0) say(`  failed (${r.code}): ${r.stderr.trim().split("\n").pop()}`);
  }
  if (plan.writeIcd) {
    await Deno.mkdir(plan.writeIcd.path.replace(/\/[^/]*$/, ""), { recursive: true });
    await Deno.writeTextFile(plan.writeIcd.path, plan.writeIcd.text);
  }
  const env = { ...plan.env };

  // 2. the adapters
  const adapterRun = await deno(["run", "--lock=dev/deno.lock", "-A", SELF, "--adapter"], env, 120);
  const adapter = lastJson(adapterRun.stdout) as
    | { describe: string; info: Record<string, unknown>; error?: string }
    | null;
  say(`- od-moe's WebGPU adapter: ${adapter?.describe ?? adapter?.error ?? adapterRun.stderr}`);
  const adapterIsNvidia = /nvidia/i.test(JSON.stringify(adapter?.info ?? {}));
  if (gpuMachine && !adapterIsNvidia) {
    say(`- WARNING: this machine has an NVIDIA GPU but WebGPU did not pick it`);
  }
  const llamaDevices: Record<string, LlamaDevice[] | string> = {};
  const builds: LlamaBuild[] = [];
  for (const build of plan.builds) {
    const r = await deno(
      ["run", "--lock=dev/deno.lock", "-A", SELF, "--llama-devices", build],
      env,
      120,
    );
    const j = lastJson(r.stdout) as { devices?: LlamaDevice[]; error?: string } | null;
    const devices = j?.devices;
    llamaDevices[build] = devices ?? j?.error ?? r.stderr.trim().split("\n").slice(-3).join(" ");
    const gpus = devices?.filter((d) => d.type !== "cpu") ?? [];
    if (build === "cpu" ? devices !== undefined : gpus.length > 0) builds.push(build);
    say(
      `- llama.cpp ${build} build: ${
        devices
          ? devices.map((d) => `${d.name} (${d.description}, ${d.type})`).join("; ")
          : `cannot load: ${llamaDevices[build]}`
      }${build !== "cpu" && devices && gpus.length === 0 ? " — no GPU device: skipped" : ""}`,
    );
  }

  // 3. the models
  const presets = o.presets ??
    (gpuMachine ? ["qwen3-30b-a3b", "gpt-oss-20b"] : ["olmoe-1b-7b", "qwen3-30b-a3b"]);
  const layers = o.layers ?? (gpuMachine ? 4 : 1);
  const models: Record<string, string> = {};
  for (const preset of presets) {
    const path = `${REPO_ROOT}/.cache/models/gpu-bench-${preset}-${layers}L-${o.type}.gguf`;
    try {
      await Deno.stat(path);
    } catch {
      const m0 = performance.now();
      const opts = presetOptions(preset, layers);
      const spec = await fixtureSpec({ ...opts, type: "F32" });
      spec.name = `od-moe synthetic ${preset} shape`;
      const recipe = (QUANT_RECIPES as Record<string, QuantRecipe>)[o.type];
      await Deno.mkdir(`${REPO_ROOT}/.cache/models`, { recursive: true });
      await writeQuantizedSynthetic(path, spec, {
        ftype: (recipe?.ftype ?? `MOSTLY_${o.type}`) as LlamaFtypeName,
        tensorTypes: recipe ? tensorTypeIds(recipe.tensorTypes) : undefined,
      });
      say(`- wrote ${path} in ${((performance.now() - m0) / 1000).toFixed(0)} s`);
    }
    models[preset] = path;
  }

  // 4. parity
  const parityFiles = o.parity === "none"
    ? []
    : o.parity === undefined
    ? [...PARITY_FILES[gpuMachine ? "all" : "quick"]]
    : o.parity === "all" || o.parity === "quick"
    ? [...PARITY_FILES[o.parity]]
    : o.parity.split(",");
  let parity: Record<string, unknown> = { files: parityFiles, skipped: "no files" };
  if (parityFiles.length > 0) {
    // leave the decode runs at least 40% of what is left
    const r = await deno(
      ["test", "--lock=dev/deno.lock", "-A", ...parityFiles],
      env,
      Math.max(30, left() * 0.6),
    );
    const summary =
      /(ok|FAILED) \| (\d+) passed(?: \((\d+) steps?\))? \| (\d+) failed(?: \| (\d+) ignored)?/
        .exec(r.stdout);
    parity = {
      files: parityFiles,
      passed: summary ? Number(summary[2]) : null,
      failed: summary ? Number(summary[4]) : null,
      ignored: summary?.[5] ? Number(summary[5]) : 0,
      seconds: Math.round(r.seconds),
      timed_out: r.timedOut,
      ok: r.code === 0,
    };
    say(
      `- parity tests (${parityFiles.join(" ")}): ${
        r.timedOut
          ? `stopped after ${r.seconds.toFixed(0)} s (budget)`
          : summary
          ? `${summary[2]} passed, ${summary[4]} failed, ${parity.ignored} ignored`
          : `exit ${r.code}`
      } in ${r.seconds.toFixed(0)} s`,
    );
  }

  // 5. decode at each preset against each build, each run in its own process
  const rows: GpuBenchRow[] = [];
  const reports: Record<string, unknown>[] = [];
  const threads = Math.min(8, navigator.hardwareConcurrency ?? 1);
  const runs = presets.flatMap((p) => builds.map((b) => [p, b] as const));
  for (const [i, [preset, build]] of runs.entries()) {
    const share = left() / (runs.length - i);
    if (share < 20) {
      rows.push({
        preset,
        engine: `llama.cpp ${build}`,
        device: "",
        prefill: null,
        decode: null,
        ratio: null,
        tokens: "",
        error: `skipped: ${o.budgetS} s budget spent`,
      });
      continue;
    }
    const args = [
      "run",
      "--lock=dev/deno.lock",
      "-A",
      "bench/decode.ts",
      "--model",
      models[preset]!,
      "--llama-build",
      build,
      "--llama-threads",
      String(threads),
      "--no-profile",
      "--budgets",
      "none",
      "--repeats",
      "1",
      "--prompt-tokens",
      String(o.promptTokens ?? (gpuMachine ? 128 : 16)),
      "--tokens",
      String(o.tokens ?? (gpuMachine ? 32 : 8)),
      "--out-dir",
      "bench/out",
    ];
    note(`gpu: decode ${preset} against llama.cpp ${build} (${share.toFixed(0)} s left for it)`);
    const r = await deno(args, env, share);
    const rep = lastJson(r.stdout) as {
      device: string;
      od_moe: { prefill_tokens_per_s: number; decode_tokens_per_s: number };
      llama_cpp: { prefill_tokens_per_s: number; decode_tokens_per_s: number };
      llama_cpp_build: { devices: LlamaDevice[] };
      tokens: { first_divergence_from_llama_cpp: number | null };
    } | null;
    if (!rep) {
      rows.push({
        preset,
        engine: `llama.cpp ${build}`,
        device: "",
        prefill: null,
        decode: null,
        ratio: null,
        tokens: "",
        error: r.timedOut
          ? `stopped after ${r.seconds.toFixed(0)} s (budget)`
          : r.stderr.trim().split("\n").slice(-2).join(" ").slice(0, 200),
      });
      continue;
    }
    reports.push({ preset, build, report: rep });
    // od-moe is measured again in each comparison's process: its row goes right above the
    // llama.cpp row it is divided by (one od-moe row per preset showed the first run's figures
    // beside ratios taken from later runs, which did not agree with each other under load)
    rows.push({
      preset,
      engine: `od-moe (run against ${build})`,
      device: rep.device.replace(/ \[.*$/, ""),
      prefill: rep.od_moe.prefill_tokens_per_s,
      decode: rep.od_moe.decode_tokens_per_s,
      ratio: null,
      tokens: "",
    });
    const dev = rep.llama_cpp_build.devices.find((d) => d.type !== "cpu") ??
      rep.llama_cpp_build.devices[0];
    const div = rep.tokens.first_divergence_from_llama_cpp;
    rows.push({
      preset,
      engine: `llama.cpp ${build}${build === "cpu" ? `, ${threads} threads` : ""}`,
      device: build === "cpu" ? `CPU (${dev?.description ?? "?"})` : dev?.description ?? "?",
      prefill: rep.llama_cpp.prefill_tokens_per_s,
      decode: rep.llama_cpp.decode_tokens_per_s,
      ratio: [
        rep.od_moe.prefill_tokens_per_s / rep.llama_cpp.prefill_tokens_per_s,
        rep.od_moe.decode_tokens_per_s / rep.llama_cpp.decode_tokens_per_s,
      ],
      tokens: div === null ? "same" : `part at ${div}`,
    });
  }

  // 6. the table
  const table = gpuTable(rows);
  const wall = elapsed();
  say("");
  say(table);
  say("");
  say(
    `${presets.join(", ")} at ${layers} layer(s), ${o.type}; parity ${
      parity.passed ?? "–"
    } passed / ${parity.failed ?? "–"} failed; ${wall.toFixed(0)} s in all (budget ${o.budgetS} s)`,
  );
  const report = {
    bench: "gpu",
    machine: probe,
    setup: { notes: plan.notes, installs, env },
    adapter,
    llama_cpp_devices: llamaDevices,
    presets,
    layers,
    type: o.type,
    parity,
    rows,
    decode_reports: reports,
    wall_s: Math.round(wall),
  };
  await Deno.mkdir(`${REPO_ROOT}/bench/out`, { recursive: true });
  await Deno.writeTextFile(`${REPO_ROOT}/bench/out/gpu.json`, JSON.stringify(report, null, 2));
  await Deno.writeTextFile(`${REPO_ROOT}/bench/out/gpu.md`, `# GPU check\n\n${table}\n`);
  return report;
}

/** `--adapter`: the WebGPU adapter od-moe gets, as JSON. */
async function printAdapter(): Promise<void> {
  const { acquireGpu } = await import("../src/gpu/device.ts");
  try {
    const gpu = await acquireGpu();
    const i = gpu.adapterInfo;
    console.log(JSON.stringify({
      describe: gpu.describe(),
      info: {
        vendor: i.vendor,
        architecture: i.architecture,
        device: i.device,
        description: i.description,
        fallback: i.isFallbackAdapter,
      },
      features: [...gpu.features],
    }));
    gpu.destroy();
  } catch (e) {
    console.log(JSON.stringify({ error: (e as Error).message }));
  }
}

/** `--llama-devices BUILD`: the devices a llama.cpp build finds, as JSON. */
async function printLlamaDevices(build: LlamaBuild): Promise<void> {
  const { loadReference } = await import("../dev/ref/llama_cpp.ts");
  try {
    console.log(JSON.stringify({ devices: loadReference(build).devices }));
  } catch (e) {
    console.log(JSON.stringify({ error: (e as Error).message }));
  }
}

/** Parses `deno task bench gpu`'s flags. */
export function gpuCheckOptions(args: string[]): GpuCheckOptions {
  const { values } = parseArgs({
    args,
    options: {
      presets: { type: "string" },
      layers: { type: "string" },
      type: { type: "string", default: "Q4_K_M" },
      "prompt-tokens": { type: "string" },
      tokens: { type: "string" },
      parity: { type: "string" },
      "no-install": { type: "boolean" },
      "budget-s": { type: "string", default: "480" },
    },
    strict: true,
  });
  const presets = values.presets?.split(",");
  for (const p of presets ?? []) {
    if (!(SHAPE_PRESET_NAMES as readonly string[]).includes(p)) {
      throw new Error(`gpu: --presets: ${p} is not one of ${SHAPE_PRESET_NAMES.join(", ")}`);
    }
  }
  const int = (name: string, v: string | undefined) => {
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1) throw new Error(`gpu: --${name} must be ≥ 1, got ${v}`);
    return n;
  };
  return {
    presets,
    layers: int("layers", values.layers),
    type: values.type!.toUpperCase(),
    promptTokens: int("prompt-tokens", values["prompt-tokens"]),
    tokens: int("tokens", values.tokens),
    parity: values.parity,
    install: !values["no-install"],
    budgetS: int("budget-s", values["budget-s"])!,
  };
}

if (import.meta.main) {
  if (Deno.args[0] === "--adapter") await printAdapter();
  else if (Deno.args[0] === "--llama-devices") {
    await printLlamaDevices(Deno.args[1] as LlamaBuild);
  } else {
    const report = await runGpuCheck(gpuCheckOptions(Deno.args));
    const rows = report.rows as GpuBenchRow[];
    Deno.exit(rows.some((r) => r.error && !r.error.startsWith("skipped")) ? 1 : 0);
  }
}
