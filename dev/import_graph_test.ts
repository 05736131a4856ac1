import assert from "node:assert/strict";
import { cycles, importGraph } from "./import_graph.ts";

/**
 * The order folders may import in (DESIGN.md's module table): each imports only
 * folders of a lower rank. Tools and tests sit on top.
 */
const RANK: Record<string, number> = {
  "ffi": 0,
  "src/util": 0,
  "src/gguf": 1,
  "src/safetensors": 1,
  "src/converted": 2,
  "src/gpu": 2,
  "src/tokenizer": 2,
  "src/predictor": 3,
  "src/experts": 4,
  "src/model": 5,
  "src/generate": 6,
  "src/server": 7,
  "mod": 8,
  "src/convert": 8,
  "src/training": 8,
  "dev": 9,
  "scripts": 10,
  "bench": 10,
  "examples": 10,
  "tools": 11,
};

Deno.test("import graph: no cycles between folders, and every import points down", () => {
  const graph = importGraph();
  assert.deepEqual(cycles(graph), []);
  for (const [from, deps] of graph) {
    assert.ok(from in RANK, `${from} has no place in the layer order: add it to RANK`);
    for (const to of deps) {
      assert.ok(to in RANK, `${to} has no place in the layer order: add it to RANK`);
      assert.ok(RANK[to]! < RANK[from]!, `${from} imports ${to}, a folder at or above its layer`);
    }
  }
});
