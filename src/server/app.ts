/**
 * The HTTP server: routes, handlers, the request queue, shutdown.
 *
 * | endpoint | what |
 * |---|---|
 * | `POST /generate` | `{prompt \| messages, max_tokens, temperature, top_p, top_k, min_p, seed, stop, stream, …}` → `{text, tokens, finish_reason, stats}`; `stream: true` → SSE |
 * | `GET /health` | 503 `{"status":"loading"}` while loading, then 200 with model, architecture, uptime |
 * | `GET /metrics` | JSON, or Prometheus text (`Accept: text/plain` or `?format=prometheus`) |
 * | `GET /v1/models`, `GET /v1/models/{id}` | OpenAI model list / model |
 * | `POST /v1/completions` | OpenAI completions (SSE with `stream`) |
 * | `POST /v1/chat/completions` | OpenAI chat completions, the model's chat template applied (SSE with `stream`) |
 * | `GET /v1/experts` | the experts view: layers, resident experts, cache counters (`experts_feed.ts`) |
 * | `GET /v1/experts/events` | SSE: a snapshot, then throttled frames of hits, loads, prefetches, evictions |
 * | `GET /` | the chat page to a browser (`Accept: text/html`), else JSON naming the endpoints |
 * | `GET /ui/*` | the page's script and style |
 *
 * One model serves one request at a time, in arrival order; at most
 * `maxQueue` wait behind the running one, the next gets 503 with
 * `Retry-After`. A client that disconnects cancels its generation, queued
 * or running. Errors are JSON `{"error": {"message", "type", "param",
 * "code"}}` (OpenAI's shape) naming the field at fault.
 *
 * ```ts ignore
 * import { startServer } from "./app.ts";
 * const server = await startServer({ port: 0 }); // the demo model
 * const r = await fetch(`${server.url}/generate`, {
 *   method: "POST",
 *   body: JSON.stringify({ prompt: "Hello", max_tokens: 8 }),
 * });
 * console.log(await r.json());
 * await server.close();
 * ```
 *
 * @module
 */

import { Engine, type EngineOptions } from "../generate/engine.ts";
import type { GenerateRequest, GenerationStats } from "../generate/types.ts";
import {
  metricsJson,
  type MetricsView,
  PROMETHEUS_CONTENT_TYPE,
  prometheusText,
  ServerMetrics,
} from "./metrics.ts";
import { applyTemplate, detokenize, props, tokenize } from "./llama_routes.ts";
import { chatCompletions } from "./openai/chat.ts";
import { completions } from "./openai/completions.ts";
import { errorBody, type OpenAIContext } from "./openai/shared.ts";
import { type Guard, startGuard } from "./guard.ts";
import {
  checkHost,
  checkKey,
  checkOrigin,
  errorResponse,
  json,
  preflight,
  toHttpError,
  wantsPrometheus,
} from "./http.ts";
import { ExpertsFeed } from "./experts_feed.ts";
import { GenerationQueue, preparePrompt } from "./queue.ts";
import { UI_ASSET_PATTERN, uiResponse, wantsHtml } from "./ui.ts";
import { ensureDemoModel } from "./demo.ts";
import {
  badRequest,
  Fields,
  HttpError,
  MAX_BODY_BYTES,
  type ModelLimits,
  readJsonObject,
  readMaxTokens,
  readMessages,
  readPrompt,
  readSampling,
  SAMPLING_FIELDS,
} from "./validate.ts";

/** Options of {@linkcode startServer}. */
export interface ServerOptions {
  /** An engine already loaded; the caller keeps it (close() does not close it). */
  engine?: Engine;
  /** Loads the engine (the server owns the result); default `Engine.load(engineOptions)`. */
  load?: () => Promise<Engine>;
  /** Options of `Engine.load`; without `engine`, `load` or these, the demo model. */
  engineOptions?: EngineOptions;
  /** Port (default 8080; 0 = any free port). */
  port?: number;
  /** Interface to listen on (default 127.0.0.1). */
  hostname?: string;
  /** When set, every endpoint but `/health` wants `Authorization: Bearer <apiKey>`. */
  apiKey?: string;
  /** Generation requests that may wait behind the running one (default 16). */
  maxQueue?: number;
  /** Largest request body, bytes (default 1 MiB). */
  maxBodyBytes?: number;
  /** How long a request body may take to arrive, ms (default 30 000); then 408. */
  bodyTimeoutMs?: number;
  /**
   * How long a request header may take to arrive, ms (default 15 000); then
   * 408. Enforced by a front door that reads each header before `Deno.serve`
   * sees it (one request per connection); 0 = none, `Deno.serve` listens itself.
   */
  headerTimeoutMs?: number;
  /**
   * Host names (with or without `:port`) accepted in the `Host` header
   * besides this machine's own names and IP addresses; `*` accepts any.
   * Checked when listening on a loopback address (DNS rebinding), or always
   * when given.
   */
  allowedHosts?: readonly string[];
  /**
   * Web origins (`https://app.example`) allowed to call the API from a
   * browser; `*` allows any. Other cross-origin browser requests get 403;
   * same-origin ones (a page this server serves) always pass.
   */
  corsOrigins?: readonly string[];
  /** Whether the prefetcher is on (reported by `/metrics`). */
  prefetchEnabled?: boolean;
  /** Resolve only once the model is loaded (default true); false = serve 503 while loading. */
  waitForModel?: boolean;
  /** How long a shutdown lets running generations go on before cancelling them, ms (default 5000). */
  shutdownGraceMs?: number;
  /** Where to cache the demo model (default `demoCacheDir()`). */
  demoCacheDir?: string;
  /** One line per request (method, path, status, ms) and server events; default none. */
  log?: (line: string) => void;
  /** Called once listening, before the model is loaded. */
  onListen?: (addr: { hostname: string; port: number; url: string }) => void;
}

/** A running server. */
export interface RunningServer {
  /** `http://host:port`. */
  readonly url: string;
  /** The port listened on. */
  readonly port: number;
  /** The interface listened on. */
  readonly hostname: string;
  /** The engine (throws while the model is loading or if it failed to load). */
  readonly engine: Engine;
  /** Resolves with the engine once loaded; rejects if loading failed. */
  readonly ready: Promise<Engine>;
  /** Generation requests running or waiting. */
  readonly inFlight: number;
  /**
   * Stops accepting connections, lets running generations go on for
   * `graceMs` (default the server's `shutdownGraceMs`), cancels the rest,
   * waits for every response to end and closes the engine it loaded.
   */
  close(o?: { graceMs?: number }): Promise<void>;
  /** Resolves when the server has closed. */
  readonly finished: Promise<void>;
}

const DEFAULT_MAX_TOKENS = { generate: 128, completions: 16, chat: 256 } as const;

const GENERATE_FIELDS = [
  "prompt",
  "messages",
  "max_tokens",
  "stop",
  "stream",
  "cache_prompt",
  ...SAMPLING_FIELDS,
] as const;

type Handler = (req: Request, url: URL, params: string[]) => Promise<Response> | Response;

interface Route {
  pattern: RegExp;
  /** Name used in metrics (bounded set). */
  name: string;
  methods: Record<string, Handler>;
  /** Reachable without the API key. */
  open?: boolean;
}

/** The server's state and handlers; {@linkcode startServer} wires it to `Deno.serve`. */
class App {
  readonly metrics: ServerMetrics = new ServerMetrics();
  readonly startedAt: number = Date.now();
  engine: Engine | undefined;
  loadError: Error | undefined;
  /** Admission and running of generations (`./queue.ts`). */
  readonly queue: GenerationQueue;
  /** The model file served, for `/props` (unknown when the caller loads the engine). */
  modelPath: string | undefined;
  readonly #routes: Route[];
  #feed: ExpertsFeed | undefined;

  constructor(readonly o: ServerOptions) {
    this.queue = new GenerationQueue({
      maxQueue: o.maxQueue ?? 16,
      metrics: this.metrics,
      engine: () => this.#engine(),
      log: o.log,
      outcome: (res) => this.#outcomes.get(res),
    });
    this.#routes = [
      { pattern: /^\/health$/, name: "/health", methods: { GET: () => this.health() }, open: true },
      {
        pattern: /^\/metrics$/,
        name: "/metrics",
        methods: { GET: (r, u) => this.metricsRoute(r, u) },
      },
      {
        pattern: /^\/generate$/,
        name: "/generate",
        methods: { POST: (r) => this.generateRoute(r) },
      },
      { pattern: /^\/v1\/models$/, name: "/v1/models", methods: { GET: () => this.models() } },
      {
        pattern: /^\/v1\/models\/(.+)$/,
        name: "/v1/models/{id}",
        methods: { GET: (_r, _u, p) => this.model(p[0]!) },
      },
      {
        pattern: /^\/v1\/completions$/,
        name: "/v1/completions",
        methods: { POST: (r) => this.completionsRoute(r) },
      },
      {
        pattern: /^\/v1\/chat\/completions$/,
        name: "/v1/chat/completions",
        methods: { POST: (r) => this.chatRoute(r) },
      },
      // llama.cpp server's helpers, with its request and response shapes
      {
        pattern: /^\/tokenize$/,
        name: "/tokenize",
        methods: { POST: (r) => this.tokenizeRoute(r) },
      },
      {
        pattern: /^\/detokenize$/,
        name: "/detokenize",
        methods: { POST: (r) => this.detokenizeRoute(r) },
      },
      {
        pattern: /^\/apply-template$/,
        name: "/apply-template",
        methods: { POST: (r) => this.applyTemplateRoute(r) },
      },
      { pattern: /^\/props$/, name: "/props", methods: { GET: () => this.props() } },
      {
        pattern: /^\/v1\/experts$/,
        name: "/v1/experts",
        methods: { GET: () => json(this.#experts().snapshot()) },
      },
      {
        pattern: /^\/v1\/experts\/events$/,
        name: "/v1/experts/events",
        methods: { GET: () => this.#experts().subscribe() },
      },
      // the page asks for the API key itself; its JSON twin checks it in index()
      { pattern: /^\/$/, name: "/", methods: { GET: (r) => this.index(r) }, open: true },
      {
        pattern: UI_ASSET_PATTERN,
        name: "/ui/*",
        methods: { GET: (_r, u) => uiResponse(u.pathname) },
        open: true,
      },
    ];
  }

  get #bodyTimeout(): number {
    return this.o.bodyTimeoutMs ?? 30_000;
  }

  get closing(): boolean {
    return this.queue.closing;
  }

  get inFlight(): number {
    return this.queue.inFlight;
  }

  /** Cancels every generation (shutdown past its grace). */
  cancelAll(): void {
    this.queue.cancelAll();
  }

  /** Ends the experts event streams (they would otherwise hold shutdown open). */
  closeStreams(): void {
    this.#feed?.close();
  }

  #experts(): ExpertsFeed {
    if (this.closing) {
      throw new HttpError(503, "the server is shutting down", { type: "server_shutting_down" });
    }
    return this.#feed ??= new ExpertsFeed(this.#engine().model);
  }

  async handle(req: Request, info: Deno.ServeHandlerInfo): Promise<Response> {
    const t0 = performance.now();
    let url: URL;
    try {
      url = new URL(req.url);
    } catch {
      return errorResponse(new HttpError(400, "the request URL cannot be parsed"));
    }
    const route = this.#routes.find((r) => r.pattern.test(url.pathname));
    let res: Response;
    let cors: string | undefined;
    try {
      checkHost(req, this.o.allowedHosts, this.boundHost);
      cors = checkOrigin(req, this.o.corsOrigins);
      res = req.method === "OPTIONS" && cors !== undefined
        ? preflight(req)
        : await this.#dispatch(req, url, route);
    } catch (e) {
      res = errorResponse(toHttpError(e));
    }
    if (cors !== undefined) {
      res.headers.set("access-control-allow-origin", cors);
      res.headers.append("vary", "Origin");
    }
    const name = route?.name ?? "other";
    const outcome = { status: res.status };
    this.#outcomes.set(res, outcome);
    const done = () => {
      const ms = performance.now() - t0;
      const status = outcome.status;
      this.metrics.recordRequest(name, status, ms / 1000);
      const shown = status === res.status ? `${status}` : `${res.status}→${status} (stream failed)`;
      this.o.log?.(`${req.method} ${url.pathname} ${shown} ${ms.toFixed(0)}ms`);
    };
    info.completed.then(done, done);
    return res;
  }

  /** The final status of each response, where a stream that fails after its headers changes it. */
  readonly #outcomes = new WeakMap<Response, { status: number }>();

  /** The address listened on (set by startServer). */
  boundHost: string | undefined;

  async #dispatch(req: Request, url: URL, route: Route | undefined): Promise<Response> {
    if (this.o.apiKey !== undefined && !route?.open) checkKey(req, this.o.apiKey);
    if (!route) {
      throw new HttpError(404, `no endpoint at ${url.pathname}`, { type: "not_found_error" });
    }
    const params = url.pathname.match(route.pattern)!.slice(1).map((p) => {
      try {
        return decodeURIComponent(p);
      } catch {
        return p;
      }
    });
    const method = req.method === "HEAD" ? "GET" : req.method;
    const h = route.methods[method];
    if (!h) {
      const allow = Object.keys(route.methods);
      if (allow.includes("GET")) allow.push("HEAD");
      throw new HttpError(405, `${url.pathname} does not accept ${req.method}`, {
        type: "method_not_allowed",
        headers: { allow: allow.join(", ") },
      });
    }
    const res = await h(req, url, params);
    if (req.method === "HEAD") {
      await res.body?.cancel();
      return new Response(null, { status: res.status, headers: res.headers });
    }
    return res;
  }

  /** The engine, or 503 while loading. */
  #engine(): Engine {
    if (this.engine) return this.engine;
    if (this.loadError) {
      throw new HttpError(503, `the model failed to load: ${this.loadError.message}`);
    }
    throw new HttpError(503, "the model is loading; retry shortly", {
      type: "model_loading",
      headers: { "retry-after": "2" },
    });
  }

  #limits(e: Engine): ModelLimits {
    return {
      contextLength: e.info.contextLength,
      vocabSize: e.info.vocabSize,
      penaltyWindow: e.sampler.historyCapacity,
    };
  }

  index(req: Request): Promise<Response> | Response {
    if (wantsHtml(req.headers.get("accept") ?? "")) return uiResponse("/");
    if (this.o.apiKey !== undefined) checkKey(req, this.o.apiKey);
    return json({
      name: "od-moe",
      model: this.engine?.info.name ?? null,
      endpoints: this.#routes.map((r) => `${Object.keys(r.methods).join("|")} ${r.name}`),
    });
  }

  health(): Response {
    const uptime = (Date.now() - this.startedAt) / 1000;
    if (this.closing) return json({ status: "shutting_down", uptime_seconds: uptime }, 503);
    if (this.loadError) {
      return json({ status: "error", error: this.loadError.message, uptime_seconds: uptime }, 503);
    }
    const e = this.engine;
    if (!e) return json({ status: "loading", uptime_seconds: uptime }, 503, { "retry-after": "2" });
    return json({
      status: "ok",
      model: e.info.name,
      architecture: e.info.architecture,
      context_length: e.info.contextLength,
      vocab_size: e.info.vocabSize,
      uptime_seconds: uptime,
      requests_in_flight: this.inFlight,
      queue_depth: this.queue.queueDepth,
    });
  }

  metricsView(): MetricsView {
    const e = this.engine;
    return {
      startedAt: this.startedAt,
      model: e ? { name: e.info.name, architecture: e.info.architecture } : undefined,
      inFlight: this.inFlight,
      queueDepth: this.queue.queueDepth,
      maxQueue: this.queue.maxQueue,
      experts: e?.model.expertStats.snapshot(),
      prefetchEnabled: this.o.prefetchEnabled ?? false,
      prefetch: e?.model.prefetchStats,
      promptCache: e?.session.promptCache && {
        sequences: e.session.promptCache.size,
        bytes: e.session.promptCache.bytes,
        limitBytes: e.session.promptCache.limitBytes,
        saved: e.session.promptCache.saved,
        hits: e.session.promptCache.hits,
      },
    };
  }

  metricsRoute(req: Request, url: URL): Response {
    const format = url.searchParams.get("format");
    if (format !== null && format !== "json" && format !== "prometheus") {
      throw badRequest(
        "format",
        `'format' must be json or prometheus, got ${JSON.stringify(format)}`,
      );
    }
    const prom = format === "prometheus" ||
      (format === null && wantsPrometheus(req.headers.get("accept") ?? ""));
    if (prom) {
      return new Response(prometheusText(this.metrics, this.metricsView()), {
        headers: { "content-type": PROMETHEUS_CONTENT_TYPE },
      });
    }
    return json(metricsJson(this.metrics, this.metricsView()));
  }

  #modelCard(e: Engine): Record<string, unknown> {
    return {
      id: e.info.name,
      object: "model",
      created: Math.floor(this.startedAt / 1000),
      owned_by: "od-moe",
      architecture: e.info.architecture,
      context_length: e.info.contextLength,
    };
  }

  models(): Response {
    return json({ object: "list", data: [this.#modelCard(this.#engine())] });
  }

  model(id: string): Response {
    const e = this.#engine();
    if (id !== e.info.name) {
      throw new HttpError(404, `no model '${id}'; this server serves '${e.info.name}'`, {
        type: "not_found_error",
        field: "model",
      });
    }
    return json(this.#modelCard(e));
  }

  async #body(req: Request): Promise<Record<string, unknown>> {
    return await readJsonObject(req, this.o.maxBodyBytes ?? MAX_BODY_BYTES, this.#bodyTimeout);
  }

  /** `POST /tokenize` (llama.cpp's; `./llama_routes.ts`). */
  async tokenizeRoute(req: Request): Promise<Response> {
    return json(tokenize(this.#engine(), await this.#body(req)));
  }

  /** `POST /detokenize` (llama.cpp's). */
  async detokenizeRoute(req: Request): Promise<Response> {
    const e = this.#engine();
    return json(detokenize(e, await this.#body(req), this.#limits(e)));
  }

  /** `POST /apply-template` (llama.cpp's). */
  async applyTemplateRoute(req: Request): Promise<Response> {
    return json(applyTemplate(this.#engine(), await this.#body(req)));
  }

  /** `GET /props` (llama.cpp's). */
  props(): Response {
    return json(props(this.#engine(), this.modelPath));
  }

  async generateRoute(req: Request): Promise<Response> {
    const e = this.#engine();
    const body = await readJsonObject(
      req,
      this.o.maxBodyBytes ?? MAX_BODY_BYTES,
      this.#bodyTimeout,
    );
    const limits = this.#limits(e);
    const f = new Fields(body, GENERATE_FIELDS);
    const prompt = readPrompt(f, "prompt", limits);
    const messages = readMessages(f, "messages");
    if ((prompt === undefined) === (messages === undefined)) {
      throw badRequest(
        prompt === undefined ? "prompt" : "messages",
        prompt === undefined
          ? "'prompt' (a string or token ids) or 'messages' is required"
          : "send 'prompt' or 'messages', not both",
      );
    }
    const g: GenerateRequest = {
      maxTokens: readMaxTokens(f, "max_tokens", limits, DEFAULT_MAX_TOKENS.generate),
      sampling: readSampling(f, limits),
      stop: f.stop("stop"),
      cachePrompt: f.boolean("cache_prompt"),
    };
    const stream = f.boolean("stream") ?? false;
    g.prompt = preparePrompt(e, { prompt, messages });
    const result = (out: { text: string; tokens: number[]; stats: GenerationStats }) => ({
      text: out.text,
      tokens: out.tokens,
      finish_reason: out.stats.finishReason,
      stats: statsJson(out.stats),
    });
    return this.queue.serve(req, g, stream, {
      chunk: (c) => [[JSON.stringify({ text: c.text, tokens: c.tokens }), undefined]],
      finish: (out) => {
        const r = result(out);
        return [[JSON.stringify({ finish_reason: r.finish_reason, stats: r.stats }), "done"]];
      },
      body: result,
      fail: (h) => [[JSON.stringify(errorBody(h)), "error"]],
    });
  }

  /** The hooks the OpenAI endpoints run through. */
  #openai(e: Engine): OpenAIContext {
    return {
      engine: e,
      limits: this.#limits(e),
      prepare: (p, fromMessages) => preparePrompt(e, p, fromMessages),
      serve: (req, gs, stream, shape) => this.queue.serveAll(req, gs, stream, shape),
    };
  }

  async completionsRoute(req: Request): Promise<Response> {
    const e = this.#engine();
    return await completions(this.#openai(e), req, await this.#body(req));
  }

  async chatRoute(req: Request): Promise<Response> {
    const e = this.#engine();
    return await chatCompletions(this.#openai(e), req, await this.#body(req));
  }
}

/** The `stats` object of a `/generate` response. */
export function statsJson(s: GenerationStats): Record<string, number> {
  const seconds = (s.prefillMs + s.decodeMs) / 1000;
  return {
    prompt_tokens: s.promptTokens,
    cached_tokens: s.cachedTokens,
    completion_tokens: s.completionTokens,
    tokens_per_second: s.decodeTokensPerSecond ||
      (seconds > 0 ? s.completionTokens / seconds : 0),
    cache_hit_rate: s.cacheHitRate,
    expert_loads: s.expertMisses,
    syncs_per_token: s.syncsPerToken,
    prefill_ms: s.prefillMs,
    decode_ms: s.decodeMs,
    prefill_tokens_per_second: s.prefillTokensPerSecond,
    expert_lookups: s.expertLookups,
    expert_hits: s.expertHits,
    expert_bytes_uploaded: s.expertBytesUploaded,
  };
}

/**
 * Starts the server: listens at once (`/health` answers 503 "loading"),
 * then loads the model. Resolves when listening and, unless
 * `waitForModel: false`, loaded.
 */
export async function startServer(o: ServerOptions = {}): Promise<RunningServer> {
  const app = new App(o);
  let listening!: (addr: Deno.NetAddr) => void;
  const listened = new Promise<Deno.NetAddr>((r) => listening = r);
  const guarded = (o.headerTimeoutMs ?? 15_000) > 0;
  // behind the front door (src/server/guard.ts) Deno.serve listens on a loopback port of its own
  const server = Deno.serve({
    port: guarded ? 0 : o.port ?? 8080,
    hostname: guarded ? "127.0.0.1" : o.hostname ?? "127.0.0.1",
    onListen: (addr) => listening(addr as Deno.NetAddr),
    onError: (e) => errorResponse(toHttpError(e)),
  }, (req, info) => app.handle(req, info));
  const innerAddr = await listened;
  let guard: Guard | undefined;
  if (guarded) {
    try {
      guard = startGuard({
        hostname: o.hostname ?? "127.0.0.1",
        port: o.port ?? 8080,
        inner: { hostname: innerAddr.hostname, port: innerAddr.port },
        headerTimeoutMs: o.headerTimeoutMs ?? 15_000,
        maxBodyBytes: o.maxBodyBytes ?? MAX_BODY_BYTES,
      });
    } catch (e) {
      await server.shutdown();
      throw e;
    }
  }
  const addr = guard?.addr ?? innerAddr;
  app.boundHost = addr.hostname;
  const host = addr.hostname.includes(":") ? `[${addr.hostname}]` : addr.hostname;
  const url = `http://${host}:${addr.port}`;
  o.onListen?.({ hostname: addr.hostname, port: addr.port, url });

  const owned = !o.engine;
  const ready = (async () => {
    if (o.engine) return o.engine;
    if (o.load) return await o.load();
    const opts = o.engineOptions ?? {
      model: await ensureDemoModel({ cacheDir: o.demoCacheDir, log: o.log }),
    };
    app.modelPath = opts.model ?? opts.baseWeights;
    return await Engine.load(opts);
  })();
  ready.then((e) => {
    if (app.closing && owned) e.close();
    else app.engine = e;
  }, (e) => {
    app.loadError = e instanceof Error ? e : new Error(String(e));
  });

  let closed: Promise<void> | undefined;
  const close = (c: { graceMs?: number } = {}): Promise<void> => {
    if (closed) return closed;
    app.queue.closing = true;
    const grace = c.graceMs ?? o.shutdownGraceMs ?? 5000;
    const timer = setTimeout(() => app.cancelAll(), grace);
    closed = (async () => {
      // in-flight generations get the grace period; shutdown() waits for every response
      guard?.close();
      const done = server.shutdown();
      app.closeStreams();
      if (app.inFlight === 0) app.cancelAll();
      await done;
      clearTimeout(timer);
      app.cancelAll();
      if (owned) {
        const e = await ready.catch(() => undefined);
        e?.close();
      }
      app.engine = undefined;
    })();
    return closed;
  };

  const running: RunningServer = {
    url,
    port: addr.port,
    hostname: addr.hostname,
    get engine(): Engine {
      if (!app.engine) throw new Error(app.loadError?.message ?? "the model is not loaded");
      return app.engine;
    },
    ready,
    get inFlight() {
      return app.inFlight;
    },
    close,
    finished: server.finished,
  };
  if (o.waitForModel ?? true) {
    try {
      await ready;
    } catch (e) {
      await close({ graceMs: 0 });
      throw e;
    }
  } else {
    ready.catch(() => {}); // reported by /health and the caller's own await
  }
  return running;
}
