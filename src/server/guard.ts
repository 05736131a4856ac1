/**
 * The server's front door: a TCP listener that reads each request's header
 * itself before handing the connection to `Deno.serve` (listening on a
 * loopback port of its own), for the two things `Deno.serve` cannot be told:
 *
 * - **Header read timeout.** A client that opens a connection and sends its
 *   header slowly, or never finishes it (slowloris), gets 408 and is closed
 *   after `headerTimeoutMs`; its connection holds nothing else meanwhile.
 * - **`Expect: 100-continue` over the size cap.** `Deno.serve` answers
 *   `100 Continue` before the handler runs, inviting the upload it is about
 *   to refuse; a declared `Content-Length` over `maxBodyBytes` gets its 413
 *   here, before any `100 Continue`.
 *
 * Every connection carries one request (`Connection: close` is set on the
 * way in), so every request's header is read under the timeout. Bytes are
 * copied both ways unchanged otherwise, half-closes included, so a client
 * that hangs up still cancels its generation.
 *
 * @module
 */

/** Options of {@linkcode startGuard}. */
export interface GuardOptions {
  /** Interface to listen on. */
  hostname: string;
  /** Port (0 = any free port). */
  port: number;
  /** Where `Deno.serve` listens (a loopback port). */
  inner: { hostname: string; port: number };
  /** How long a request's header may take to arrive, ms. */
  headerTimeoutMs: number;
  /** Largest request body accepted, bytes: a larger declared `Content-Length` with `Expect` gets 413. */
  maxBodyBytes: number;
  /** Largest request header, bytes (default 64 KiB); larger gets 431. */
  maxHeaderBytes?: number;
}

/** A running front door. */
export interface Guard {
  /** The address listened on. */
  readonly addr: Deno.NetAddr;
  /** Stops accepting; connections already handed over finish on their own. */
  close(): void;
}

const encoder = new TextEncoder();
const HEAD_END = encoder.encode("\r\n\r\n");

function indexOfHeadEnd(buf: Uint8Array, length: number, from: number): number {
  for (let i = Math.max(0, from - 3); i + 4 <= length; i++) {
    if (
      buf[i] === HEAD_END[0] && buf[i + 1] === HEAD_END[1] && buf[i + 2] === HEAD_END[2] &&
      buf[i + 3] === HEAD_END[3]
    ) {
      return i;
    }
  }
  return -1;
}

function errorResponse(status: number, reason: string, message: string, code: string): Uint8Array {
  const body = JSON.stringify({
    error: { message, type: "invalid_request_error", param: null, code },
  });
  return encoder.encode(
    `HTTP/1.1 ${status} ${reason}\r\ncontent-type: application/json; charset=utf-8\r\n` +
      `content-length: ${encoder.encode(body).length}\r\nconnection: close\r\n\r\n${body}`,
  );
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  let at = 0;
  while (at < bytes.length) at += await conn.write(bytes.subarray(at));
}

function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // closed already
  }
}

/** The header with `Connection: close` in place of any `Connection` header. */
function rewriteHead(head: string): string {
  const lines = head.split("\r\n");
  const kept = lines.filter((l, i) => i === 0 || !/^connection\s*:/i.test(l));
  kept.push("Connection: close");
  return kept.join("\r\n");
}

/** Copies `from` to `to` until `from` ends, then half-closes `to`; false when a write failed. */
async function pipe(from: Deno.Conn, to: Deno.Conn): Promise<boolean> {
  const buf = new Uint8Array(64 * 1024);
  for (;;) {
    let n: number | null;
    try {
      n = await from.read(buf);
    } catch {
      n = null;
    }
    if (n === null) {
      try {
        await to.closeWrite();
      } catch {
        // gone already
      }
      return true;
    }
    try {
      await writeAll(to, buf.subarray(0, n));
    } catch {
      return false;
    }
  }
}

async function serveConnection(conn: Deno.Conn, o: GuardOptions): Promise<void> {
  const max = o.maxHeaderBytes ?? 64 * 1024;
  const buf = new Uint8Array(max + 4096);
  let length = 0;
  let end = -1;
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    // a read pending on a closed conn rejects; the 408 goes out first
    writeAll(
      conn,
      errorResponse(
        408,
        "Request Timeout",
        `the request header did not arrive within ${o.headerTimeoutMs / 1000} s`,
        "header_timeout",
      ),
    ).catch(() => {}).finally(() => closeQuietly(conn));
  }, o.headerTimeoutMs);
  try {
    while (end < 0) {
      if (length >= max) {
        await writeAll(
          conn,
          errorResponse(
            431,
            "Request Header Fields Too Large",
            `the request header is over ${max} bytes`,
            "header_too_large",
          ),
        );
        return closeQuietly(conn);
      }
      let n: number | null;
      try {
        n = await conn.read(buf.subarray(length));
      } catch {
        n = null;
      }
      if (n === null || timedOut) {
        if (!timedOut) closeQuietly(conn);
        return;
      }
      const from = length;
      length += n;
      end = indexOfHeadEnd(buf, length, from);
    }
  } finally {
    clearTimeout(timer);
  }
  if (timedOut) return;
  const head = new TextDecoder("latin1").decode(buf.subarray(0, end));
  const rest = buf.slice(end + 4, length);
  const expect = /^expect\s*:\s*100-continue\s*$/im.test(head);
  const declared = Number(/^content-length\s*:\s*(\d+)\s*$/im.exec(head)?.[1] ?? NaN);
  if (expect && declared > o.maxBodyBytes) {
    try {
      await writeAll(
        conn,
        errorResponse(
          413,
          "Payload Too Large",
          `the request body is over ${o.maxBodyBytes} bytes`,
          "body_too_large",
        ),
      );
    } catch {
      // gone
    }
    return closeQuietly(conn);
  }
  let inner: Deno.Conn;
  try {
    inner = await Deno.connect({ hostname: o.inner.hostname, port: o.inner.port });
  } catch {
    try {
      await writeAll(
        conn,
        errorResponse(503, "Service Unavailable", "the server is shutting down", "unavailable"),
      );
    } catch {
      // gone
    }
    return closeQuietly(conn);
  }
  try {
    await writeAll(inner, encoder.encode(rewriteHead(head) + "\r\n\r\n"));
    if (rest.length > 0) await writeAll(inner, rest);
  } catch {
    closeQuietly(inner);
    return closeQuietly(conn);
  }
  // response bytes back until the server closes (Connection: close); the
  // request's remaining body forward, a client's half-close passed on
  const up = pipe(conn, inner);
  const down = await pipe(inner, conn);
  if (!down) closeQuietly(inner); // the client is gone: the server sees it and cancels
  closeQuietly(conn);
  await up;
  closeQuietly(inner);
}

/** Listens on `hostname:port` and hands each request's connection to `inner` (see the module doc). */
export function startGuard(o: GuardOptions): Guard {
  const listener = Deno.listen({ hostname: o.hostname, port: o.port });
  (async () => {
    for (;;) {
      let conn: Deno.Conn;
      try {
        conn = await listener.accept();
      } catch {
        return; // closed
      }
      serveConnection(conn, o).catch(() => closeQuietly(conn));
    }
  })();
  return {
    addr: listener.addr as Deno.NetAddr,
    close: () => {
      try {
        listener.close();
      } catch {
        // closed already
      }
    },
  };
}
