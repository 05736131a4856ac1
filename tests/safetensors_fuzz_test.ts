/**
 * Fuzzing the safetensors reader: every truncation of a valid file and a few
 * thousand random mutations of its header (bytes flipped, JSON edited,
 * numbers changed, length prefix rewritten) must either parse to a header
 * whose tensors tile the data, or throw a SafetensorsError — never another
 * error, a hang or a huge allocation.
 */

import assert from "node:assert/strict";
import {
  parseSafetensorsHeader,
  readSafetensorsHeader,
  SafetensorsError,
  serializeSafetensors,
} from "../src/safetensors/mod.ts";
import { Rng } from "../src/util/rng.ts";

function sample(): Uint8Array {
  return serializeSafetensors(
    [
      { name: "token_embd.weight", dtype: "F16", shape: [4, 8], data: new Uint8Array(64).fill(1) },
      { name: "blk.0.attn_q.weight", dtype: "U8", shape: [36], data: new Uint8Array(36).fill(2) },
      { name: "norm", dtype: "F32", shape: [3], data: new Uint8Array(12).fill(3) },
      { name: "scalar", dtype: "I64", shape: [], data: new Uint8Array(8).fill(4) },
      { name: "empty", dtype: "BF16", shape: [0], data: new Uint8Array(0) },
    ],
    { ggml_tensors: JSON.stringify({ a: { ggml_type: "Q4_K", shape: [256, 2] } }), layer: "3" },
  );
}

/** Checks that a parse either fails with SafetensorsError or returns a self-consistent header. */
function check(bytes: Uint8Array, what: string): "ok" | "error" {
  let h;
  try {
    h = parseSafetensorsHeader(bytes, "fuzz.safetensors");
  } catch (e) {
    if (e instanceof SafetensorsError) {
      assert.ok(e.message.startsWith("fuzz.safetensors: "), e.message);
      return "error";
    }
    throw new Error(`${what}: threw ${e} instead of a SafetensorsError`, { cause: e });
  }
  let covered = 0;
  for (const t of h.tensors) {
    assert.ok(t.fileOffset + t.nBytes <= bytes.length, `${what}: ${t.name} past the end`);
    covered += t.nBytes;
  }
  assert.equal(covered, bytes.length - h.dataOffset, `${what}: data not tiled`);
  return "ok";
}

function edit(text: string, rng: Rng): string {
  const edits = [
    // Change a number.
    () =>
      text.replace(
        /\d+/g,
        (
          m,
        ) => (rng.next() < 0.2
          ? String(pick(rng, [0, 1, 7, 2 ** 53, -1, 1e308, Number(m) + 1]))
          : m),
      ),
    // Drop or duplicate a character.
    () => {
      const i = Math.floor(rng.next() * text.length);
      return rng.next() < 0.5
        ? text.slice(0, i) + text.slice(i + 1)
        : text.slice(0, i) + text[i] + text.slice(i);
    },
    // Replace a token by another JSON value.
    () =>
      text.replace(
        /"[A-Z0-9_]+"|\[[^\[\]]*\]|\{\}|"[a-z_.0-9]+"/,
        () =>
          String(
            pick(rng, [
              "null",
              "[]",
              "{}",
              '"F8_E4M3"',
              '"Q4_K"',
              "[0,1]",
              "[1,0]",
              "true",
              '"x"',
              "1.5",
            ]),
          ),
      ),
    // Duplicate a tensor entry under the same name.
    () => text.replace(/("norm":\{[^}]*\})/, "$1,$1"),
    // Swap two data_offsets.
    () => text.replace(/"data_offsets":\[(\d+),(\d+)\]/, '"data_offsets":[$2,$1]'),
  ];
  return pick(rng, edits)();
}

function pick<T>(rng: Rng, items: readonly T[]): T {
  return items[Math.floor(rng.next() * items.length)]!;
}

Deno.test("every truncation of a valid file is rejected with a SafetensorsError", () => {
  const bytes = sample();
  assert.equal(check(bytes, "intact"), "ok");
  for (let n = 0; n < bytes.length; n++) {
    assert.equal(check(bytes.subarray(0, n), `truncated to ${n}`), "error", `truncated to ${n}`);
  }
  // And one byte too many.
  const longer = new Uint8Array(bytes.length + 1);
  longer.set(bytes);
  assert.equal(check(longer, "one extra byte"), "error");
});

Deno.test("random header mutations only ever raise SafetensorsError", () => {
  const bytes = sample();
  const len = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  const text = new TextDecoder().decode(bytes.subarray(8, 8 + len));
  const data = bytes.subarray(8 + len);
  const rng = new Rng(20240607);
  const counts = { ok: 0, error: 0 };
  const t0 = performance.now();
  for (let i = 0; i < 4000; i++) {
    let out: Uint8Array;
    const mode = i % 4;
    if (mode === 0) {
      // Flip random bytes anywhere in the header (prefix included).
      out = bytes.slice();
      const flips = 1 + Math.floor(rng.next() * 4);
      for (let f = 0; f < flips; f++) {
        const at = Math.floor(rng.next() * (8 + len));
        out[at] = out[at]! ^ (1 << Math.floor(rng.next() * 8));
      }
    } else {
      let t = text;
      const n = 1 + Math.floor(rng.next() * 3);
      for (let k = 0; k < n; k++) t = edit(t, rng);
      const h = new TextEncoder().encode(t);
      out = new Uint8Array(8 + h.length + data.length);
      // Mode 3 also lies about the header length.
      const lie = mode === 3 ? Math.floor((rng.next() - 0.5) * 16) : 0;
      new DataView(out.buffer).setBigUint64(0, BigInt(Math.max(0, h.length + lie)), true);
      out.set(h, 8);
      out.set(data, 8 + h.length);
    }
    counts[check(out, `case ${i}`)]++;
  }
  const ms = performance.now() - t0;
  assert.ok(counts.error > 2000, JSON.stringify(counts));
  assert.ok(ms < 10_000, `fuzzing took ${ms} ms`);
});

Deno.test("readSafetensorsHeader on damaged files on disk raises SafetensorsError", async () => {
  const dir = await Deno.makeTempDir();
  const bytes = sample();
  const rng = new Rng(7);
  for (let i = 0; i < 100; i++) {
    const path = `${dir}/f${i}.safetensors`;
    const out = i % 2 === 0
      ? bytes.subarray(0, Math.floor(rng.next() * bytes.length))
      : bytes.slice();
    if (i % 2 === 1) {
      const at = Math.floor(rng.next() * 40);
      out[at] = out[at]! ^ 0xff;
    }
    await Deno.writeFile(path, out);
    try {
      readSafetensorsHeader(path);
    } catch (e) {
      assert.ok(e instanceof SafetensorsError, String(e));
      assert.ok(e.message.includes(path), e.message);
    }
  }
  await Deno.remove(dir, { recursive: true });
});
