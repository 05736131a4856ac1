import assert from "node:assert/strict";
import { formatSseEvent, parseSse, readSse, sseStream } from "./sse.ts";

Deno.test("sse: events round-trip, multi-line data, named events, comments", async () => {
  assert.equal(formatSseEvent("a\nb", "done"), "event: done\ndata: a\ndata: b\n\n");
  assert.throws(() => formatSseEvent("x", "a\nb"), RangeError);
  const sse = sseStream();
  assert.equal(sse.response.headers.get("content-type"), "text/event-stream; charset=utf-8");
  sse.send('{"text":"hi"}');
  sse.comment("keep-alive");
  sse.send("line 1\r\nline 2", "multi");
  sse.send("[DONE]");
  sse.close();
  assert.equal(sse.send("late"), false);
  const text = await sse.response.text();
  assert.deepEqual(parseSse(text), [
    { event: "message", data: '{"text":"hi"}' },
    { event: "multi", data: "line 1\nline 2" },
    { event: "message", data: "[DONE]" },
  ]);
});

Deno.test("sse: readSse splits events across arbitrary chunk boundaries", async () => {
  const wire = "data: a\n\nevent: x\ndata: b\r\n\r\n: c\n\ndata:no-space\n\ndata: tail";
  const bytes = new TextEncoder().encode(wire);
  for (const size of [1, 2, 3, 7, 100]) {
    const body = new ReadableStream<Uint8Array>({
      start(c) {
        for (let i = 0; i < bytes.length; i += size) c.enqueue(bytes.slice(i, i + size));
        c.close();
      },
    });
    const got = [];
    for await (const e of readSse(body)) got.push(e);
    assert.deepEqual(got, [
      { event: "message", data: "a" },
      { event: "x", data: "b" },
      { event: "message", data: "no-space" },
      { event: "message", data: "tail" },
    ], `chunk size ${size}`);
  }
});

Deno.test("sse: a cancelled body calls onCancel once and closes the writer", async () => {
  let cancelled = 0;
  const sse = sseStream({ onCancel: () => cancelled++ });
  sse.send("one");
  const reader = sse.response.body!.getReader();
  await reader.read();
  await reader.cancel();
  assert.equal(cancelled, 1);
  assert.equal(sse.closed, true);
  assert.equal(sse.send("two"), false);
  sse.close();
  assert.equal(cancelled, 1);
});
