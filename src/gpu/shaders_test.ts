import assert from "node:assert/strict";
import { defineShaderLib, expandIncludes, ShaderSourceError } from "./shaders.ts";

/** A temporary shaders/ folder with the given lib/ files. */
async function shaderDir(libs: Record<string, string>): Promise<URL> {
  const dir = await Deno.makeTempDir();
  await Deno.mkdir(`${dir}/lib`);
  for (const [name, text] of Object.entries(libs)) {
    await Deno.writeTextFile(`${dir}/lib/${name}.wgsl`, text);
  }
  return new URL(`file://${dir}/`);
}

Deno.test("expandIncludes: lib files and generated libraries, each once, nested", async () => {
  const base = await shaderDir({
    helpers: "fn h() -> u32 { return 1u; }\n",
    user_a: "//#include helpers\nfn a() -> u32 { return h(); }\n",
    user_b: "//#include helpers\n//#include gen_table_test\nfn b() -> u32 { return T[0]; }\n",
  });
  defineShaderLib("gen_table_test", () => "const T = array<u32, 1>(7u);\n");
  const out = await expandIncludes("//#include user_a\n  //#include user_b\nfn main() {}\n", base);
  assert.equal(out.match(/fn h\(\)/g)?.length, 1, "helpers included once");
  assert.ok(out.includes("const T = array<u32, 1>(7u);"), "generated library");
  assert.ok(out.indexOf("fn h()") < out.indexOf("fn a()"), "an include comes before its user");
  assert.ok(!out.includes("#include"), "no directive left");
  assert.ok(out.endsWith("fn main() {}\n"));
});

Deno.test("expandIncludes: a missing library or a cycle names the chain", async () => {
  const base = await shaderDir({ one: "//#include two\n", two: "//#include one\n" });
  await assert.rejects(
    expandIncludes("//#include nowhere\n", base, "k"),
    (e: unknown) =>
      e instanceof ShaderSourceError && /k: "\/\/#include nowhere" names neither/.test(e.message),
  );
  await assert.rejects(
    expandIncludes("//#include one\n", base, "k"),
    (e: unknown) =>
      e instanceof ShaderSourceError && /k → one → two: include cycle/.test(e.message),
  );
});
