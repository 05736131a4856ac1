/**
 * JSON schemas as grammars (`./grammar.ts`) for constrained decoding.
 *
 * Supported: `type` (one or a list), `properties` (in the schema's
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

import { alt, type GrammarNode, lit, type ObjSpec, seq } from "./grammar.ts";

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
