/**
 * The grammar of constrained decoding and its byte-level automaton: literal
 * text, sequences, alternatives, free text up to a marker, and JSON values
 * (strings, numbers, objects with known properties, arrays; built from a
 * JSON schema by `./json_schema.ts`).
 *
 * The automaton's state is a set of persistent stacks (linked lists of
 * frames), so trying a byte never copies a stack and alternatives
 * (`anyOf`, optional properties, `enum`) are followed side by side. It also
 * knows the fewest bytes that finish from a state ({@linkcode minToFinish}),
 * for the length budget of `./constrain.ts`. Strings are well-formed UTF-8;
 * numbers have at most 16 digits per part.
 *
 * @module
 */

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

export interface ObjSpec {
  readonly props: readonly { key: GrammarNode; value: GrammarNode; required: boolean }[];
  /** The value of any other key, or null when no other key is allowed. */
  readonly extra: GrammarNode | null;
}

export interface ArrSpec {
  readonly item: GrammarNode;
  readonly min: number;
  readonly max: number;
}

/** UTF-8 encoder for literals. */
export const utf8: TextEncoder = new TextEncoder();

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

/** Whether every alternative is inside a JSON string with no length limit, between characters. */
export function freeString(state: GrammarState): boolean {
  return state.length > 0 && state.every((s) => {
    const f = s?.head;
    return f?.t === "str" && f.max === Infinity && f.cont === 0 && f.hex === 0 && f.esc === 0;
  });
}
