// The history predictor (the fallback when no shadow model is loaded).

import assert from "node:assert/strict";
import { HistoryPredictor } from "./predictor.ts";

Deno.test("history predictor: recent tokens weigh more, unseen experts are never predicted", () => {
  const h = new HistoryPredictor(2, 5, 1, { topK: 3, decay: 0.5, depth: 2 });
  const token = (a: number, b: number) => new Uint32Array([a, b]);
  h.observe(token(1, 4), 1);
  h.observe(token(1, 4), 1);
  h.observe(token(2, 3), 1);
  // layer 0: expert 1 weighs 0.25 + 0.5, expert 2 weighs 1 → 2 first
  assert.deepEqual(h.top(0), [2, 1]);
  assert.deepEqual(h.predict(0), [
    { distance: 1, layer: 1, nextToken: false, experts: [3, 4] },
    { distance: 2, layer: 0, nextToken: true, experts: [2, 1] },
  ]);
  h.reset();
  assert.deepEqual(h.top(1), []);
});
