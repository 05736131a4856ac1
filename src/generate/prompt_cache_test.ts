import assert from "node:assert/strict";
import { PromptCache } from "./prompt_cache.ts";
import type { ContextSnapshot } from "../model/model.ts";

/** A snapshot of `n` positions of `bytesPerToken` each (the rows' content does not matter here). */
function snap(n: number, bytesPerToken = 100): ContextSnapshot {
  return { nTokens: n, bytes: n * bytesPerToken, rows: [new ArrayBuffer(n * bytesPerToken)] };
}

const seq = (start: number, n: number) => Array.from({ length: n }, (_, i) => start + i);

Deno.test("prompt cache: the longest shared prefix wins, never the prompt's last token", () => {
  const c = new PromptCache(1e6);
  const a = [1, ...seq(100, 20)];
  const b = [1, ...seq(200, 30)];
  c.add(a, snap(a.length));
  c.add(b, snap(b.length));
  assert.equal(c.size, 2);
  const hitA = c.lookup([...a, 7, 8]);
  assert.equal(hitA?.n, a.length);
  assert.deepEqual(hitA?.tokens, a);
  assert.equal(c.lookup([...b.slice(0, 10), 9])?.n, 10);
  // the whole saved sequence as the prompt: its last token is computed again for its logits
  assert.equal(c.lookup(a)?.n, a.length - 1);
  // only the first token shared with both: still a hit of one token
  assert.equal(c.lookup([1, 5, 6])?.n, 1);
  assert.equal(c.lookup([2, 3, 4]), undefined);
});

Deno.test("prompt cache: the byte bound evicts the least recently used; too large is not kept", () => {
  const c = new PromptCache(5000); // 50 tokens of 100 bytes
  const a = [1, ...seq(100, 19)]; // 20 tokens, 2000 bytes
  const b = [1, ...seq(200, 19)];
  const d = [1, ...seq(300, 19)];
  assert.ok(c.add(a, snap(20)));
  assert.ok(c.add(b, snap(20)));
  c.lookup([...a, 5]); // a is now the most recently used
  assert.ok(c.add(d, snap(20))); // 6000 bytes > 5000: b goes
  assert.equal(c.size, 2);
  assert.ok(c.bytes <= c.limitBytes, `${c.bytes} bytes held over the ${c.limitBytes} bound`);
  assert.equal(c.lookup([...b, 5])?.n, 1, "b was evicted (only the shared first token matches)");
  assert.equal(c.lookup([...a, 5])?.n, 20);
  assert.equal(c.lookup([...d, 5])?.n, 20);
  assert.equal(c.add(seq(0, 60), snap(60)), false, "a sequence over the bound is not kept");
  assert.equal(c.size, 2);
  assert.equal(new PromptCache(0).add(a, snap(20)), false, "a bound of 0 keeps nothing");
});

Deno.test("prompt cache: a longer copy of the same sequence replaces its prefix", () => {
  const c = new PromptCache(1e6);
  const a = [1, ...seq(100, 19)];
  c.add(a.slice(0, 10), snap(10));
  assert.ok(c.covers(a.slice(0, 8)));
  assert.ok(!c.covers(a));
  c.add(a, snap(20));
  assert.equal(c.size, 1);
  assert.equal(c.bytes, 2000);
  assert.ok(c.covers(a));
});
