import assert from "node:assert/strict";

const root = new URL("../", import.meta.url);

/**
 * A lockfile entry is enough for Deno to install a package on any run, so
 * `deno.lock` must name only what the engine imports at run time: otherwise a
 * user's first `deno task serve` downloads the test-only packages too (~770 MB
 * with node-llama-cpp's platform builds). Test and bench runs use
 * `--lock=dev/deno.lock`; a run without it rewrites `deno.lock` — restore it.
 */
Deno.test("deno.lock holds only the runtime packages of deno.json's imports", () => {
  const config = JSON.parse(Deno.readTextFileSync(new URL("deno.json", root)));
  const lock = JSON.parse(Deno.readTextFileSync(new URL("deno.lock", root)));
  const runtime = Object.values(config.imports as Record<string, string>).sort();
  const locked = Object.keys(lock.specifiers ?? {}).sort();
  assert.deepEqual(
    locked,
    runtime,
    "deno.lock names packages deno.json does not import: a run without --lock=dev/deno.lock " +
      "rewrote it (git checkout deno.lock)",
  );
  for (const spec of runtime) {
    assert.ok(
      !/node-llama-cpp|openai|playwright/.test(spec),
      `${spec} is test-only: list it in dev/ref/packages.ts, not deno.json`,
    );
  }
});
