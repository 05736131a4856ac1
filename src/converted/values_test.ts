import assert from "node:assert/strict";
import { type GgufValue, gv } from "../gguf/value.ts";
import { decodeGgufValue, decodeMetadata, encodeMetadata, GgufJsonError } from "./values.ts";

Deno.test("GGUF values survive JSON exactly, every type", () => {
  const values: [string, GgufValue][] = [
    ["u8", gv.u8(255)],
    ["i8", gv.i8(-128)],
    ["u16", gv.u16(65535)],
    ["i16", gv.i16(-32768)],
    ["u32", gv.u32(4294967295)],
    ["i32", gv.i32(-2147483648)],
    ["f32", gv.f32(Math.fround(0.1))],
    ["f32nan", gv.f32(NaN)],
    ["f32neg0", gv.f32(-0)],
    ["f64", gv.f64(Math.PI)],
    ["f64inf", gv.f64(-Infinity)],
    ["u64", gv.u64(18446744073709551615n)],
    ["i64", gv.i64(-9223372036854775808n)],
    ["bool", gv.bool(false)],
    ["str", gv.str("{% for m in messages %}ü\u0000")],
    ["strs", gv.strings(["a", "", "Ġthe"])],
    ["f32s", gv.f32s([1.5, -0, NaN, Infinity, Math.fround(1e-30)])],
    ["i32s", gv.i32s([-1, 2])],
    ["u32s", gv.u32s([4294967295])],
    ["bools", gv.bools([true, false])],
    ["u64s", { type: "array", itemType: "u64", value: new BigUint64Array([1n, 2n ** 64n - 1n]) }],
    ["i8s", { type: "array", itemType: "i8", value: new Int8Array([-5, 5]) }],
    ["nested", {
      type: "array",
      itemType: "array",
      value: [{ type: "array", itemType: "string", value: ["x"] }, {
        type: "array",
        itemType: "u8",
        value: new Uint8Array([1]),
      }],
    }],
  ];
  const json = JSON.parse(JSON.stringify(encodeMetadata(values)));
  const back = decodeMetadata(json, "config.json");
  assert.deepEqual([...back.keys()], values.map(([k]) => k));
  for (const [k, v] of values) assert.deepEqual(back.get(k), v, k);
  assert.ok(Object.is(back.get("f32neg0")!.value as number, -0));
});

Deno.test("bad JSON values are rejected naming the key", () => {
  const bad: [unknown, RegExp][] = [
    [{ type: "u8", value: 256 }, /expected a u8, found 256/],
    [{ type: "u64", value: 5 }, /expected a u64 as a decimal string/],
    [{ type: "u64", value: "-1" }, /out of range/],
    [{ type: "q4", value: 1 }, /unknown value type "q4"/],
    [{ type: "array", itemType: "string", value: [1] }, /k\[0\]: expected a string/],
    [{ type: "f32", value: "x" }, /expected a float/],
    [5, /expected \{"type", "value"\}/],
  ];
  for (const [j, re] of bad) {
    assert.throws(
      () => decodeGgufValue(j, "f.json: k"),
      (e: unknown) => e instanceof GgufJsonError && re.test(e.message),
    );
  }
});
