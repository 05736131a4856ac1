/**
 * Constrained decoding: a byte-level automaton for a small grammar (literal
 * text, sequences, alternatives and JSON values shaped by a JSON schema) and
 * the token mask it allows at each step.
 *
 * The automaton's state is a set of persistent stacks (linked lists of
 * frames), so trying a byte never copies a stack and alternatives
 * (`anyOf`, optional properties, `enum`) are followed side by side. A
 * token is allowed when all its bytes step the automaton without it
 * dying. The mask over the whole vocabulary walks the tokens in byte order
 * ({@linkcode TokenIndex}, built once per tokenizer), so a prefix shared by
 * many tokens is stepped once and a dead prefix rules out every token under
 * it. Markup tokens (control and user-defined: `<|im_end|>`, `<tool_call>`,
 * `<|channel|>`) are allowed only where a literal of the grammar spells
 * their text (inside a JSON string they would break the format's parser);
 * end-of-generation tokens only where the grammar may end.
 *
 * Every constraint also keeps a length budget: with `room` tokens left, a
 * token is allowed only if the shortest way to finish after it fits in the
 * tokens after it (every byte has a token of its own in byte-level and
 * byte-fallback vocabularies), so the output is complete within
 * `max_tokens` whenever the grammar's shortest output is.
 *
 * JSON schema support: `type` (one or a list), `properties` (in the schema's
 * order; optional ones may be left out), `required`,
 * `additionalProperties` (false when `properties` is given and it is not
 * set, true otherwise), `items`, `minItems`, `maxItems`, `minLength`,
 * `maxLength`, `enum`, `const`, `anyOf`, `oneOf` (read as `anyOf`), local
 * `$ref` (`#/$defs/…`, `#/definitions/…`, `#`), and the annotations
 * (`title`, `description`, `default`, `examples`, `$schema`, `$id`,
 * `strict`). Anything else (`pattern`, `minimum`, `format`, `allOf`, …) is
 * refused with a {@linkcode SchemaError} naming where, rather than
 * produce output the schema would reject. Output is compact JSON with at
 * most one space after `:` and `,`.
 *
 * @module
 */

import { TokenAttr, type Tokenizer } from "../tokenizer/tokenizer.ts";

/** A grammar node. Build them with {@linkcode lit}, {@linkcode seq}, {@linkcode alt}, {@linkcode jsonSchema}. */
export type GrammarNode =
  | { readonly k: "lit"; readonly bytes: Uint8Array }
  | { readonly k: "seq"; readonly items: readonly GrammarNode[] }
  | { readonly k: "alt"; readonly items: readonly GrammarNode[] }
  | { readonly k: "str"; readonly min: number; readonly max: number }
  | { readonly k: "num"; readonly integer: boolean }
  | { readonly k: "obj"; readonly o: ObjSpec; readonly i: number; readonly first: boolean }
  | { readonly k: "arr"; readonly a: ArrSpec; readonly n: number }
  | { readonly k: "ref"; readonly get: () => GrammarNode }
  | { readonly k: "until"; readonly marker: Uint8Array };

interface ObjSpec {
  readonly props: readonly { key: GrammarNode; value: GrammarNode; required: boolean }[];
  /** The value of any other key, or null when no other key is allowed. */
  readonly extra: GrammarNode | null;
}

interface ArrSpec {
  readonly item: GrammarNode;
  readonly min: number;
  readonly max: number;
}

const utf8 = new TextEncoder();

/** Literal text. */
export function lit(text: string): GrammarNode {
  return { k: "lit", bytes: utf8.encode(text) };
}

/** The nodes one after another. */
export function seq(...items: GrammarNode[]): GrammarNode {
  return { k: "seq", items };
}

/** Any text up to and including the first `marker` (a reasoning block and its close). */
export function until(marker: string): GrammarNode {
  return { k: "until", marker: utf8.encode(marker) };
}

/** Any one of the nodes. */
export function alt(...items: GrammarNode[]): GrammarNode {
  return items.length === 1 ? items[0]! : { k: "alt", items };
}

const EMPTY: GrammarNode = { k: "seq", items: [] };
const SPACE = alt(lit(" "), EMPTY);

/** A JSON schema the constraint cannot follow; `path` says where in the schema. */
export class SchemaError extends Error {
  /** JSON-pointer-like path of the offending keyword (`properties.age.minimum`). */
  readonly path: string;
  /** Builds the error. */
  constructor(path: string, message: string) {
    super(message);
    this.name = "SchemaError";
    this.path = path;
  }
}

const ANNOTATIONS = new Set([
  "title",
  "description",
  "default",
  "examples",
  "$schema",
  "$id",
  "$comment",
  "strict",
  "deprecated",
  "readOnly",
  "writeOnly",
  "$defs",
  "definitions",
]);

const KNOWN = new Set([
  "type",
  "properties",
  "required",
  "additionalProperties",
  "items",
  "minItems",
  "maxItems",
  "minLength",
  "maxLength",
  "enum",
  "const",
  "anyOf",
  "oneOf",
  "$ref",
]);

/** Any JSON value (`{}` or `true` as a schema). */
export function jsonValue(): GrammarNode {
  return jsonSchema({});
}

/**
 * The grammar of the JSON texts that `schema` accepts (see the module
 * notes for the keywords followed).
 *
 * @throws {SchemaError} for a keyword it cannot enforce, naming where.
 */
export function jsonSchema(schema: unknown): GrammarNode {
  const root = schema;
  const refs = new Map<string, GrammarNode>();
  const resolve = (ref: string, at: string): GrammarNode => {
    let node = refs.get(ref);
    if (node) return node;
    const m = /^#(?:\/(\$defs|definitions)\/(.+))?$/.exec(ref);
    if (!m) {
      throw new SchemaError(at, `only local references (#/$defs/NAME) are supported, got ${ref}`);
    }
    const target = m[1] === undefined
      ? root
      : (root as Record<string, Record<string, unknown>>)?.[m[1]]?.[decodePointer(m[2]!)];
    if (target === undefined) throw new SchemaError(at, `the reference ${ref} points at nothing`);
    let built: GrammarNode | undefined;
    node = {
      k: "ref",
      get: () => built ??= compile(target, m[1] === undefined ? "" : `${m[1]}.${m[2]}`),
    };
    refs.set(ref, node);
    node.get(); // refuses a bad target now, not in the middle of generating
    return node;
  };
  const compile = (s: unknown, at: string): GrammarNode => {
    if (s === true) return anyValue();
    if (typeof s !== "object" || s === null || Array.isArray(s)) {
      throw new SchemaError(at, `a schema must be an object or true, got ${JSON.stringify(s)}`);
    }
    const o = s as Record<string, unknown>;
    const here = (k: string) => at ? `${at}.${k}` : k;
    for (const k of Object.keys(o)) {
      if (!KNOWN.has(k) && !ANNOTATIONS.has(k)) {
        throw new SchemaError(
          here(k),
          `the JSON-schema keyword '${k}' is not supported by constrained decoding`,
        );
      }
    }
    if (o.$ref !== undefined) {
      if (typeof o.$ref !== "string") throw new SchemaError(here("$ref"), "$ref must be a string");
      return resolve(o.$ref, here("$ref"));
    }
    if (o.const !== undefined) return lit(JSON.stringify(o.const));
    if (o.enum !== undefined) {
      if (!Array.isArray(o.enum) || o.enum.length === 0) {
        throw new SchemaError(here("enum"), "enum must be a non-empty array");
      }
      return alt(...o.enum.map((v) => lit(JSON.stringify(v))));
    }
    for (const k of ["anyOf", "oneOf"] as const) {
      if (o[k] !== undefined) {
        const list = o[k];
        if (!Array.isArray(list) || list.length === 0) {
          throw new SchemaError(here(k), `${k} must be a non-empty array`);
        }
        const rest = Object.fromEntries(Object.entries(o).filter(([x]) => x !== k));
        if (Object.keys(rest).some((x) => KNOWN.has(x))) {
          throw new SchemaError(here(k), `${k} beside other constraints is not supported`);
        }
        return alt(...list.map((x, i) => compile(x, `${here(k)}.${i}`)));
      }
    }
    let types: string[];
    if (o.type === undefined) {
      types = o.properties !== undefined
        ? ["object"]
        : o.items !== undefined
        ? ["array"]
        : ["object", "array", "string", "number", "boolean", "null"];
    } else {
      types = Array.isArray(o.type) ? o.type as string[] : [o.type as string];
    }
    return alt(...types.map((t) => typed(t, o, here)));
  };
  const size = (
    o: Record<string, unknown>,
    k: string,
    here: (k: string) => string,
    def: number,
  ) => {
    const v = o[k];
    if (v === undefined) return def;
    if (!Number.isInteger(v) || (v as number) < 0) {
      throw new SchemaError(here(k), `${k} must be a non-negative integer`);
    }
    return v as number;
  };
  const typed = (
    t: string,
    o: Record<string, unknown>,
    here: (k: string) => string,
  ): GrammarNode => {
    switch (t) {
      case "string":
        return {
          k: "str",
          min: size(o, "minLength", here, 0),
          max: size(o, "maxLength", here, Infinity),
        };
      case "number":
      case "integer":
        return { k: "num", integer: t === "integer" };
      case "boolean":
        return alt(lit("true"), lit("false"));
      case "null":
        return lit("null");
      case "array": {
        const item = o.items === undefined ? anyValue() : compile(o.items, here("items"));
        const a = {
          item,
          min: size(o, "minItems", here, 0),
          max: size(o, "maxItems", here, Infinity),
        };
        return seq(lit("["), { k: "arr", a, n: 0 });
      }
      case "object": {
        const props = (o.properties ?? {}) as Record<string, unknown>;
        if (typeof props !== "object" || props === null || Array.isArray(props)) {
          throw new SchemaError(here("properties"), "properties must be an object");
        }
        const required = (o.required ?? []) as string[];
        if (!Array.isArray(required)) {
          throw new SchemaError(here("required"), "required must be an array of names");
        }
        for (const r of required) {
          if (!(r in props)) {
            throw new SchemaError(
              here("required"),
              `'${r}' is required but not among the properties; list it there`,
            );
          }
        }
        const ap = o.additionalProperties ?? (o.properties === undefined ? true : false);
        const extra = ap === false
          ? null
          : ap === true
          ? anyValue()
          : compile(ap, here("additionalProperties"));
        const spec: ObjSpec = {
          props: Object.entries(props).map(([name, ps]) => ({
            key: lit(JSON.stringify(name)),
            value: compile(ps, here(`properties.${name}`)),
            required: required.includes(name),
          })),
          extra,
        };
        return seq(lit("{"), { k: "obj", o: spec, i: 0, first: true });
      }
      default:
        throw new SchemaError(here("type"), `unknown type ${JSON.stringify(t)}`);
    }
  };
  return compile(schema, "");
}

function decodePointer(p: string): string {
  return p.replaceAll("~1", "/").replaceAll("~0", "~");
}

let anyNode: GrammarNode | undefined;

/** Any JSON value (objects with any keys, arrays of anything). */
function anyValue(): GrammarNode {
  if (anyNode) return anyNode;
  const value: GrammarNode = { k: "ref", get: () => anyNode! };
  anyNode = alt(
    seq(lit("{"), { k: "obj", o: { props: [], extra: value }, i: 0, first: true }),
    seq(lit("["), { k: "arr", a: { item: value, min: 0, max: Infinity }, n: 0 }),
    { k: "str", min: 0, max: Infinity },
    { k: "num", integer: false },
    lit("true"),
    lit("false"),
    lit("null"),
  );
  return anyNode;
}

// ---------------------------------------------------------------------------
// The automaton.

type Frame =
  | { readonly t: "lit"; readonly bytes: Uint8Array; readonly i: number }
  | {
    readonly t: "str";
    readonly min: number;
    readonly max: number;
    /** Characters so far. */
    readonly n: number;
    /** 1 after a backslash. */
    readonly esc: number;
    /** Hex digits of a \u escape still to come. */
    readonly hex: number;
    /** UTF-8 continuation bytes still to come. */
    readonly cont: number;
    /** The range of the next continuation byte (narrower after E0, ED, F0, F4: well-formed UTF-8 only). */
    readonly lo: number;
    readonly hi: number;
  }
  | { readonly t: "num"; readonly integer: boolean; readonly st: number; readonly digits: number }
  | { readonly t: "node"; readonly node: GrammarNode }
  /** Free text until `marker`; `m` bytes of it matched at the end so far. */
  | { readonly t: "until"; readonly marker: Uint8Array; readonly m: number };

interface Stack {
  readonly head: Frame;
  readonly tail: Stack | null;
}

/** The automaton's state: the stacks of every alternative still alive (null = finished). */
export type GrammarState = readonly (Stack | null)[];

const MAX_STACKS = 256;
const MAX_DIGITS = 16;
const MAX_EXP_DIGITS = 3;

const push = (head: Frame, tail: Stack | null): Stack => ({ head, tail });

/** Replaces unexpanded nodes at the top by what they start with (alternatives fan out). */
function expand(s: Stack | null, out: (Stack | null)[], depth = 0): void {
  if (depth > 200) throw new Error("grammar nests too deep (a reference that refers to itself?)");
  if (s === null || s.head.t !== "node") {
    out.push(s);
    return;
  }
  const node = s.head.node;
  const tail = s.tail;
  switch (node.k) {
    case "lit":
      if (node.bytes.length === 0) expand(tail, out, depth + 1);
      else out.push(push({ t: "lit", bytes: node.bytes, i: 0 }, tail));
      return;
    case "seq": {
      let t = tail;
      for (let i = node.items.length - 1; i >= 0; i--) {
        t = push({ t: "node", node: node.items[i]! }, t);
      }
      expand(t, out, depth + 1);
      return;
    }
    case "alt":
      for (const x of node.items) expand(push({ t: "node", node: x }, tail), out, depth + 1);
      return;
    case "ref":
      expand(push({ t: "node", node: node.get() }, tail), out, depth + 1);
      return;
    case "str":
      out.push(
        push(
          { t: "lit", bytes: QUOTE, i: 0 },
          push({
            t: "str",
            min: node.min,
            max: node.max,
            n: 0,
            esc: 0,
            hex: 0,
            cont: 0,
            lo: 0x80,
            hi: 0xbf,
          }, tail),
        ),
      );
      return;
    case "num":
      out.push(push({ t: "num", integer: node.integer, st: 0, digits: 0 }, tail));
      return;
    case "until":
      out.push(push({ t: "until", marker: node.marker, m: 0 }, tail));
      return;
    case "obj":
      for (const x of objectNext(node.o, node.i, node.first)) {
        expand(push({ t: "node", node: x }, tail), out, depth + 1);
      }
      return;
    case "arr": {
      const { a, n } = node;
      if (n >= a.min) out.push(push({ t: "lit", bytes: RBRACKET, i: 0 }, tail));
      if (n < a.max) {
        const more: GrammarNode = { k: "arr", a, n: n + 1 };
        expand(
          push(
            { t: "node", node: n === 0 ? seq(a.item, more) : seq(COMMA, SPACE, a.item, more) },
            tail,
          ),
          out,
          depth + 1,
        );
      }
      return;
    }
  }
}

const QUOTE = utf8.encode('"');
const RBRACKET = utf8.encode("]");
const COMMA = lit(",");
const COLON = lit(":");
const RBRACE = lit("}");

/** What may come after the first `i` properties of an object (or an extra key). */
function objectNext(o: ObjSpec, i: number, first: boolean): GrammarNode[] {
  const sep = first ? EMPTY : seq(COMMA, SPACE);
  const out: GrammarNode[] = [];
  let j = i;
  for (; j < o.props.length; j++) {
    const p = o.props[j]!;
    out.push(seq(sep, p.key, COLON, SPACE, p.value, { k: "obj", o, i: j + 1, first: false }));
    if (p.required) break;
  }
  if (j >= o.props.length) {
    out.push(RBRACE);
    if (o.extra) {
      out.push(
        seq(sep, { k: "str", min: 0, max: Infinity }, COLON, SPACE, o.extra, {
          k: "obj",
          o,
          i: o.props.length,
          first: false,
        }),
      );
    }
  }
  return out;
}

function canEnd(f: Frame): boolean {
  return f.t === "num" && (f.st === 2 || f.st === 3 || f.st === 5 || f.st === 8);
}

function isDigit(b: number): boolean {
  return b >= 0x30 && b <= 0x39;
}

function isHex(b: number): boolean {
  return isDigit(b) || (b >= 0x41 && b <= 0x46) || (b >= 0x61 && b <= 0x66);
}

/** The stacks after byte `b` (none if `b` cannot come next). */
function stepStack(s: Stack | null, b: number, literalOnly: boolean, out: (Stack | null)[]): void {
  if (s === null) return;
  const f = s.head;
  const tail = s.tail;
  switch (f.t) {
    case "lit":
      if (f.bytes[f.i] === b) {
        if (f.i + 1 === f.bytes.length) expand(tail, out);
        else out.push(push({ t: "lit", bytes: f.bytes, i: f.i + 1 }, tail));
      }
      return;
    case "str": {
      if (literalOnly) return;
      let next: Frame | null = null;
      if (f.cont > 0) {
        if (b >= f.lo && b <= f.hi) next = { ...f, cont: f.cont - 1, lo: 0x80, hi: 0xbf };
      } else if (f.hex > 0) {
        if (isHex(b)) next = { ...f, hex: f.hex - 1 };
      } else if (f.esc) {
        if (b === 0x75) next = { ...f, esc: 0, hex: 4 };
        else if ('"\\/bfnrt'.includes(String.fromCharCode(b))) next = { ...f, esc: 0 };
      } else if (b === 0x22) {
        if (f.n >= f.min) expand(tail, out);
        return;
      } else if (f.n < f.max) {
        if (b === 0x5c) next = { ...f, n: f.n + 1, esc: 1 };
        else if (b >= 0x20 && b < 0x80) next = { ...f, n: f.n + 1 };
        else if (b >= 0xc2 && b <= 0xdf) next = { ...f, n: f.n + 1, cont: 1 };
        else if (b >= 0xe0 && b <= 0xef) {
          const [lo, hi] = b === 0xe0 ? [0xa0, 0xbf] : b === 0xed ? [0x80, 0x9f] : [0x80, 0xbf];
          next = { ...f, n: f.n + 1, cont: 2, lo, hi };
        } else if (b >= 0xf0 && b <= 0xf4) {
          const [lo, hi] = b === 0xf0 ? [0x90, 0xbf] : b === 0xf4 ? [0x80, 0x8f] : [0x80, 0xbf];
          next = { ...f, n: f.n + 1, cont: 3, lo, hi };
        }
      }
      if (next) out.push(push(next, tail));
      return;
    }
    case "num": {
      if (literalOnly) return;
      const st = numberStep(f, b);
      if (st >= 0) {
        const digits = st === f.st && isDigit(b) ? f.digits + 1 : isDigit(b) ? 1 : 0;
        out.push(push({ t: "num", integer: f.integer, st, digits }, tail));
      }
      if (canEnd(f)) stepStack(tail, b, literalOnly, out);
      return;
    }
    case "until": {
      const m = untilMatch(f.marker, f.m, b);
      // markup tokens only as (part of) the marker itself
      if (literalOnly && m !== f.m + 1) return;
      if (m === f.marker.length) expand(tail, out);
      else out.push(push({ t: "until", marker: f.marker, m }, tail));
      return;
    }
    case "node": {
      const ex: (Stack | null)[] = [];
      expand(s, ex);
      for (const x of ex) stepStack(x, b, literalOnly, out);
      return;
    }
  }
}

/**
 * The longest prefix of `marker` that the text ends with after byte `b`,
 * given that it ended with `m` bytes of it before.
 */
function untilMatch(marker: Uint8Array, m: number, b: number): number {
  for (let k = Math.min(m + 1, marker.length); k > 0; k--) {
    // is marker[0..k) a suffix of marker[0..m) + b?
    if (marker[k - 1] !== b) continue;
    let ok = true;
    for (let i = 0; i < k - 1 && ok; i++) ok = marker[i] === marker[m - (k - 1) + i];
    if (ok) return k;
  }
  return 0;
}

/** The number lexer: the next state, or −1. States 2, 3, 5, 8 may end. */
function numberStep(f: { integer: boolean; st: number; digits: number }, b: number): number {
  const d = isDigit(b);
  switch (f.st) {
    case 0:
      return b === 0x2d ? 1 : b === 0x30 ? 2 : d ? 3 : -1;
    case 1:
      return b === 0x30 ? 2 : d ? 3 : -1;
    case 2:
    case 3:
    case 5:
      if (d && f.st !== 2 && f.digits < MAX_DIGITS) return f.st;
      if (f.integer) return -1;
      if (b === 0x2e && f.st !== 5) return 4;
      return b === 0x65 || b === 0x45 ? 6 : -1;
    case 4:
      return d ? 5 : -1;
    case 6:
      return b === 0x2b || b === 0x2d ? 7 : d ? 8 : -1;
    case 7:
      return d ? 8 : -1;
    case 8:
      return d && f.digits < MAX_EXP_DIGITS ? 8 : -1;
  }
  return -1;
}

/** The state after `bytes` (empty: they cannot come next). */
export function stepState(
  state: GrammarState,
  bytes: Uint8Array,
  literalOnly = false,
): GrammarState {
  let cur = state;
  for (const b of bytes) {
    const out: (Stack | null)[] = [];
    for (const s of cur) {
      stepStack(s, b, literalOnly, out);
      if (out.length >= MAX_STACKS) break;
    }
    if (out.length === 0) return out;
    cur = out;
  }
  return cur;
}

/** Whether the grammar may end in this state. */
export function canFinish(state: GrammarState): boolean {
  return state.some(stackDone);
}

function stackDone(s: Stack | null): boolean {
  for (let x = s; x !== null; x = x.tail) if (!canEnd(x.head)) return false;
  return true;
}

const minMemo = new WeakMap<object, number>();

/** The fewest bytes a node can match. */
function minLength(n: GrammarNode, depth = 0): number {
  const memo = minMemo.get(n);
  if (memo !== undefined) return memo;
  if (depth > 100) return 0; // a reference cycle: the recursion's own branch is never the shortest
  let v: number;
  switch (n.k) {
    case "lit":
      v = n.bytes.length;
      break;
    case "seq":
      v = n.items.reduce((a, x) => a + minLength(x, depth + 1), 0);
      break;
    case "alt":
      v = Math.min(...n.items.map((x) => minLength(x, depth + 1)));
      break;
    case "ref":
      v = minLength(n.get(), depth + 1);
      break;
    case "str":
      v = 2 + n.min;
      break;
    case "num":
      v = 1;
      break;
    case "until":
      v = n.marker.length;
      break;
    case "obj": {
      v = 1;
      let first = n.first;
      for (let j = n.i; j < n.o.props.length; j++) {
        const p = n.o.props[j]!;
        if (!p.required) continue;
        v += (first ? 0 : 1) + minLength(p.key, depth + 1) + 1 + minLength(p.value, depth + 1);
        first = false;
      }
      break;
    }
    case "arr": {
      const k = Math.max(0, n.a.min - n.n);
      v = 1 + k * minLength(n.a.item, depth + 1) + Math.max(0, k - (n.n === 0 ? 1 : 0)) +
        (n.n > 0 && k > 0 ? 1 : 0);
      break;
    }
  }
  if (depth === 0 || n.k !== "ref") minMemo.set(n, v);
  return v;
}

function frameMin(f: Frame): number {
  switch (f.t) {
    case "lit":
      return f.bytes.length - f.i;
    case "str":
      return f.cont + f.hex + f.esc + Math.max(0, f.min - f.n) + 1;
    case "num":
      return canEnd(f) ? 0 : 1;
    case "until":
      return f.marker.length - f.m;
    case "node":
      return minLength(f.node);
  }
}

/** The fewest bytes that finish the grammar from this state (Infinity when dead). */
export function minToFinish(state: GrammarState): number {
  let best = Infinity;
  for (const s of state) {
    let v = 0;
    for (let x = s; x !== null && v < best; x = x.tail) v += frameMin(x.head);
    if (v < best) best = v;
  }
  return best;
}

/** The start state of a grammar. */
export function startState(g: GrammarNode): GrammarState {
  const out: (Stack | null)[] = [];
  expand(push({ t: "node", node: g }, null), out);
  return out;
}

// ---------------------------------------------------------------------------
// Tokens.

/** A vocabulary's token bytes in byte order, for masks (build once per tokenizer: {@linkcode tokenIndex}). */
export class TokenIndex {
  /** Ordinary token ids, sorted by their bytes. */
  readonly order: Int32Array;
  /** Bytes shared with the previous token in `order`. */
  readonly lcp: Int32Array;
  /** Markup tokens (control and user-defined) that do not end generation, with their text's bytes. */
  readonly control: readonly { id: number; bytes: Uint8Array }[];
  /** End-of-generation tokens. */
  readonly eog: readonly number[];
  /** Bytes of each token (empty for those never allowed by bytes). */
  readonly bytes: readonly Uint8Array[];
  /** Vocabulary size. */
  readonly size: number;
  /**
   * 1 for tokens of printable ASCII other than `"` and `\`: text that any
   * free JSON string accepts as it is (the mask's shortcut inside strings).
   */
  readonly plain: Uint8Array;

  /** Indexes `tokenizer`'s vocabulary. */
  constructor(tokenizer: Tokenizer) {
    this.size = tokenizer.vocabSize;
    const ids: number[] = [];
    const bytes: Uint8Array[] = [];
    const control: { id: number; bytes: Uint8Array }[] = [];
    for (let id = 0; id < tokenizer.vocabSize; id++) {
      const b = tokenizer.tokenToBytes(id);
      bytes.push(b);
      if (tokenizer.isEog(id) || b.length === 0) continue;
      // markup (control and user-defined tokens: <|im_end|>, <tool_call>, gpt-oss's
      // <|channel|>) only where a literal spells it: inside JSON it would break the format
      if (tokenizer.tokenAttr(id) & (TokenAttr.control | TokenAttr.userDefined)) {
        control.push({ id, bytes: b });
      } else ids.push(id);
    }
    // bytes as Latin-1 strings sort in byte order with the engine's own comparison
    const keyed = ids.map((id) => ({ id, key: latin1(bytes[id]!) }));
    keyed.sort((a, b) => a.key < b.key ? -1 : a.key > b.key ? 1 : 0);
    this.order = Int32Array.from(keyed, (x) => x.id);
    ids.length = 0;
    for (const x of keyed) ids.push(x.id);
    this.lcp = new Int32Array(ids.length);
    for (let k = 1; k < ids.length; k++) {
      const a = bytes[ids[k - 1]!]!, b = bytes[ids[k]!]!;
      let l = 0;
      while (l < a.length && l < b.length && a[l] === b[l]) l++;
      this.lcp[k] = l;
    }
    this.control = control;
    this.eog = [...tokenizer.eogIds];
    this.bytes = bytes;
    this.plain = new Uint8Array(this.size);
    for (const id of ids) {
      const b = bytes[id]!;
      this.plain[id] = b.every((c) => c >= 0x20 && c < 0x7f && c !== 0x22 && c !== 0x5c) ? 1 : 0;
    }
  }
}

/** Whether every alternative is inside a JSON string with no length limit, between characters. */
function freeString(state: GrammarState): boolean {
  return state.length > 0 && state.every((s) => {
    const f = s?.head;
    return f?.t === "str" && f.max === Infinity && f.cont === 0 && f.hex === 0 && f.esc === 0;
  });
}

function latin1(b: Uint8Array): string {
  return String.fromCharCode(...b);
}

const indexes = new WeakMap<Tokenizer, TokenIndex>();

/** The {@linkcode TokenIndex} of a tokenizer, built on first use. */
export function tokenIndex(tokenizer: Tokenizer): TokenIndex {
  let x = indexes.get(tokenizer);
  if (!x) {
    x = new TokenIndex(tokenizer);
    indexes.set(tokenizer, x);
  }
  return x;
}

/**
 * A grammar applied token by token: which tokens may come next
 * ({@linkcode Constraint.allows}, {@linkcode Constraint.mask}) and the
 * state after each accepted one.
 */
export class Constraint {
  #state: GrammarState;
  readonly #index: TokenIndex;
  readonly #eog: ReadonlySet<number>;
  readonly #control: ReadonlyMap<number, Uint8Array>;

  /** Starts `grammar` over `tokenizer`'s vocabulary. */
  constructor(grammar: GrammarNode, tokenizer: Tokenizer) {
    this.#state = startState(grammar);
    this.#index = tokenIndex(tokenizer);
    this.#eog = new Set(this.#index.eog);
    this.#control = new Map(this.#index.control.map((c) => [c.id, c.bytes]));
  }

  /** The current state. */
  get state(): GrammarState {
    return this.#state;
  }

  /** Whether the grammar is complete and nothing more may follow (only end of generation). */
  get finished(): boolean {
    return this.#state.every((s) => s === null);
  }

  /** Whether the grammar may end here. */
  get canEnd(): boolean {
    return canFinish(this.#state);
  }

  #after(id: number): GrammarState {
    const c = this.#control.get(id);
    if (c) return stepState(this.#state, c, true);
    const b = this.#index.bytes[id];
    if (b === undefined || b.length === 0) return [];
    return stepState(this.#state, b);
  }

  /**
   * Whether token `id` may come next with `room` tokens left for the rest
   * of the output (this one included; Infinity = no limit).
   */
  allows(id: number, room = Infinity): boolean {
    if (this.#eog.has(id)) return this.canEnd;
    const next = this.#after(id);
    return next.length > 0 && minToFinish(next) <= room - 1;
  }

  /**
   * The tokens that may come next (1 = allowed), with `room` tokens left
   * (this one included). If the budget rules out every token, the mask
   * without it; if still none, the end-of-generation tokens.
   */
  mask(room = Infinity): Uint8Array {
    const x = this.#index;
    const out = new Uint8Array(x.size);
    const fill = (budget: number): boolean => {
      let any = false;
      // inside a string of any length, plain text is allowed as it is: only the
      // other tokens (quotes, escapes, UTF-8 pieces) are stepped through
      const shortcut = freeString(this.#state) && minToFinish(this.#state) <= budget - 1;
      const levels: GrammarState[] = [this.#state];
      let have = 0; // levels[0..have] hold the states after the previous token's first bytes
      let dead = Infinity; // a level whose states are empty
      for (let k = 0; k < x.order.length; k++) {
        const id = x.order[k]!;
        const b = x.bytes[id]!;
        have = Math.min(have, x.lcp[k]!);
        if (dead > have) dead = Infinity;
        if (shortcut && x.plain[id] === 1) {
          out[id] = 1;
          any = true;
          continue;
        }
        if (dead <= have) continue;
        for (; have < b.length; have++) {
          const next = stepState(levels[have]!, b.subarray(have, have + 1));
          levels[have + 1] = next;
          if (next.length === 0) {
            dead = ++have;
            break;
          }
        }
        if (dead <= b.length) continue;
        if (minToFinish(levels[b.length]!) <= budget - 1) {
          out[id] = 1;
          any = true;
        }
      }
      for (const c of x.control) {
        const next = stepState(this.#state, c.bytes, true);
        if (next.length > 0 && minToFinish(next) <= budget - 1) {
          out[c.id] = 1;
          any = true;
        }
      }
      if (this.canEnd) {
        for (const e of x.eog) out[e] = 1;
        any = true;
      }
      return any;
    };
    if (!fill(room) && !fill(Infinity)) { for (const e of x.eog) out[e] = 1; }
    return out;
  }

  /**
   * Moves past token `id`.
   *
   * @throws if the grammar does not allow it here.
   */
  accept(id: number): void {
    if (this.#eog.has(id)) {
      if (!this.canEnd) {
        throw new Error(`token ${id} ends generation before the grammar is complete`);
      }
      this.#state = [null];
      return;
    }
    const next = this.#after(id);
    if (next.length === 0) throw new Error(`token ${id} is not allowed by the grammar here`);
    this.#state = next;
  }
}
