/**
 * Server-sent events (the `text/event-stream` format of the HTML standard):
 * a writer that turns events into a streaming `Response` and tells when the
 * client went away, and a reader for tests, benchmarks and clients.
 *
 * ```ts
 * import { readSse, sseStream } from "./sse.ts";
 *
 * const sse = sseStream({ onCancel: () => console.log("client left") });
 * sse.send(JSON.stringify({ text: "hi" }));
 * sse.send("{}", "done");
 * sse.close();
 * for await (const e of readSse(sse.response.body!)) console.log(e.event, e.data);
 * ```
 *
 * @module
 */

/** One event as read back. */
export interface SseEvent {
  /** The `event:` field; `"message"` when absent. */
  event: string;
  /** The `data:` lines joined by `\n`. */
  data: string;
}

/** The writing end of an event stream. */
export interface SseWriter {
  /** The response to return from the handler (status 200, `text/event-stream`). */
  readonly response: Response;
  /** Whether the stream is closed (by {@link SseWriter.close} or by the client). */
  readonly closed: boolean;
  /** Sends one event; `false` when the stream is already closed. */
  send(data: string, event?: string): boolean;
  /** Sends a comment line (`: text`), which clients ignore; keeps proxies from timing out. */
  comment(text: string): boolean;
  /** Ends the stream. Idempotent. */
  close(): void;
}

/** Options of {@linkcode sseStream}. */
export interface SseOptions {
  /** Called once when the client disconnects before {@link SseWriter.close}. */
  onCancel?: () => void;
  /** Extra response headers. */
  headers?: HeadersInit;
}

const encoder = new TextEncoder();

/** One event in wire format: an `event:` line when named, one `data:` line per line of `data`. */
export function formatSseEvent(data: string, event?: string): string {
  if (event !== undefined && /[\r\n]/.test(event)) {
    throw new RangeError(`an SSE event name cannot hold a line break: ${JSON.stringify(event)}`);
  }
  const head = event === undefined ? "" : `event: ${event}\n`;
  return head + data.split(/\r\n|\r|\n/).map((l) => `data: ${l}\n`).join("") + "\n";
}

/** A new event stream whose `response` streams what is sent, as it is sent. */
export function sseStream(options: SseOptions = {}): SseWriter {
  let controller!: ReadableStreamDefaultController<Uint8Array>;
  let closed = false;
  const body = new ReadableStream<Uint8Array>({
    start(c) {
      controller = c;
    },
    cancel() {
      if (closed) return;
      closed = true;
      options.onCancel?.();
    },
  });
  const headers = new Headers(options.headers);
  headers.set("content-type", "text/event-stream; charset=utf-8");
  headers.set("cache-control", "no-cache");
  // nginx and similar proxies buffer responses unless told not to
  headers.set("x-accel-buffering", "no");
  const write = (text: string): boolean => {
    if (closed) return false;
    try {
      controller.enqueue(encoder.encode(text));
      return true;
    } catch {
      closed = true;
      return false;
    }
  };
  return {
    response: new Response(body, { status: 200, headers }),
    get closed() {
      return closed;
    },
    send: (data, event) => write(formatSseEvent(data, event)),
    comment: (text) => write(`: ${text.replace(/[\r\n]+/g, " ")}\n\n`),
    close() {
      if (closed) return;
      closed = true;
      try {
        controller.close();
      } catch {
        // already errored by the runtime: nothing left to close
      }
    },
  };
}

/**
 * Parses a complete event stream's text into events (comments and `id:` /
 * `retry:` fields skipped; an event without `data:` lines is dropped, as the
 * standard says).
 */
export function parseSse(text: string): SseEvent[] {
  const out: SseEvent[] = [];
  for (const block of text.split(/\r\n\r\n|\n\n|\r\r/)) {
    const e = parseBlock(block);
    if (e) out.push(e);
  }
  return out;
}

function parseBlock(block: string): SseEvent | undefined {
  let event = "message";
  const data: string[] = [];
  for (const line of block.split(/\r\n|\r|\n/)) {
    if (line === "" || line.startsWith(":")) continue;
    const i = line.indexOf(":");
    const field = i < 0 ? line : line.slice(0, i);
    let value = i < 0 ? "" : line.slice(i + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") event = value;
    else if (field === "data") data.push(value);
  }
  return data.length > 0 ? { event, data: data.join("\n") } : undefined;
}

/**
 * Reads events from a response body as they arrive; leaving the loop early
 * cancels the body (the server sees a disconnect).
 */
export async function* readSse(body: ReadableStream<Uint8Array>): AsyncGenerator<SseEvent> {
  const decoder = new TextDecoder();
  let buf = "";
  const reader = body.getReader();
  let finished = false;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      finished = done;
      buf += done ? decoder.decode() : decoder.decode(value, { stream: true });
      for (;;) {
        const m = /\r\n\r\n|\n\n|\r\r/.exec(buf);
        if (!m) break;
        const e = parseBlock(buf.slice(0, m.index));
        buf = buf.slice(m.index + m[0].length);
        if (e) yield e;
      }
      if (done) break;
    }
    const e = parseBlock(buf);
    if (e) yield e;
  } finally {
    if (!finished) await reader.cancel().catch(() => {});
    reader.releaseLock();
  }
}
