/**
 * The generation queue: admission (503 when shutting down or when
 * `maxQueue` requests already wait, with a Retry-After from recent
 * generation times), cancellation on disconnect or shutdown, running a
 * generation with its metrics, and serving its result as JSON or SSE.
 *
 * @module
 */

import { type Engine, failureUsage } from "../generate/engine.ts";
import type {
  ChatMessage,
  GenerateRequest,
  GenerationStats,
  StreamChunk,
} from "../generate/types.ts";
import type { ServerMetrics } from "./metrics.ts";
import { sseStream } from "./sse.ts";
import type { GenerationOutput, ServeShape, ServeShapeN } from "./openai/shared.ts";
import { json, toHttpError } from "./http.ts";
import { HttpError } from "./validate.ts";

/** A generation request admitted to the queue. */
interface Ticket {
  readonly t0: number;
  readonly signal: AbortSignal;
  abort(): void;
  release(): void;
}

/** What the queue needs from the server. */
export interface QueueOptions {
  /** Requests that may wait behind the running one. */
  maxQueue: number;
  metrics: ServerMetrics;
  /** The engine, or throws the 503 of a server still loading. */
  engine(): Engine;
  log?: (line: string) => void;
  /** The request log's record of a response (a stream failing after its headers changes it). */
  outcome(res: Response): { status: number } | undefined;
}

/**
 * Tokenises the prompt (or renders the chat) before queueing, so a bad
 * prompt is refused at once rather than after the queue.
 */
export function preparePrompt(
  e: Engine,
  p: { prompt?: string | number[]; messages?: ChatMessage[] },
  fromMessages = p.messages !== undefined,
): number[] {
  try {
    const ids = e.promptTokens(p);
    e.checkPrompt(ids, {
      field: fromMessages ? "messages" : "prompt",
      what: fromMessages ? "prompt rendered from the messages" : "prompt",
    });
    return ids;
  } catch (err) {
    throw toHttpError(err);
  }
}

/** Admits, runs and serves generations one at a time. */
export class GenerationQueue {
  /** Set at shutdown: new generations get 503. */
  closing = false;
  /** Generations running or waiting. */
  inFlight = 0;
  readonly #o: QueueOptions;
  readonly #shutdown = new AbortController();
  /** Mean duration of recent generations, s (for Retry-After). */
  #avgGenSeconds = 1;

  constructor(o: QueueOptions) {
    this.#o = o;
  }

  get maxQueue(): number {
    return this.#o.maxQueue;
  }

  /** Generations the engine runs at once (1 while it loads). */
  get parallel(): number {
    try {
      return this.#o.engine().parallel;
    } catch {
      return 1;
    }
  }

  /** Generations waiting behind the running ones. */
  get queueDepth(): number {
    return Math.max(0, this.inFlight - this.parallel);
  }

  /** Cancels every generation (shutdown past its grace). */
  cancelAll(): void {
    this.#shutdown.abort();
  }

  /**
   * Admits a generation: 503 when shutting down or when `maxQueue`
   * requests already wait. The ticket's signal aborts when the client
   * disconnects or shutdown cancels; `release()` must be called once.
   */
  #admit(req: Request): Ticket {
    if (this.closing) {
      throw new HttpError(503, "the server is shutting down", {
        type: "server_shutting_down",
        headers: { connection: "close" },
      });
    }
    if (this.inFlight >= this.maxQueue + this.parallel) {
      this.#o.metrics.queueRejections++;
      const wait = Math.min(60, Math.max(1, Math.ceil(this.#avgGenSeconds * this.queueDepth)));
      throw new HttpError(
        503,
        `the queue is full (${this.queueDepth} requests waiting, --max-queue ${this.maxQueue}); ` +
          `retry in ${wait} s`,
        { type: "queue_full", headers: { "retry-after": String(wait) } },
      );
    }
    this.inFlight++;
    const ac = new AbortController();
    const abort = () => ac.abort();
    // unlinked on release: Deno also aborts request.signal after a response completes
    req.signal.addEventListener("abort", abort);
    this.#shutdown.signal.addEventListener("abort", abort);
    if (req.signal.aborted || this.#shutdown.signal.aborted) ac.abort();
    let released = false;
    return {
      t0: performance.now(),
      signal: ac.signal,
      abort,
      release: () => {
        if (released) return;
        released = true;
        this.inFlight--;
        req.signal.removeEventListener("abort", abort);
        this.#shutdown.signal.removeEventListener("abort", abort);
      },
    };
  }

  /** Runs an admitted generation and records it. */
  async #run(
    t: Ticket,
    req: GenerateRequest,
    onChunk?: (c: StreamChunk) => void,
  ): Promise<{ text: string; tokens: number[]; stats: GenerationStats }> {
    const e = this.#o.engine();
    let first = 0;
    try {
      const out = await e.generate({ ...req, signal: t.signal }, (c) => {
        if (!first) first = performance.now();
        onChunk?.(c);
      });
      const end = performance.now();
      const totalMs = end - t.t0;
      const s = out.stats;
      this.#o.metrics.recordGeneration({
        stats: s,
        totalMs,
        ttftMs: (first || end) - t.t0,
        queueMs: Math.max(0, totalMs - s.prefillMs - s.decodeMs),
      });
      if (s.finishReason !== "cancelled") {
        this.#avgGenSeconds = 0.8 * this.#avgGenSeconds + 0.2 * (s.prefillMs + s.decodeMs) / 1000;
      }
      return out;
    } catch (err) {
      const h = toHttpError(err);
      if (h.status >= 500) {
        this.#o.metrics.recordGenerationError(failureUsage(err));
        this.#o.log?.(`generation failed: ${h.message}`);
      }
      throw h;
    }
  }

  /**
   * Serves a generation: the JSON body from `finish`, or (stream) an SSE
   * response with `chunk` per piece, `finish`'s events at the end, and
   * `fail`'s event on an error after the headers went out.
   */
  serve(
    req: Request,
    g: GenerateRequest,
    stream: boolean,
    shape: ServeShape,
  ): Promise<Response> | Response {
    return this.serveAll(req, [g], stream, {
      ...shape,
      chunk: (c) => shape.chunk(c),
      finish: (outs) => shape.finish(outs[0]!),
      body: (outs) => shape.body(outs[0]!),
    });
  }

  /**
   * Serves several generations under one admission (OpenAI's `n` choices),
   * one after another, or at once when the engine runs several: `chunk`
   * sees each piece with its choice's index, `finish` and `body` all the
   * outputs. A cancelled choice ends the rest.
   */
  serveAll(
    req: Request,
    gs: readonly GenerateRequest[],
    stream: boolean,
    shape: ServeShapeN,
  ): Promise<Response> | Response {
    const t = this.#admit(req);
    const runAll = async (onChunk?: (c: StreamChunk, i: number) => void) => {
      if (gs.length > 1 && this.parallel > 1) {
        return await Promise.all(
          gs.map((g, i) => this.#run(t, g, onChunk && ((c) => onChunk(c, i)))),
        );
      }
      const outs: GenerationOutput[] = [];
      for (const [i, g] of gs.entries()) {
        const out = await this.#run(t, g, onChunk && ((c) => onChunk(c, i)));
        outs.push(out);
        if (out.stats.finishReason === "cancelled") break;
      }
      return outs;
    };
    if (!stream) {
      return runAll().then((outs) =>
        // nobody reads the answer of a client that left (nginx's 499 in the request log)
        outs.some((o) => o.stats.finishReason === "cancelled") && req.signal.aborted
          ? new Response(null, { status: 499 })
          : json(shape.body(outs))
      ).finally(() => t.release());
    }
    const sse = sseStream({ onCancel: () => t.abort() });
    const emit = (events: [string, string | undefined][]) => {
      for (const [data, event] of events) sse.send(data, event);
    };
    (async () => {
      try {
        if (shape.start) emit(shape.start());
        const outs = await runAll((c, i) => emit(shape.chunk(c, i)));
        emit(shape.finish(outs));
      } catch (e) {
        const h = toHttpError(e);
        // the 200 went out with the headers; the request log and metrics count the failure
        const outcome = this.#o.outcome(sse.response);
        if (outcome && !sse.closed) outcome.status = h.status;
        emit(shape.fail(h));
      } finally {
        t.release();
        sse.close();
      }
    })();
    return sse.response;
  }
}
