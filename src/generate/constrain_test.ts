import assert from "node:assert/strict";
import { Ajv } from "../../dev/ref/packages.ts";
import { GgufMetadata } from "../gguf/reader.ts";
import { builtinTokenizer } from "../model/vocab.ts";
import { Tokenizer } from "../tokenizer/tokenizer.ts";
import { Rng } from "../util/rng.ts";
import {
  alt,
  canFinish,
  Constraint,
  type GrammarNode,
  jsonSchema,
  lit,
  minToFinish,
  SchemaError,
  seq,
  startState,
  stepState,
} from "./constrain.ts";

const SCHEMAS: Record<string, unknown> = {
  weather: {
    type: "object",
    properties: {
      location: { type: "string", maxLength: 12 },
      unit: { type: "string", enum: ["celsius", "fahrenheit"] },
      days: { type: "integer" },
    },
    required: ["location", "unit"],
    additionalProperties: false,
  },
  nested: {
    type: "object",
    properties: {
      steps: {
        type: "array",
        items: {
          type: "object",
          properties: { explanation: { type: "string" }, output: { type: "number" } },
          required: ["explanation", "output"],
        },
        minItems: 1,
        maxItems: 3,
      },
      final_answer: { anyOf: [{ type: "string" }, { type: "null" }] },
      ok: { type: "boolean" },
    },
    required: ["steps", "final_answer", "ok"],
  },
  refs: {
    $defs: { pair: { type: "array", items: { $ref: "#/$defs/leaf" }, minItems: 2, maxItems: 2 } },
    type: "object",
    properties: { a: { $ref: "#/$defs/pair" }, b: { const: { x: [1, "y"] } } },
    required: ["a", "b"],
  },
  any: { type: "object" },
};
(SCHEMAS.refs as { $defs: Record<string, unknown> }).$defs.leaf = {
  type: ["integer", "string"],
  maxLength: 3,
};

const bytesOf = (b: number) => Uint8Array.of(b);

/** A random text the grammar accepts, of at most `room` bytes, made byte by byte. */
function randomWalk(g: GrammarNode, rng: Rng, room: number): string {
  let state = startState(g);
  const out: number[] = [];
  for (let left = room; left > 0; left--) {
    if (canFinish(state) && rng.next() < 0.1) break;
    const choices: number[] = [];
    for (let b = 0; b < 256; b++) {
      const next = stepState(state, bytesOf(b));
      if (next.length > 0 && minToFinish(next) <= left - 1) choices.push(b);
    }
    if (choices.length === 0) break;
    // favour structure over long strings so that walks finish
    const printable = choices.filter((b) => b < 0x80);
    const pool = printable.length > 0 && rng.next() < 0.9 ? printable : choices;
    const b = pool[Math.floor(rng.next() * pool.length)]!;
    state = stepState(state, bytesOf(b));
    out.push(b);
  }
  assert.ok(
    canFinish(state),
    `walk ended unfinished: ${new TextDecoder().decode(Uint8Array.from(out))}`,
  );
  return new TextDecoder().decode(Uint8Array.from(out));
}

Deno.test("constrain: random texts of each schema's grammar parse and validate (ajv)", () => {
  const ajv = new Ajv({ strict: false });
  const rng = new Rng(7);
  for (const [name, schema] of Object.entries(SCHEMAS)) {
    const g = jsonSchema(schema);
    const validate = ajv.compile(schema as object);
    for (let i = 0; i < 60; i++) {
      const room = minToFinish(startState(g)) + Math.floor(rng.next() * 150);
      const text = randomWalk(g, rng, room);
      assert.ok(new TextEncoder().encode(text).length <= room, `${name}: over budget`);
      const value = JSON.parse(text);
      assert.ok(validate(value), `${name}: ${text}: ${JSON.stringify(validate.errors)}`);
    }
  }
});

Deno.test("constrain: texts the schema rejects are refused part way", () => {
  const g = jsonSchema(SCHEMAS.weather);
  const dead = (text: string) =>
    stepState(startState(g), new TextEncoder().encode(text)).length === 0;
  assert.ok(!dead('{"location": "Paris", "unit": "celsius"}'));
  assert.ok(dead('{"unit": "celsius"'), "a required property skipped");
  assert.ok(dead('{"location": "Paris", "unit": "kelvin"'), "not in the enum");
  assert.ok(dead('{"location": "Paris", "unit": "celsius", "x"'), "an extra property");
  assert.ok(dead('{"location": "a very long place name"'), "over maxLength");
  assert.ok(dead('{"location": "P", "unit": "celsius", "days": 1.5'), "not an integer");
  assert.ok(!canFinish(stepState(startState(g), new TextEncoder().encode('{"location": "P"'))));
  // literal text around JSON, and alternatives
  const call = alt(
    seq(lit("<tool_call>\n"), jsonSchema({ const: "a" }), lit("\n</tool_call>")),
    lit("none"),
  );
  assert.ok(
    canFinish(
      stepState(startState(call), new TextEncoder().encode('<tool_call>\n"a"\n</tool_call>')),
    ),
  );
  assert.ok(canFinish(stepState(startState(call), new TextEncoder().encode("none"))));
});

Deno.test("constrain: keywords it cannot enforce are refused, naming where", () => {
  assert.throws(
    () =>
      jsonSchema({ type: "object", properties: { zip: { type: "string", pattern: "^[0-9]+$" } } }),
    (e: unknown) => e instanceof SchemaError && e.path === "properties.zip.pattern",
  );
  assert.throws(
    () => jsonSchema({ type: "object", properties: { a: { type: "integer" } }, required: ["b"] }),
    (e: unknown) => e instanceof SchemaError && e.path === "required",
  );
  assert.throws(
    () => jsonSchema({ $ref: "#/$defs/missing" }),
    (e: unknown) => e instanceof SchemaError && /points at nothing/.test(e.message),
  );
});

function builtin(): Tokenizer {
  const v = builtinTokenizer();
  return Tokenizer.fromGguf(new GgufMetadata(new Map(v.entries), "<builtin>"));
}

Deno.test("constrain: the token mask is each token's own check, and forced decoding validates", () => {
  const tok = builtin();
  const schema = SCHEMAS.nested;
  const validate = new Ajv({ strict: false }).compile(schema as object);
  const rng = new Rng(3);
  for (let run = 0; run < 4; run++) {
    const c = new Constraint(jsonSchema(schema), tok);
    const ids: number[] = [];
    const maxTokens = 80;
    for (let left = maxTokens; left > 0; left--) {
      const mask = c.mask(left);
      if (ids.length < 6) {
        for (let id = 0; id < tok.vocabSize; id++) {
          assert.equal(mask[id] === 1, c.allows(id, left), `token ${id} at step ${ids.length}`);
        }
      }
      // "random logits": a random allowed token, as an untrained model would pick
      const allowed = [...mask.keys()].filter((id) => mask[id] === 1);
      assert.ok(allowed.length > 0);
      const id = allowed[Math.floor(rng.next() * allowed.length)]!;
      c.accept(id);
      if (tok.isEog(id)) break;
      ids.push(id);
    }
    const text = tok.decode(ids);
    assert.ok(validate(JSON.parse(text)), `${text}: ${JSON.stringify(validate.errors)}`);
  }
});

Deno.test("constrain: inside a string the mask (with its plain-text shortcut) is each token's own check", () => {
  const tok = builtin();
  const c = new Constraint(jsonSchema(SCHEMAS.any), tok);
  for (const id of tok.encode('{"a": "x', { addSpecial: false })) c.accept(id);
  for (const room of [Infinity, 40, 3, 2]) {
    const mask = c.mask(room);
    let allowed = 0;
    for (let id = 0; id < tok.vocabSize; id++) {
      assert.equal(mask[id] === 1, c.allows(id, room), `token ${id} (room ${room})`);
      allowed += mask[id]!;
    }
    assert.ok(allowed > (room > 3 ? 100 : 0), `room ${room}: ${allowed} allowed`);
  }
});
