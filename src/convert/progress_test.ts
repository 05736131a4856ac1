import assert from "node:assert/strict";
import { LineProgress, TerminalProgress } from "./progress.ts";

Deno.test("TerminalProgress redraws one line with a bar, bytes/s and ETA", async () => {
  let text = "";
  const p = new TerminalProgress((t) => text += t);
  p.start(10 << 20, 0);
  p.label("experts/layer_000/expert_001.safetensors");
  p.advance(1 << 20);
  await new Promise((r) => setTimeout(r, 120));
  p.advance(4 << 20);
  p.note("a message");
  p.advance(5 << 20);
  p.finish();
  assert.ok(text.includes("\r"), "redraws in place");
  assert.match(text, /█+░* +50\.0% 5\.00 MiB\/10\.0 MiB [\d.]+ [KMG]iB\/s ETA \d\d:\d\d/);
  assert.match(text, /100\.0% 10\.0 MiB\/10\.0 MiB .* ETA 00:00/);
  assert.match(text, /expert_001\.safetensors/);
  assert.match(text, /\r +\ra message\n/, "notes clear the bar first");
  assert.ok(text.endsWith("\n"));
  assert.equal(text.split("\n").length, 3, "one line for the note, one for the bar");
});

Deno.test("LineProgress prints a plain line per 5 %", () => {
  const lines: string[] = [];
  const p = new LineProgress((t) => lines.push(t));
  p.start(1000, 0);
  for (let i = 0; i < 1000; i++) p.advance(1);
  p.finish();
  assert.equal(lines.length, 21);
  assert.ok(lines.every((l) => !l.includes("\r") && l.endsWith("\n")));
  assert.match(lines[10]!, /^progress {2}50%: 500 B of 1000 B, .*\/s, ETA \d\d:\d\d\n$/);
  assert.match(lines[20]!, /^progress 100%/);
});
