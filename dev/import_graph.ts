/**
 * The folder-level import graph of the project: which top-level folder (and
 * `src/` subfolder) imports which, and the cycles between them.
 *
 * `deno run -A dev/import_graph.ts [--json]` prints one line per folder with the
 * folders it imports, then every cycle found (none is the goal: see
 * DESIGN.md's module table for the intended order).
 *
 * @module
 */

import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("../", import.meta.url)).replace(/\/$/, "");
const SKIP = new Set(["node_modules", ".cache", ".git"]);

/** The folder a file belongs to: `src/<sub>` inside src, else its top-level folder. */
function folderOf(rel: string): string {
  const parts = rel.split("/");
  if (parts.length === 1) return parts[0]!.replace(/\.ts$/, "");
  if (parts[0] === "src" && parts.length > 2) return `src/${parts[1]}`;
  return parts[0]!;
}

function* tsFiles(dir: string): Generator<string> {
  for (const e of Deno.readDirSync(dir)) {
    if (SKIP.has(e.name)) continue;
    const p = `${dir}/${e.name}`;
    if (e.isDirectory) yield* tsFiles(p);
    else if (e.isFile && e.name.endsWith(".ts")) yield p;
  }
}

/** Folder → the folders its non-test files import (test files excluded: they may reach anywhere). */
export function importGraph(): Map<string, Set<string>> {
  const graph = new Map<string, Set<string>>();
  const spec = /(?:import|export)[^"']*?from\s*["'](\.[^"']+)["']/g;
  for (const file of tsFiles(ROOT)) {
    const rel = file.slice(ROOT.length + 1);
    if (rel.endsWith("_test.ts") || rel.startsWith("tests/")) continue;
    const from = folderOf(rel);
    const deps = graph.get(from) ?? new Set<string>();
    graph.set(from, deps);
    const text = Deno.readTextFileSync(file);
    for (const m of text.matchAll(spec)) {
      const target = fileURLToPath(new URL(m[1]!, `file://${file}`));
      if (!target.startsWith(ROOT + "/")) continue;
      const to = folderOf(target.slice(ROOT.length + 1));
      if (to !== from) deps.add(to);
    }
  }
  return graph;
}

/** Every elementary cycle's folders, found by depth-first search from each folder. */
export function cycles(graph: Map<string, Set<string>>): string[][] {
  const found = new Map<string, string[]>();
  const visit = (start: string, node: string, path: string[]) => {
    for (const next of graph.get(node) ?? []) {
      if (next === start) {
        const key = [...path].sort().join(",");
        if (!found.has(key)) found.set(key, [...path, start]);
      } else if (!path.includes(next) && next > start) visit(start, next, [...path, next]);
    }
  };
  for (const start of graph.keys()) visit(start, start, [start]);
  return [...found.values()];
}

if (import.meta.main) {
  const graph = importGraph();
  const found = cycles(graph);
  if (Deno.args.includes("--json")) {
    const obj = Object.fromEntries([...graph].map(([k, v]) => [k, [...v].sort()]));
    console.log(JSON.stringify({ graph: obj, cycles: found }));
  } else {
    for (const [k, v] of [...graph].sort()) console.log(`${k} -> ${[...v].sort().join(", ")}`);
    console.log(
      found.length === 0
        ? "no cycles"
        : `cycles:\n${found.map((c) => "  " + c.join(" -> ")).join("\n")}`,
    );
  }
}
