/**
 * HTTP plumbing of the server that does not depend on its state: JSON and
 * error responses, the mapping of generation failures to HTTP errors, the
 * Host / Origin / API-key checks every request passes, and content
 * negotiation for /metrics.
 *
 * @module
 */

import { RequestError } from "../generate/engine.ts";
import { ChatTemplateError } from "../tokenizer/chat.ts";
import { ExpertReadError } from "../experts/source.ts";
import { NonFiniteError } from "../model/model.ts";
import { errorBody } from "./openai/shared.ts";
import { badRequest, HttpError } from "./validate.ts";

export function json(body: unknown, status = 200, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json; charset=utf-8", ...headers },
  });
}

export function errorResponse(e: HttpError): Response {
  return json(errorBody(e), e.status, e.headers);
}

/** Turns what a generation threw into the HTTP error the client sees. */
export function toHttpError(e: unknown): HttpError {
  if (e instanceof HttpError) return e;
  if (e instanceof RequestError) return badRequest(e.field, e.message);
  if (e instanceof ChatTemplateError) return badRequest("messages", e.message);
  if (e instanceof ExpertReadError) {
    return new HttpError(500, `expert read failed: ${e.message}`, { type: "expert_read_error" });
  }
  if (e instanceof NonFiniteError) {
    return new HttpError(500, `generation failed: ${e.message}`, { type: "numerical_error" });
  }
  const msg = e instanceof Error ? `${e.name}: ${e.message}` : String(e);
  return new HttpError(500, `generation failed: ${msg}`);
}

/**
 * Whether an `Accept` header prefers Prometheus text (`text/plain` or
 * OpenMetrics) over JSON: a strictly higher quality, so a client that
 * accepts both equally (axios sends `application/json, text/plain` and any type) gets JSON.
 */
export function wantsPrometheus(accept: string): boolean {
  let text = 0;
  let json = 0;
  for (const part of accept.split(",")) {
    const [type = "", ...params] = part.trim().toLowerCase().split(";").map((x) => x.trim());
    const qp = params.find((p) => p.startsWith("q="));
    const q = qp ? Number(qp.slice(2)) : 1;
    if (!(q >= 0)) continue;
    if (type === "text/plain" || type === "application/openmetrics-text") text = Math.max(text, q);
    if (type === "application/json" || type === "application/*") json = Math.max(json, q);
  }
  return text > 0 && text > json;
}

/** Constant-time comparison of two strings (as UTF-8). */
function sameSecret(a: string, b: string): boolean {
  const x = new TextEncoder().encode(a);
  const y = new TextEncoder().encode(b);
  let diff = x.length ^ y.length;
  for (let i = 0; i < x.length; i++) diff |= x[i]! ^ (y[i % Math.max(1, y.length)] ?? 0);
  return diff === 0;
}

/**
 * 403 unless the `Host` header names this server: its bound address, a
 * loopback name or any IP address (a DNS-rebinding page sends its own
 * domain), or an `allowedHosts` entry. Checked when listening on
 * loopback, or always when `allowedHosts` is given.
 */
export function checkHost(
  req: Request,
  allowed: readonly string[] | undefined,
  boundHost: string | undefined,
): void {
  if (allowed === undefined && !isLoopbackHost(boundHost ?? "127.0.0.1")) return;
  if (allowed?.includes("*")) return;
  const host = req.headers.get("host");
  if (host === null) return; // HTTP/1.0: no name to rebind
  const h = host.trim().toLowerCase();
  const name = hostName(h);
  if (
    isIpLiteral(name) || name === "localhost" || name.endsWith(".localhost") ||
    name === (boundHost ?? "").toLowerCase() ||
    allowed?.some((a) => a.toLowerCase() === h || a.toLowerCase() === name)
  ) {
    return;
  }
  throw new HttpError(
    403,
    `the Host header '${host}' is not an address of this server; if you reach it through ` +
      `that name, start the server with --allowed-hosts ${name}`,
    { type: "forbidden_host" },
  );
}

/**
 * For a request from a web page (it carries `Origin`, or
 * `Sec-Fetch-Site: cross-site`): 403 unless the origin is this server's
 * own or in `corsOrigins`. Returns the value for
 * `Access-Control-Allow-Origin` when a listed cross origin is allowed.
 */
export function checkOrigin(
  req: Request,
  corsOrigins: readonly string[] | undefined,
): string | undefined {
  const origin = req.headers.get("origin");
  const site = req.headers.get("sec-fetch-site");
  if (origin === null) {
    if (site === "cross-site") {
      throw new HttpError(403, "cross-site requests from web pages are refused", {
        type: "forbidden_origin",
      });
    }
    return undefined;
  }
  const host = req.headers.get("host");
  if (host !== null && (origin === `http://${host}` || origin === `https://${host}`)) {
    return undefined; // same origin: a page served by this server
  }
  const allowed = corsOrigins ?? [];
  if (allowed.includes("*")) return "*";
  if (allowed.includes(origin)) return origin;
  throw new HttpError(
    403,
    `requests from the web page at ${origin} are refused; to allow them, start the server ` +
      `with --cors-origin ${origin}`,
    { type: "forbidden_origin" },
  );
}

/** 401 unless the request carries `Authorization: Bearer <apiKey>`. */
export function checkKey(req: Request, apiKey: string): void {
  const h = req.headers.get("authorization") ?? "";
  const m = /^Bearer\s+(.+)$/i.exec(h.trim());
  if (!m || !sameSecret(m[1]!, apiKey)) {
    throw new HttpError(
      401,
      m ? "the API key is wrong" : "an API key is required: send 'Authorization: Bearer <key>'",
      { type: "authentication_error", headers: { "www-authenticate": 'Bearer realm="od-moe"' } },
    );
  }
}

/** The `Access-Control-*` answer to a browser's preflight from an allowed origin. */
export function preflight(req: Request): Response {
  return new Response(null, {
    status: 204,
    headers: {
      "access-control-allow-methods": "GET, POST, OPTIONS",
      "access-control-allow-headers": req.headers.get("access-control-request-headers") ??
        "authorization, content-type",
      "access-control-max-age": "600",
    },
  });
}

/** `host` without its port (`[::1]:8080` → `::1`, `a.b:80` → `a.b`). */
function hostName(host: string): string {
  if (host.startsWith("[")) {
    const end = host.indexOf("]");
    return end > 0 ? host.slice(1, end) : host;
  }
  const i = host.lastIndexOf(":");
  return i >= 0 && host.indexOf(":") === i ? host.slice(0, i) : host;
}

function isIpLiteral(name: string): boolean {
  return /^\d{1,3}(\.\d{1,3}){3}$/.test(name) ||
    (name.includes(":") && /^[0-9a-f:.]+$/.test(name));
}

function isLoopbackHost(host: string): boolean {
  return host === "localhost" || host === "::1" || host === "[::1]" || /^127\./.test(host);
}
