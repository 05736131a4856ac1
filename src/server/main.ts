/**
 * `deno task serve`: the HTTP server's command line.
 *
 * ```sh
 * deno task serve                                   # the demo model (data/kjv-moe-Q8_0.gguf)
 * deno task serve --model qwen3-30b-a3b-q4_k_m.gguf --cache-size-gb 8
 * deno task serve --base-weights out/base_model --expert-dir out/experts
 * deno task serve --base-weights out/base_model --gguf-experts model.gguf
 * ```
 *
 * Every path is checked before anything loads, and a wrong one is reported
 * with the flag that gave it. The server listens at once (`/health` says
 * "loading" until the model is ready). SIGINT or SIGTERM stops accepting
 * connections, lets running generations finish for a few seconds, cancels
 * what is left and exits 0; a second signal exits at once.
 *
 * @module
 */

import { EVICTION_POLICY_NAMES, type EvictionPolicyName } from "../experts/policy_predictive.ts";
import { parseArgs } from "node:util";
import { Engine, type EngineOptions } from "../generate/engine.ts";
import { type RunningServer, startServer } from "./app.ts";
import { ensureDemoModel, TRAINED_DEMO_BUDGET_FRACTION, trainedDemoModel } from "./demo.ts";

/** The usage text. */
export const USAGE = `usage: deno task serve [model] [options]

model (one of; none = the demo model, data/kjv-moe-Q8_0.gguf: a small MoE trained on the
King James Bible, served with a third of its experts' bytes so that experts stream):
  --model FILE.gguf              one GGUF holding the whole model
  --base-weights DIR --expert-dir DIR
                                 converter output: DIR/base_model and DIR/experts
  --base-weights DIR --gguf-experts FILE.gguf
                                 base weights from the converter, experts from the GGUF

options:
  --cache-size-gb GB             GPU memory for routed experts (default 4, the demo model a
                                 third of its experts; 0 = minimum)
  --enable-prefetch              upload experts before they are needed
  --predictor-path FILE          a trained shadow predictor (implies --enable-prefetch)
  --eviction-policy NAME         which expert leaves the budget first: predictive
                                 (default), lru or least-stale
  --ctx-size N                   context length in tokens of each sequence (default
                                 min(4096, the model's))
  --batch-size N                 prompt tokens computed in one GPU batch (default 64); a
                                 larger batch reads each routed expert once for more
                                 tokens (faster prompts) and takes more GPU memory
  --parallel N|auto              generations run at once, their tokens batched together
                                 (continuous batching), each with --ctx-size positions of
                                 KV cache; default auto: up to 4 while their KV caches
                                 take at most 1 GiB (1 for Qwen3.5/Qwen3-Next)
  --cache-ram MIB                CPU memory for the KV caches of earlier conversations, reused
                                 when one comes back (default 1024; 0 = only the last one)
  --port N                       port (default 8080; 0 = any free port)
  --host ADDR                    interface (default 127.0.0.1)
  --api-key KEY                  require 'Authorization: Bearer KEY'; prefer setting
                                 ODMOE_API_KEY=KEY instead: a flag is visible to every
                                 user of this machine in the process list
  --allowed-hosts H1,H2          Host header names accepted besides this machine's own
                                 addresses and localhost (a proxy's name; '*' = any)
  --cors-origin O1,O2            web origins allowed to call the API from a browser
                                 (https://app.example; '*' = any); others get 403
  --body-timeout-s S             seconds a request body may take to arrive (default 30)
  --header-timeout-s S           seconds a request header may take to arrive (default 15;
                                 0 = no front door: Deno.serve reads headers itself)
  --max-queue N                  requests that may wait for the model (default 16)
  --quiet                        no request log
  -h, --help                     this text`;

/** What the command line asks for. */
export interface ServeConfig {
  /** Where the model is, or undefined for the demo model. */
  model: Pick<EngineOptions, "model" | "baseWeights" | "expertDir" | "ggufExperts"> | undefined;
  /** `--cache-size-gb`. */
  cacheSizeGB: number;
  /** `--cache-size-gb` was not given (the demo model then gets its own default). */
  cacheSizeDefault: boolean;
  /** `--ctx-size`, when given. */
  nCtx: number | undefined;
  /** `--batch-size`, when given. */
  maxBatch?: number;
  /** `--cache-ram`, MiB, when given. */
  promptCacheMiB?: number;
  /** `--parallel`: generations at once, or sized from memory. */
  parallel: number | "auto";
  /** Port. */
  port: number;
  /** Interface. */
  host: string;
  /** Bearer token, when required. */
  apiKey: string | undefined;
  /** `--max-queue`. */
  maxQueue: number;
  /** `--enable-prefetch` (or `--predictor-path`). */
  prefetch: boolean;
  /** `--predictor-path`: a trained shadow predictor. */
  predictorPath?: string;
  /** `--eviction-policy`, when given (the engine's default otherwise). */
  evictionPolicy?: EvictionPolicyName;
  /** `--quiet`. */
  quiet: boolean;
  /** `--allowed-hosts`, when given. */
  allowedHosts?: string[];
  /** `--cors-origin`: browser origins allowed. */
  corsOrigins?: string[];
  /** `--body-timeout-s` in ms. */
  bodyTimeoutMs?: number;
  /** `--header-timeout-s` in ms. */
  headerTimeoutMs?: number;
}

/** A command line that cannot be served; the message names the flag. */
export class UsageError extends Error {
  /** Builds the error. */
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

/** Engine options the engine does not take yet: flags accepted and checked, then refused. */

function int(flag: string, v: string | undefined, min: number, max: number): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (v.trim() === "" || !Number.isInteger(n) || n < min || n > max) {
    throw new UsageError(`--${flag} must be an integer in ${min}…${max}, got "${v}"`);
  }
  return n;
}

async function checkPath(
  flag: string,
  path: string,
  kind: "gguf" | "dir" | "any",
  inside?: string,
): Promise<void> {
  let st: Deno.FileInfo;
  try {
    st = await Deno.stat(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new UsageError(`--${flag}: no such file or directory: ${path}`);
    }
    throw new UsageError(`--${flag}: cannot read ${path}: ${(e as Error).message}`);
  }
  if (kind === "gguf") {
    if (!st.isFile) {
      throw new UsageError(`--${flag}: ${path} is not a file (expected a .gguf file)`);
    }
    let magic = "";
    try {
      using f = await Deno.open(path);
      const b = new Uint8Array(4);
      const n = await f.read(b);
      magic = new TextDecoder().decode(b.subarray(0, n ?? 0));
    } catch (e) {
      throw new UsageError(`--${flag}: cannot read ${path}: ${(e as Error).message}`);
    }
    if (magic !== "GGUF") {
      throw new UsageError(`--${flag}: ${path} is not a GGUF file (it does not start with "GGUF")`);
    }
  } else if (kind === "dir") {
    if (!st.isDirectory) throw new UsageError(`--${flag}: ${path} is not a directory`);
    if (inside) {
      try {
        await Deno.stat(`${path}/${inside}`);
      } catch {
        throw new UsageError(
          `--${flag}: ${path} holds no ${inside}; is it the converter's output (deno task convert)?`,
        );
      }
    }
  }
}

/**
 * Parses and checks the command line (every path exists and is the right
 * kind of file or directory).
 *
 * @throws {UsageError} naming the flag at fault.
 */
export async function parseServeArgs(
  args: string[],
  env: (k: string) => string | undefined = (k) => Deno.env.get(k),
): Promise<ServeConfig | "help"> {
  let v;
  try {
    v = parseArgs({
      args,
      options: {
        model: { type: "string" },
        "gguf-experts": { type: "string" },
        "base-weights": { type: "string" },
        "expert-dir": { type: "string" },
        "cache-size-gb": { type: "string" },
        "cache-ram": { type: "string" },
        "enable-prefetch": { type: "boolean" },
        "predictor-path": { type: "string" },
        "eviction-policy": { type: "string" },
        port: { type: "string" },
        host: { type: "string" },
        "api-key": { type: "string" },
        "max-queue": { type: "string" },
        "allowed-hosts": { type: "string", multiple: true },
        "cors-origin": { type: "string", multiple: true },
        "body-timeout-s": { type: "string" },
        "header-timeout-s": { type: "string" },
        "ctx-size": { type: "string" },
        "batch-size": { type: "string" },
        parallel: { type: "string" },
        quiet: { type: "boolean" },
        help: { type: "boolean", short: "h" },
      },
      strict: true,
      allowPositionals: false,
    }).values;
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  if (v.help) return "help";
  const model = v.model;
  const base = v["base-weights"];
  const experts = v["expert-dir"];
  const gguf = v["gguf-experts"];
  if (model !== undefined && (base !== undefined || experts !== undefined || gguf !== undefined)) {
    throw new UsageError(
      `--model holds the whole model: drop ${
        [base && "--base-weights", experts && "--expert-dir", gguf && "--gguf-experts"]
          .filter(Boolean).join(" and ")
      }, or drop --model`,
    );
  }
  if (experts !== undefined && gguf !== undefined) {
    throw new UsageError("give --expert-dir or --gguf-experts, not both");
  }
  if (base !== undefined && experts === undefined && gguf === undefined) {
    throw new UsageError("--base-weights needs --expert-dir DIR or --gguf-experts FILE.gguf");
  }
  if (base === undefined && (experts !== undefined || gguf !== undefined)) {
    throw new UsageError(
      `${experts !== undefined ? "--expert-dir" : "--gguf-experts"} needs --base-weights DIR`,
    );
  }
  const cacheText = v["cache-size-gb"];
  const cacheSizeGB = cacheText === undefined ? 4 : Number(cacheText);
  if (cacheText?.trim() === "" || !Number.isFinite(cacheSizeGB) || cacheSizeGB < 0) {
    throw new UsageError(`--cache-size-gb must be a number ≥ 0, got "${cacheText}"`);
  }
  const port = int("port", v.port, 0, 65535) ?? 8080;
  const maxQueue = int("max-queue", v["max-queue"], 0, 1_000_000) ?? 16;
  const nCtx = int("ctx-size", v["ctx-size"], 16, 1 << 24);
  const maxBatch = int("batch-size", v["batch-size"], 1, 4096);
  const promptCacheMiB = int("cache-ram", v["cache-ram"], 0, 1 << 30);
  const parallel = v.parallel === "auto" ? "auto" : int("parallel", v.parallel, 1, 64) ?? "auto";
  const host = v.host ?? "127.0.0.1";
  if (host.trim() === "") throw new UsageError("--host must not be empty");
  const apiKey = v["api-key"] ?? (env("ODMOE_API_KEY") || undefined);
  if (apiKey !== undefined && apiKey.trim() === "") {
    throw new UsageError("--api-key must not be empty");
  }
  const list = (flag: string, values: string[] | undefined) => {
    if (values === undefined) return undefined;
    const out = values.flatMap((v) => v.split(",")).map((v) => v.trim()).filter((v) => v);
    if (out.length === 0) throw new UsageError(`--${flag} needs at least one value`);
    return out;
  };
  const allowedHosts = list("allowed-hosts", v["allowed-hosts"]);
  const corsOrigins = list("cors-origin", v["cors-origin"]);
  for (const o of corsOrigins ?? []) {
    if (o !== "*" && !/^https?:\/\/[^/\s]+$/.test(o)) {
      throw new UsageError(
        `--cors-origin: '${o}' is not an origin (scheme://host[:port], no path), e.g. https://app.example`,
      );
    }
  }
  const bodyTimeoutS = int("body-timeout-s", v["body-timeout-s"], 1, 3600);
  const headerTimeoutS = int("header-timeout-s", v["header-timeout-s"], 0, 3600);

  if (model !== undefined) await checkPath("model", model, "gguf");
  if (base !== undefined) {
    await checkPath("base-weights", base, "dir", "model.safetensors.index.json");
  }
  if (experts !== undefined) await checkPath("expert-dir", experts, "dir", "experts.json");
  if (gguf !== undefined) await checkPath("gguf-experts", gguf, "gguf");
  const predictor = v["predictor-path"];
  if (predictor !== undefined) await checkPath("predictor-path", predictor, "any");
  const prefetch = (v["enable-prefetch"] ?? false) || predictor !== undefined;
  const evictionPolicy = v["eviction-policy"] as EvictionPolicyName | undefined;
  if (evictionPolicy !== undefined && !EVICTION_POLICY_NAMES.includes(evictionPolicy)) {
    throw new UsageError(
      `--eviction-policy must be one of ${
        EVICTION_POLICY_NAMES.join(", ")
      }, got "${evictionPolicy}"`,
    );
  }

  return {
    model: model !== undefined || base !== undefined
      ? { model, baseWeights: base, expertDir: experts, ggufExperts: gguf }
      : undefined,
    cacheSizeGB,
    cacheSizeDefault: cacheText === undefined,
    nCtx,
    maxBatch,
    promptCacheMiB,
    parallel,
    port,
    host,
    apiKey,
    maxQueue,
    prefetch,
    predictorPath: predictor,
    evictionPolicy,
    quiet: v.quiet ?? false,
    allowedHosts,
    corsOrigins,
    bodyTimeoutMs: bodyTimeoutS === undefined ? undefined : bodyTimeoutS * 1000,
    headerTimeoutMs: headerTimeoutS === undefined ? undefined : headerTimeoutS * 1000,
  };
}

/**
 * One short generation before the server reports ready, so the first
 * request does not pay for compiling the prefill and decode pipelines
 * (seconds on a software adapter). It shows in `/metrics` like any other.
 */
export async function warmUp(engine: Engine): Promise<void> {
  const text = "The quick brown fox jumps over the lazy dog. ".repeat(4);
  const ids = engine.tokenizer.encode(text).slice(0, Math.max(1, engine.info.contextLength - 4));
  await engine.generate({ prompt: ids, maxTokens: 3, sampling: { temperature: 0 } });
}

/** Whether `host` names only this machine. */
export function isLoopback(host: string): boolean {
  return host === "localhost" || host === "::1" || host === "[::1]" || /^127\./.test(host);
}

/** `bytes` in MiB, for the startup line. */
function mib(bytes: number): string {
  return `${(bytes / 2 ** 20).toFixed(2)} MiB`;
}

/** Runs the command; resolves with the exit code. */
export async function main(args: string[]): Promise<number> {
  let config: ServeConfig | "help";
  try {
    config = await parseServeArgs(args);
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    console.error(`serve: ${e.message}\n\n${USAGE}`);
    return 2;
  }
  if (config === "help") {
    console.log(USAGE);
    return 0;
  }
  const log = config.quiet ? undefined : (line: string) => console.error(line);
  const c = config;
  const m = c.model;
  const demo = m ? null : trainedDemoModel();
  const cacheSizeGB = demo && c.cacheSizeDefault ? demo.cacheSizeGB : c.cacheSizeGB;
  // the trained demo shows the on-demand machinery: experts stream and the lookahead prefetches
  const prefetch = c.prefetch || demo !== null;
  const what = m
    ? (m.model ?? `${m.baseWeights} + ${m.expertDir ?? m.ggufExperts}`)
    : demo
    ? `the demo model ${demo.path}, a small MoE trained on the King James Bible: ${
      mib(demo.expertBytes)
    } of experts streamed through an expert budget of ${mib(cacheSizeGB * 2 ** 30)}${
      c.cacheSizeDefault
        ? ` (${Math.round(TRAINED_DEMO_BUDGET_FRACTION * 100)}%, --cache-size-gb)`
        : ""
    }, prefetch on`
    : "the random-weight demo model";
  // the random demo model is generated after the server listens, so /health says "loading" meanwhile
  const load = async () => {
    const engine = await Engine.load({
      ...(m ?? { model: demo?.path ?? await ensureDemoModel({ log: console.error }) }),
      cacheSizeGB,
      nCtx: c.nCtx,
      maxBatch: c.maxBatch,
      promptCacheMiB: c.promptCacheMiB,
      parallel: c.parallel,
      enablePrefetch: prefetch,
      predictorPath: c.predictorPath,
      evictionPolicy: c.evictionPolicy,
    });
    try {
      await warmUp(engine);
    } catch (e) {
      engine.close();
      throw e;
    }
    return engine;
  };
  let server: RunningServer;
  try {
    server = await startServer({
      load,
      port: c.port,
      hostname: c.host,
      apiKey: c.apiKey,
      maxQueue: c.maxQueue,
      allowedHosts: c.allowedHosts,
      corsOrigins: c.corsOrigins,
      bodyTimeoutMs: c.bodyTimeoutMs,
      headerTimeoutMs: c.headerTimeoutMs,
      prefetchEnabled: prefetch,
      waitForModel: false,
      log,
      onListen: ({ url }) => console.log(`od-moe listening on ${url} (loading ${what})`),
    });
  } catch (e) {
    const err = e as Error & { code?: string };
    if (e instanceof Deno.errors.AddrInUse) {
      console.error(`serve: --port ${c.port}: the address ${c.host}:${c.port} is in use`);
    } else if (e instanceof Deno.errors.AddrNotAvailable || err.code === "EADDRNOTAVAIL") {
      console.error(`serve: --host ${c.host}: cannot listen there: ${err.message}`);
    } else {
      console.error(`serve: cannot listen on ${c.host}:${c.port}: ${err.message}`);
    }
    return 1;
  }

  if (args.some((a) => a === "--api-key" || a.startsWith("--api-key="))) {
    console.error(
      "serve: note: --api-key is visible to every user of this machine in the process list; " +
        "set ODMOE_API_KEY instead",
    );
  }
  if (!c.apiKey && !isLoopback(c.host)) {
    console.error(
      `serve: warning: listening on ${c.host} without --api-key: anyone who can reach this ` +
        `address can use the model`,
    );
  }

  let signals = 0;
  let stopping: Promise<void> | undefined;
  const stop = (sig: Deno.Signal) => {
    signals++;
    if (signals > 1) {
      console.error(`serve: ${sig} again: exiting now`);
      Deno.exit(130);
    }
    console.error(`serve: ${sig}: finishing in-flight requests (send ${sig} again to quit now)`);
    stopping = server.close();
  };
  const sigs: Deno.Signal[] = Deno.build.os === "windows" ? ["SIGINT"] : ["SIGINT", "SIGTERM"];
  const handlers = sigs.map((s) => [s, () => stop(s)] as const);
  for (const [s, h] of handlers) Deno.addSignalListener(s, h);

  try {
    const t0 = performance.now();
    const engine = await server.ready;
    const i = engine.info;
    console.log(
      `od-moe ready: ${i.name} (${i.architecture}, context ${i.contextLength}${
        engine.parallel > 1 ? ` × ${engine.parallel} sequences` : ""
      }, expert budget ${mib(engine.model.pool.limitBytes)}) loaded in ${
        ((performance.now() - t0) / 1000).toFixed(1)
      } s; chat in a browser at ${server.url}/ or try: curl ${server.url}/generate -d ` +
        `'{"prompt": "And God said", "max_tokens": 24}'`,
    );
  } catch (e) {
    if (!stopping) {
      console.error(`serve: cannot load ${what}: ${(e as Error).message}`);
      await server.close({ graceMs: 0 });
      return 1;
    }
  }
  await server.finished;
  await stopping;
  for (const [s, h] of handlers) Deno.removeSignalListener(s, h);
  console.error("serve: stopped");
  return 0;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
