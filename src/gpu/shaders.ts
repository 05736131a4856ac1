/**
 * WGSL source loading from the package's `shaders/` folder (local files or,
 * when imported from JSR, over HTTP), `{{NAME}}` substitution for dtype
 * variants, `//#include NAME` of `shaders/lib/NAME.wgsl` or of generated
 * libraries ({@linkcode expandIncludes}), and the small amount of WGSL reading the pipeline cache needs:
 * binding declarations and `enable` directives.
 *
 * Tunables (workgroup size, tile sizes) are WGSL `override` constants set at
 * pipeline creation, never substituted text.
 *
 * @module
 */

import type { GpuFeature } from "./device.ts";

/** The `shaders/` folder of this package, wherever it was imported from. */
export const SHADER_DIR: URL = new URL("../../shaders/", import.meta.url);

/** A shader file, its substitution, or its bindings are wrong. */
export class ShaderSourceError extends Error {
  /** Builds the error; the message names the shader. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "ShaderSourceError";
  }
}

const SHADER_NAME = /^[a-z0-9_]+$/;
const texts = new Map<string, Promise<string>>();

/** The URL of `shaders/NAME.wgsl` (or of `NAME.wgsl` under `baseUrl`). */
export function shaderUrl(name: string, baseUrl: URL = SHADER_DIR): URL {
  if (!SHADER_NAME.test(name)) {
    throw new ShaderSourceError(
      `Shader name "${name}" is not snake_case [a-z0-9_]+; it names shaders/<name>.wgsl.`,
    );
  }
  return new URL(`${name}.wgsl`, baseUrl);
}

/**
 * The text of `shaders/NAME.wgsl`, read once and cached: `file:` URLs with
 * `Deno.readTextFile`, `http(s):` URLs (a JSR import) with `fetch`.
 */
export function loadShaderText(name: string, baseUrl: URL = SHADER_DIR): Promise<string> {
  const url = shaderUrl(name, baseUrl);
  const key = url.href;
  let text = texts.get(key);
  if (!text) {
    text = readUrl(url).catch((cause) => {
      texts.delete(key);
      throw new ShaderSourceError(
        `Cannot read shader "${name}" from ${url.href}: ${(cause as Error).message}`,
        { cause },
      );
    });
    texts.set(key, text);
  }
  return text;
}

async function readUrl(url: URL): Promise<string> {
  if (url.protocol === "file:") return await Deno.readTextFile(url);
  if (url.protocol === "http:" || url.protocol === "https:") {
    const response = await fetch(url);
    if (!response.ok) throw new Error(`HTTP ${response.status} ${response.statusText}`);
    return await response.text();
  }
  throw new Error(`unsupported URL scheme ${url.protocol}`);
}

/**
 * Registers WGSL text under a name, as if it were `shaders/NAME.wgsl`
 * (generated kernels, tests). Replaces any cached text of that name.
 */
export function defineShaderText(name: string, text: string, baseUrl: URL = SHADER_DIR): void {
  texts.set(shaderUrl(name, baseUrl).href, Promise.resolve(text));
}

/** Forgets every cached shader text (files are read again on next load). */
export function clearShaderTextCache(): void {
  texts.clear();
}

/** The `shaders/lib/` folder of includable WGSL under `baseUrl`. */
export function shaderLibUrl(baseUrl: URL = SHADER_DIR): URL {
  return new URL("lib/", baseUrl);
}

const generatedLibs = new Map<string, () => string>();
const generatedTexts = new Map<string, string>();

/**
 * Registers a generated include: `//#include NAME` then resolves to the text
 * `make()` returns (called once, on first use) instead of
 * `shaders/lib/NAME.wgsl`. For WGSL written from data the TypeScript side
 * also uses (the I-quant grids), so the data exists once.
 */
export function defineShaderLib(name: string, make: () => string): void {
  if (!SHADER_NAME.test(name)) {
    throw new ShaderSourceError(`Shader library name "${name}" is not snake_case [a-z0-9_]+.`);
  }
  generatedLibs.set(name, make);
  generatedTexts.delete(name);
}

const INCLUDE = /^[ \t]*\/\/#include[ \t]+(\S+)[ \t]*$/gm;

/**
 * Replaces every `//#include NAME` line of `text` with the library NAME: a
 * generated one ({@linkcode defineShaderLib}) or `shaders/lib/NAME.wgsl`
 * (read once, like any shader), recursively. Each library is included at
 * most once per expansion (a later `//#include` of it becomes empty), so
 * libraries can include the helpers they need without clashing. A missing
 * library or an include cycle throws, naming the chain.
 */
export async function expandIncludes(
  text: string,
  baseUrl: URL = SHADER_DIR,
  shaderName = "shader",
): Promise<string> {
  const seen = new Set<string>();
  const expand = async (src: string, chain: readonly string[]): Promise<string> => {
    const parts: string[] = [];
    let last = 0;
    for (const m of src.matchAll(INCLUDE)) {
      parts.push(src.slice(last, m.index));
      last = m.index! + m[0].length;
      const name = m[1]!;
      const where = [shaderName, ...chain].join(" → ");
      if (chain.includes(name)) {
        throw new ShaderSourceError(`${where}: include cycle through "${name}".`);
      }
      if (seen.has(name)) continue;
      seen.add(name);
      const lib = await libText(name, baseUrl, where);
      parts.push(`// ---- lib ${name} ----\n${await expand(lib, [...chain, name])}`);
    }
    parts.push(src.slice(last));
    return parts.join("");
  };
  return await expand(text, []);
}

async function libText(name: string, baseUrl: URL, where: string): Promise<string> {
  const make = generatedLibs.get(name);
  if (make) {
    let text = generatedTexts.get(name);
    if (text === undefined) {
      text = make();
      generatedTexts.set(name, text);
    }
    return text;
  }
  if (!SHADER_NAME.test(name)) {
    throw new ShaderSourceError(`${where}: include name "${name}" is not snake_case [a-z0-9_]+.`);
  }
  try {
    return await loadShaderText(name, shaderLibUrl(baseUrl));
  } catch (cause) {
    throw new ShaderSourceError(
      `${where}: "//#include ${name}" names neither a generated library nor ` +
        `shaders/lib/${name}.wgsl (${(cause as Error).message}).`,
      { cause },
    );
  }
}

const PLACEHOLDER = /\{\{([A-Za-z_][A-Za-z0-9_]*)\}\}/g;

/**
 * Replaces each `{{NAME}}` in `text` with `defines[NAME]`. Strict both ways:
 * a placeholder without a define, or a define without a placeholder, throws
 * (naming `shaderName`), so a typo cannot silently pick the wrong dtype.
 */
export function substituteDefines(
  text: string,
  defines: Readonly<Record<string, string | number>>,
  shaderName = "shader",
): string {
  const missing = new Set<string>();
  const used = new Set<string>();
  const out = text.replace(PLACEHOLDER, (whole, key: string) => {
    const value = defines[key];
    if (value === undefined) {
      missing.add(key);
      return whole;
    }
    used.add(key);
    return String(value);
  });
  if (missing.size > 0) {
    throw new ShaderSourceError(
      `Shader "${shaderName}" has placeholders without a value: ` +
        `${[...missing].map((k) => `{{${k}}}`).join(", ")}; pass them in defines.`,
    );
  }
  const unused = Object.keys(defines).filter((k) => !used.has(k));
  if (unused.length > 0) {
    throw new ShaderSourceError(
      `Shader "${shaderName}" has no placeholder for define(s) ${unused.join(", ")}.`,
    );
  }
  return out;
}

/** WGSL text with comments blanked out (line structure kept). */
export function stripComments(text: string): string {
  let out = "";
  let depth = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    const next = text[i + 1];
    if (depth === 0 && c === "/" && next === "/") {
      while (i < text.length && text[i] !== "\n") i++;
      out += "\n";
    } else if (c === "/" && next === "*") {
      depth++;
      i++;
      out += "  ";
    } else if (depth > 0 && c === "*" && next === "/") {
      depth--;
      i++;
      out += "  ";
    } else {
      out += depth > 0 && c !== "\n" ? " " : c;
    }
  }
  return out;
}

/** How a kernel binds one buffer (WebGPU's buffer binding types). */
export type BindingKind = "read-only-storage" | "storage" | "uniform";

const BINDING_DECL =
  /((?:@(?:group|binding)\s*\(\s*\d+\s*\)\s*){2})var\s*<\s*(storage|uniform)\s*(?:,\s*(read_write|read))?\s*>/g;

/**
 * The buffer bindings of group 0, from the WGSL declarations, as a dense
 * list indexed by binding number. Throws on other groups, on gaps, and on
 * non-buffer resources, which od-moe kernels do not use.
 */
export function parseBindings(text: string, shaderName = "shader"): BindingKind[] {
  const code = stripComments(text);
  const kinds: BindingKind[] = [];
  for (const m of code.matchAll(BINDING_DECL)) {
    const attrs = m[1]!;
    const group = Number(/@group\s*\(\s*(\d+)/.exec(attrs)?.[1]);
    const binding = Number(/@binding\s*\(\s*(\d+)/.exec(attrs)?.[1]);
    if (group !== 0) {
      throw new ShaderSourceError(
        `Shader "${shaderName}" declares @group(${group}); od-moe kernels use group 0 only.`,
      );
    }
    if (kinds[binding] !== undefined) {
      throw new ShaderSourceError(`Shader "${shaderName}" declares @binding(${binding}) twice.`);
    }
    kinds[binding] = m[2] === "uniform"
      ? "uniform"
      : m[3] === "read_write"
      ? "storage"
      : "read-only-storage";
  }
  const total = (code.match(/@binding\s*\(/g) ?? []).length;
  if (total !== Object.keys(kinds).length) {
    throw new ShaderSourceError(
      `Shader "${shaderName}" has a @binding that is not a storage or uniform buffer ` +
        `(or its attributes are not written "@group(0) @binding(N) var<...>").`,
    );
  }
  for (let i = 0; i < kinds.length; i++) {
    if (kinds[i] === undefined) {
      throw new ShaderSourceError(
        `Shader "${shaderName}" skips @binding(${i}); number bindings 0..n-1 ` +
          `(inputs, then outputs, then params).`,
      );
    }
  }
  return kinds;
}

/** The `params` binding of a kernel: its number and its struct's fields in order. */
export interface ParamsDecl {
  /** `@binding(N)` of the variable named `params`. */
  readonly binding: number;
  /** The struct's name (`Params`, `GemmParams`, …). */
  readonly struct: string;
  /** `[field, type]` in declaration order; 4-byte scalars only (`u32`, `i32`, `f32`). */
  readonly fields: readonly (readonly [string, string])[];
}

/**
 * Finds the kernel's parameter block — the binding declared as
 * `var<…> params: S;` — and the fields of `struct S`, so that the launcher's
 * {@linkcode ParamsBuffer} layout can be checked against the WGSL instead of
 * trusting a copy. Undefined when the shader has no `params` binding.
 */
export function parseParamsDecl(text: string, shaderName = "shader"): ParamsDecl | undefined {
  const code = stripComments(text);
  const decl =
    /@group\s*\(\s*0\s*\)\s*@binding\s*\(\s*(\d+)\s*\)\s*var\s*<[^>]*>\s*params\s*:\s*(\w+)\s*;/
      .exec(code);
  if (!decl) return undefined;
  const struct = decl[2]!;
  const body = new RegExp(`struct\\s+${struct}\\s*\\{([^}]*)\\}`).exec(code);
  if (!body) {
    throw new ShaderSourceError(
      `Shader "${shaderName}": params has type ${struct}, which is not a struct here.`,
    );
  }
  const fields: (readonly [string, string])[] = [];
  for (const part of body[1]!.split(",")) {
    const f = part.trim();
    if (f === "") continue;
    const m = /^(\w+)\s*:\s*(.+)$/.exec(f);
    if (!m) {
      throw new ShaderSourceError(`Shader "${shaderName}": cannot read field "${f}" of ${struct}.`);
    }
    fields.push([m[1]!, m[2]!.trim()]);
  }
  return { binding: Number(decl[1]), struct, fields };
}

const ENABLE_FEATURES: Readonly<Record<string, GpuFeature>> = {
  f16: "shader-f16",
  subgroups: "subgroups",
};

/** The optional device features a WGSL text's `enable` directives need. */
export function requiredFeatures(text: string): GpuFeature[] {
  const code = stripComments(text);
  const out = new Set<GpuFeature>();
  for (const m of code.matchAll(/\benable\s+([^;]+);/g)) {
    for (const ext of m[1]!.split(",")) {
      const feature = ENABLE_FEATURES[ext.trim()];
      if (feature) out.add(feature);
    }
  }
  return [...out];
}
