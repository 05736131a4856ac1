/**
 * Request validation: the body read with a size cap and parsed as JSON, and
 * every parameter checked for type and range before a request reaches the
 * engine. Errors are {@linkcode HttpError}s that name the field; unknown
 * fields are refused, not ignored, so a misspelt `max_token` fails loudly.
 *
 * @module
 */

import type { ChatMessage, SamplingParams } from "../generate/types.ts";

/** An error that becomes an HTTP response: status, OpenAI-style type, the field at fault. */
export class HttpError extends Error {
  /** HTTP status. */
  readonly status: number;
  /** OpenAI-style error type (`invalid_request_error`, `server_error`, …). */
  readonly type: string;
  /** The request field at fault, when there is one. */
  readonly field: string | undefined;
  /** Extra response headers (`Allow`, `Retry-After`, `WWW-Authenticate`). */
  readonly headers: Record<string, string>;
  /** Builds the error. */
  constructor(
    status: number,
    message: string,
    o: { type?: string; field?: string; headers?: Record<string, string> } = {},
  ) {
    super(message);
    this.name = "HttpError";
    this.status = status;
    this.type = o.type ?? (status >= 500 ? "server_error" : "invalid_request_error");
    this.field = o.field;
    this.headers = o.headers ?? {};
  }
}

/** A 400 naming the field. */
export function badRequest(field: string, message: string): HttpError {
  return new HttpError(400, message, { field });
}

/** The largest request body accepted, bytes (1 MiB). */
export const MAX_BODY_BYTES = 1 << 20;

/**
 * Reads the body (at most `maxBytes`, else 413; within `timeoutMs`, else
 * 408; a body that ends before its `Content-Length` or breaks off, 400) and
 * parses it as a JSON object (else 400, field `body`). A declared length
 * over the cap is refused before any of the body is asked for, so a client
 * that sent `Expect: 100-continue` gets the 413 without `100 Continue`.
 */
export async function readJsonObject(
  req: Request,
  maxBytes = MAX_BODY_BYTES,
  timeoutMs = 30_000,
): Promise<Record<string, unknown>> {
  const tooLarge = () =>
    new HttpError(413, `the request body is over ${maxBytes} bytes`, { field: "body" });
  const declaredText = req.headers.get("content-length");
  const declared = declaredText === null ? undefined : Number(declaredText);
  if (declared !== undefined && declared > maxBytes) throw tooLarge();
  const chunks: Uint8Array[] = [];
  let size = 0;
  if (req.body) {
    const reader = req.body.getReader();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timedOut = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () =>
          reject(
            new HttpError(
              408,
              `the request body did not arrive within ${timeoutMs / 1000} s ` +
                `(${size} of ${declared ?? "?"} bytes came); send it at once`,
              { field: "body", headers: { connection: "close" } },
            ),
          ),
        timeoutMs,
      );
    });
    try {
      for (;;) {
        let r: ReadableStreamReadResult<Uint8Array>;
        try {
          r = await Promise.race([reader.read(), timedOut]);
        } catch (e) {
          if (e instanceof HttpError) throw e;
          throw new HttpError(
            400,
            `the request body broke off after ${size}${
              declared === undefined ? "" : ` of the ${declared} bytes its Content-Length promised`
            } bytes (${e instanceof Error ? e.message : String(e)})`,
            { field: "body" },
          );
        }
        if (r.done) break;
        size += r.value.length;
        if (size > maxBytes) throw tooLarge();
        chunks.push(r.value);
      }
    } catch (e) {
      await reader.cancel().catch(() => {});
      throw e;
    } finally {
      clearTimeout(timer);
    }
  }
  if (declared !== undefined && size !== declared && size > 0) {
    throw badRequest(
      "body",
      `the request body has ${size} bytes but its Content-Length says ${declared}`,
    );
  }
  if (size === 0) throw badRequest("body", "the request body is empty; send a JSON object");
  const bytes = new Uint8Array(size);
  let at = 0;
  for (const c of chunks) {
    bytes.set(c, at);
    at += c.length;
  }
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw badRequest("body", "the request body is not valid UTF-8");
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw badRequest("body", `the request body is not valid JSON: ${(e as Error).message}`);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw badRequest(
      "body",
      `the request body must be a JSON object, got ${describe(value)}`,
    );
  }
  return value as Record<string, unknown>;
}

/** A short description of a JSON value's type, for error messages. */
export function describe(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "an array";
  if (typeof v === "object") return "an object";
  if (typeof v === "string") return "a string";
  if (typeof v === "number") return `the number ${v}`;
  return `a ${typeof v}`;
}

/** Numeric range of a parameter. */
export interface Range {
  /** Smallest allowed. */
  min?: number;
  /** Largest allowed. */
  max?: number;
  /** Whether `min` itself is excluded. */
  minExclusive?: boolean;
}

function rangeText(r: Range): string {
  const lo = r.min === undefined ? "" : `${r.minExclusive ? ">" : "≥"} ${r.min}`;
  const hi = r.max === undefined ? "" : `≤ ${r.max}`;
  return [lo, hi].filter(Boolean).join(" and ");
}

/**
 * Typed access to one JSON object's fields. Unknown fields are refused at
 * construction; `null` counts as absent for every optional field (OpenAI
 * clients send `null` for "default").
 */
export class Fields {
  readonly #obj: Record<string, unknown>;
  readonly #prefix: string;

  /** Checks that `obj` has no field outside `allowed`; `prefix` names nested objects in errors. */
  constructor(obj: Record<string, unknown>, allowed: readonly string[], prefix = "") {
    this.#obj = obj;
    this.#prefix = prefix;
    for (const k of Object.keys(obj)) {
      if (!allowed.includes(k)) {
        throw badRequest(
          prefix + k,
          `unknown parameter '${prefix}${k}'; accepted: ${allowed.join(", ")}`,
        );
      }
    }
  }

  /** The full name of a field, for errors. */
  name(k: string): string {
    return this.#prefix + k;
  }

  /** The raw value (`undefined` when absent or null). */
  raw(k: string): unknown {
    const v = this.#obj[k];
    return v === null ? undefined : v;
  }

  /** Whether the field is present and not null. */
  has(k: string): boolean {
    return this.raw(k) !== undefined;
  }

  /** A finite number in range, or undefined. */
  number(k: string, r: Range = {}): number | undefined {
    const v = this.raw(k);
    if (v === undefined) return undefined;
    if (typeof v !== "number" || !Number.isFinite(v)) {
      throw badRequest(this.name(k), `'${this.name(k)}' must be a number, got ${describe(v)}`);
    }
    this.#range(k, v, r);
    return v;
  }

  /** An integer in range, or undefined. */
  integer(k: string, r: Range = {}): number | undefined {
    const v = this.raw(k);
    if (v === undefined) return undefined;
    if (typeof v !== "number" || !Number.isSafeInteger(v)) {
      throw badRequest(this.name(k), `'${this.name(k)}' must be an integer, got ${describe(v)}`);
    }
    this.#range(k, v, r);
    return v;
  }

  /** A string (at most `maxLength` UTF-16 units), or undefined. */
  string(k: string, maxLength = Infinity): string | undefined {
    const v = this.raw(k);
    if (v === undefined) return undefined;
    if (typeof v !== "string") {
      throw badRequest(this.name(k), `'${this.name(k)}' must be a string, got ${describe(v)}`);
    }
    if (v.length > maxLength) {
      throw badRequest(this.name(k), `'${this.name(k)}' is over ${maxLength} characters`);
    }
    return v;
  }

  /** A boolean, or undefined. */
  boolean(k: string): boolean | undefined {
    const v = this.raw(k);
    if (v === undefined) return undefined;
    if (typeof v !== "boolean") {
      throw badRequest(this.name(k), `'${this.name(k)}' must be true or false, got ${describe(v)}`);
    }
    return v;
  }

  /** A JSON object, or undefined. */
  object(k: string): Record<string, unknown> | undefined {
    const v = this.raw(k);
    if (v === undefined) return undefined;
    if (typeof v !== "object" || Array.isArray(v)) {
      throw badRequest(this.name(k), `'${this.name(k)}' must be an object, got ${describe(v)}`);
    }
    return v as Record<string, unknown>;
  }

  /** Refuses a field unless it is absent or equals one of `allowed` (unsupported features). */
  only(k: string, allowed: readonly unknown[], why: string): void {
    const v = this.raw(k);
    if (v === undefined || allowed.some((a) => a === v)) return;
    throw badRequest(this.name(k), `'${this.name(k)}' = ${JSON.stringify(v)} ${why}`);
  }

  /** `stop`: a string or an array of at most 16 strings, each at most 1000 characters. */
  stop(k: string): string[] | undefined {
    const v = this.raw(k);
    if (v === undefined) return undefined;
    const list = typeof v === "string" ? [v] : v;
    if (!Array.isArray(list) || list.some((s) => typeof s !== "string")) {
      throw badRequest(
        this.name(k),
        `'${this.name(k)}' must be a string or an array of strings, got ${describe(v)}`,
      );
    }
    if (list.length > 16) {
      throw badRequest(this.name(k), `'${this.name(k)}' has ${list.length} strings; at most 16`);
    }
    if (list.some((s: string) => s.length > 1000)) {
      throw badRequest(
        this.name(k),
        `each '${this.name(k)}' string must be at most 1000 characters`,
      );
    }
    return list as string[];
  }

  #range(k: string, v: number, r: Range): void {
    const low = r.min !== undefined && (r.minExclusive ? v <= r.min : v < r.min);
    const high = r.max !== undefined && v > r.max;
    if (low || high) {
      throw badRequest(this.name(k), `'${this.name(k)}' must be ${rangeText(r)}, got ${v}`);
    }
  }
}

/** What the validators need to know about the model. */
export interface ModelLimits {
  /** Context length (KV cache positions). */
  contextLength: number;
  /** Vocabulary size. */
  vocabSize: number;
  /** The most tokens the repetition penalties can look back over. */
  penaltyWindow: number;
}

/** The sampling fields every generation endpoint accepts. */
export const SAMPLING_FIELDS = [
  "temperature",
  "top_p",
  "top_k",
  "min_p",
  "seed",
  "repeat_penalty",
  "presence_penalty",
  "frequency_penalty",
  "penalty_last_n",
] as const;

/** Reads the sampling fields ({@linkcode SAMPLING_FIELDS}). */
export function readSampling(f: Fields, limits: ModelLimits): SamplingParams {
  const s: SamplingParams = {};
  const set = <K extends keyof SamplingParams>(k: K, v: SamplingParams[K] | undefined) => {
    if (v !== undefined) s[k] = v;
  };
  set("temperature", f.number("temperature", { min: 0, max: 2 }));
  set("topP", f.number("top_p", { min: 0, max: 1 }));
  const topK = f.integer("top_k", { min: 0, max: 2 ** 31 - 1 });
  set("topK", topK === undefined ? undefined : Math.min(topK, limits.vocabSize));
  set("minP", f.number("min_p", { min: 0, max: 1 }));
  set("repeatPenalty", f.number("repeat_penalty", { min: 0, minExclusive: true, max: 100 }));
  set("presencePenalty", f.number("presence_penalty", { min: -2, max: 2 }));
  set("frequencyPenalty", f.number("frequency_penalty", { min: -2, max: 2 }));
  set("penaltyLastN", f.integer("penalty_last_n", { min: -1, max: limits.penaltyWindow }));
  const seed = f.integer("seed");
  // the sampler's RNG takes a u32: any integer works, reduced modulo 2^32
  if (seed !== undefined) s.seed = Number(BigInt.asUintN(32, BigInt(seed)));
  return s;
}

/** `k` as an array of token ids of the vocabulary (possibly empty), or undefined when absent. */
export function readTokenIds(f: Fields, k: string, limits: ModelLimits): number[] | undefined {
  const v = f.raw(k);
  if (v === undefined) return undefined;
  const name = f.name(k);
  if (!Array.isArray(v)) {
    throw badRequest(name, `'${name}' must be an array of token ids, got ${describe(v)}`);
  }
  for (const id of v) {
    if (!Number.isInteger(id) || id < 0 || id >= limits.vocabSize) {
      throw badRequest(
        name,
        `'${name}' holds ${describe(id)}, not a token id (0…${limits.vocabSize - 1})`,
      );
    }
  }
  return v as number[];
}

/** `max_tokens` (or another name) as an integer in 1…context length, or `def`. */
export function readMaxTokens(f: Fields, k: string, limits: ModelLimits, def: number): number {
  return f.integer(k, { min: 1, max: limits.contextLength }) ?? Math.min(def, limits.contextLength);
}

/** Roles a chat message may have. */
export const CHAT_ROLES = ["system", "developer", "user", "assistant", "tool"] as const;

/**
 * Chat messages: a non-empty array of `{role, content, name?, tool_call_id?}`
 * with `content` a string or an array of `{type: "text", text}` parts.
 * `developer` becomes `system` (templates know the latter).
 */
export function readMessages(f: Fields, k: string): ChatMessage[] | undefined {
  const v = f.raw(k);
  if (v === undefined) return undefined;
  const name = f.name(k);
  if (!Array.isArray(v)) throw badRequest(name, `'${name}' must be an array, got ${describe(v)}`);
  if (v.length === 0) throw badRequest(name, `'${name}' must hold at least one message`);
  if (v.length > 4096) throw badRequest(name, `'${name}' holds ${v.length} messages; at most 4096`);
  return v.map((m, i) => {
    const at = `${name}[${i}]`;
    if (typeof m !== "object" || m === null || Array.isArray(m)) {
      throw badRequest(at, `'${at}' must be an object, got ${describe(m)}`);
    }
    const mf = new Fields(m as Record<string, unknown>, [
      "role",
      "content",
      "name",
      "tool_call_id",
      "tool_calls",
      "reasoning_content",
      "refusal",
    ], `${at}.`);
    const role = mf.string("role");
    if (role === undefined) throw badRequest(`${at}.role`, `'${at}.role' is required`);
    if (!(CHAT_ROLES as readonly string[]).includes(role)) {
      throw badRequest(
        `${at}.role`,
        `'${at}.role' must be one of ${CHAT_ROLES.join(", ")}, got ${JSON.stringify(role)}`,
      );
    }
    const calls = readToolCalls(mf.raw("tool_calls"), `${at}.tool_calls`, role);
    // an assistant turn that only calls tools has no content (null or absent)
    const rawContent = mf.raw("content");
    const content = calls && (rawContent === null || rawContent === undefined)
      ? ""
      : readContent(rawContent, `${at}.content`);
    const msg: ChatMessage = { role: role === "developer" ? "system" : role, content };
    if (calls) msg.tool_calls = calls;
    const reasoning = mf.string("reasoning_content");
    if (reasoning !== undefined) msg.reasoning_content = reasoning;
    mf.raw("refusal");
    const n = mf.string("name", 256);
    if (n !== undefined) msg.name = n;
    const t = mf.string("tool_call_id", 256);
    if (t !== undefined) msg.tool_call_id = t;
    return msg;
  });
}

/** An assistant message's `tool_calls`: `{id, type: "function", function: {name, arguments}}`. */
function readToolCalls(v: unknown, at: string, role: string): unknown[] | undefined {
  if (v === undefined || v === null) return undefined;
  if (role !== "assistant") throw badRequest(at, `'${at}' belongs on assistant messages only`);
  if (!Array.isArray(v)) throw badRequest(at, `'${at}' must be an array, got ${describe(v)}`);
  return v.map((c, j) => {
    const cat = `${at}[${j}]`;
    if (typeof c !== "object" || c === null || Array.isArray(c)) {
      throw badRequest(cat, `'${cat}' must be an object, got ${describe(c)}`);
    }
    const cf = new Fields(c as Record<string, unknown>, ["id", "type", "function"], `${cat}.`);
    const id = cf.string("id", 256);
    const type = cf.string("type") ?? "function";
    if (type !== "function") {
      throw badRequest(
        `${cat}.type`,
        `'${cat}.type' must be "function", got ${JSON.stringify(type)}`,
      );
    }
    const fn = cf.object("function");
    if (!fn) throw badRequest(`${cat}.function`, `'${cat}.function' is required`);
    const ff = new Fields(fn, ["name", "arguments"], `${cat}.function.`);
    const name = ff.string("name", 256);
    if (!name) throw badRequest(`${cat}.function.name`, `'${cat}.function.name' is required`);
    const args = ff.string("arguments") ?? "{}";
    return { ...(id === undefined ? {} : { id }), type, function: { name, arguments: args } };
  });
}

function readContent(v: unknown, at: string): string {
  if (typeof v === "string") return v;
  if (v === undefined) throw badRequest(at, `'${at}' is required`);
  if (!Array.isArray(v)) {
    throw badRequest(at, `'${at}' must be a string or an array of text parts, got ${describe(v)}`);
  }
  return v.map((p, j) => {
    const pat = `${at}[${j}]`;
    if (typeof p !== "object" || p === null || Array.isArray(p)) {
      throw badRequest(pat, `'${pat}' must be an object, got ${describe(p)}`);
    }
    const pf = new Fields(p as Record<string, unknown>, ["type", "text"], `${pat}.`);
    if (pf.string("type") !== "text") {
      throw badRequest(`${pat}.type`, `'${pat}.type' must be "text" (only text is supported)`);
    }
    const text = pf.string("text");
    if (text === undefined) throw badRequest(`${pat}.text`, `'${pat}.text' is required`);
    return text;
  }).join("");
}

/** A prompt: a string or an array of token ids (checked against the vocabulary). */
export function readPrompt(
  f: Fields,
  k: string,
  limits: ModelLimits,
): string | number[] | undefined {
  const v = f.raw(k);
  if (v === undefined) return undefined;
  const name = f.name(k);
  if (typeof v === "string") return v;
  if (Array.isArray(v) && v.every((x) => typeof x === "number")) {
    for (const id of v as number[]) {
      if (!Number.isInteger(id) || id < 0 || id >= limits.vocabSize) {
        throw badRequest(
          name,
          `'${name}' holds ${id}, not a token id (0…${limits.vocabSize - 1})`,
        );
      }
    }
    return v as number[];
  }
  throw badRequest(
    name,
    `'${name}' must be a string or an array of token ids, got ${describe(v)}`,
  );
}
