import assert from "node:assert/strict";
import { defineShaderLib, expandIncludes, ShaderSourceError } from "./shaders.ts";
import {
  loadShaderText,
  parseBindings,
  parseParamsDecl,
  pipelineKey,
  requiredFeatures,
  SHADER_DIR,
  substituteDefines,
} from "./mod.ts";

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

const F32 = { variant: "f32", defines: { ENABLE: "", T: "f32" } } as const;
const F16 = { variant: "f16", defines: { ENABLE: "enable f16;", T: "f16" } } as const;

Deno.test("WGSL text: strict substitution, bindings and enable directives", async () => {
  const text = await loadShaderText("smoke");
  assert.equal(loadShaderText("smoke"), loadShaderText("smoke"), "text is cached");
  const f16 = substituteDefines(text, F16.defines, "smoke_f16");
  assert.deepEqual(requiredFeatures(f16), ["shader-f16"]);
  assert.deepEqual(requiredFeatures(substituteDefines(text, F32.defines)), []);
  assert.deepEqual(parseBindings(f16), ["read-only-storage", "storage", "uniform"]);
  assert.throws(() => substituteDefines(text, { T: "f32" }), /\{\{ENABLE\}\}/);
  assert.throws(() => substituteDefines(text, { ...F32.defines, TYPO: "x" }), /TYPO/);
  assert.throws(
    () => parseBindings("@group(0) @binding(1) var<storage, read> a: array<f32>;"),
    /skips @binding\(0\)/,
  );
  assert.throws(() => loadShaderText("../etc/passwd"), ShaderSourceError);
  await assert.rejects(loadShaderText("no_such_kernel"), ShaderSourceError);
  assert.equal(pipelineKey("matvec", { variant: "q4_k_f16acc" }), "matvec_q4_k_f16acc");
  assert.equal(
    pipelineKey("smoke", { variant: "f32", entryPoint: "fill", constants: { WG_SIZE: 64, A: 1 } }),
    "smoke_f32.fill{A=1,WG_SIZE=64}",
  );
});

Deno.test("every kernel's params struct is found: a shader declaring params names a struct it has", async () => {
  const dir = SHADER_DIR;
  let withParams = 0;
  for (const e of Deno.readDirSync(dir)) {
    if (!e.name.endsWith(".wgsl")) continue;
    // The struct may come from a shaders/lib include (matmul_params). An include whose name is a
    // define (`//#include {{X_LIB}}`) is chosen by the launcher: the params struct may not live there.
    const source = (await Deno.readTextFile(new URL(e.name, dir)))
      .replace(/^\/\/#include \{\{[A-Z0-9_]+\}\}$/gm, "");
    const text = await expandIncludes(source, dir, e.name);
    if (!/\bvar\s*<[^>]*>\s*params\s*:/.test(text)) continue;
    const decl = parseParamsDecl(text, e.name);
    assert.ok(decl && decl.fields.length > 0, `${e.name}: params struct not parsed`);
    for (const [name, type] of decl.fields) {
      assert.match(
        type,
        /^(u32|i32|f32)$/,
        `${e.name}: ${decl.struct}.${name} is ${type}, not a 4-byte scalar`,
      );
    }
    withParams++;
  }
  assert.ok(withParams >= 15, `only ${withParams} shaders with params found`);
});
