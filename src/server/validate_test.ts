import assert from "node:assert/strict";
import { Fields, HttpError, readJsonObject, readMessages, readSampling } from "./validate.ts";

const limits = { contextLength: 512, vocabSize: 1000, penaltyWindow: 64 };

function req(body: BodyInit, headers: Record<string, string> = {}): Request {
  return new Request("http://x/", { method: "POST", body, headers });
}

async function status(p: Promise<unknown>): Promise<[number, string | undefined]> {
  try {
    await p;
    return [200, undefined];
  } catch (e) {
    assert.ok(e instanceof HttpError, String(e));
    return [e.status, e.field];
  }
}

Deno.test("validate: body size, UTF-8, JSON, object", async () => {
  assert.deepEqual(await readJsonObject(req('{"a":1}')), { a: 1 });
  assert.deepEqual(await status(readJsonObject(req("x".repeat(11)), 10)), [413, "body"]);
  assert.deepEqual(
    await status(readJsonObject(req("{}", { "content-length": "99999999" }), 10)),
    [413, "body"],
  );
  assert.deepEqual(await status(readJsonObject(req(new Uint8Array([0x7b, 0xff, 0x7d])))), [
    400,
    "body",
  ]);
  assert.deepEqual(await status(readJsonObject(req("{"))), [400, "body"]);
  assert.deepEqual(await status(readJsonObject(req("[1]"))), [400, "body"]);
  assert.deepEqual(await status(readJsonObject(req(""))), [400, "body"]);
});

Deno.test("validate: fields by type and range; null is absent; unknown refused", () => {
  const f = new Fields({ a: 1, b: null, s: "x", t: 1.5 }, ["a", "b", "s", "t"]);
  assert.equal(f.integer("a", { min: 1 }), 1);
  assert.equal(f.integer("b"), undefined);
  assert.throws(
    () => f.integer("t"),
    (e: HttpError) => e.field === "t" && /integer/.test(e.message),
  );
  assert.throws(() => f.number("s"), (e: HttpError) => e.field === "s");
  assert.throws(() => f.integer("a", { min: 2 }), /must be ≥ 2, got 1/);
  assert.throws(() => f.number("t", { min: 1.5, minExclusive: true }), /must be > 1.5/);
  assert.throws(() => new Fields({ x: 1 }, ["a"]), (e: HttpError) => e.field === "x");
  const s = readSampling(
    new Fields({ temperature: 0, top_k: 5000, seed: -1 }, ["temperature", "top_k", "seed"]),
    limits,
  );
  assert.deepEqual(s, { temperature: 0, topK: 1000, seed: 2 ** 32 - 1 });
});

Deno.test("validate: chat messages", () => {
  const read = (m: unknown) => readMessages(new Fields({ messages: m }, ["messages"]), "messages");
  assert.deepEqual(
    read([
      { role: "developer", content: "be brief" },
      { role: "user", content: [{ type: "text", text: "a" }, { type: "text", text: "b" }] },
    ]),
    [{ role: "system", content: "be brief" }, { role: "user", content: "ab" }],
  );
  const field = (m: unknown) => {
    try {
      read(m);
      return "ok";
    } catch (e) {
      return (e as HttpError).field;
    }
  };
  assert.equal(field([]), "messages");
  assert.equal(field([{ role: "wizard", content: "x" }]), "messages[0].role");
  assert.equal(field([{ role: "user" }]), "messages[0].content");
  assert.equal(field([{ role: "user", content: "x", extra: 1 }]), "messages[0].extra");
  assert.equal(
    field([{ role: "user", content: [{ type: "image_url" }] }]),
    "messages[0].content[0].type",
  );
});
