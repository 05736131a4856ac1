import assert from "node:assert/strict";
import { isLoopback, parseServeArgs, type ServeConfig, USAGE, UsageError } from "./main.ts";
import { serializeGguf } from "../gguf/writer.ts";

const noEnv = () => undefined;

async function parse(args: string[]): Promise<ServeConfig> {
  const c = await parseServeArgs(args, noEnv);
  assert.notEqual(c, "help");
  return c as ServeConfig;
}

Deno.test("serve flags: defaults serve the demo model on 127.0.0.1:8080", async () => {
  const c = await parse([]);
  assert.equal(c.model, undefined);
  assert.equal(c.port, 8080);
  assert.equal(c.host, "127.0.0.1");
  assert.equal(c.cacheSizeGB, 4);
  assert.equal(c.cacheSizeDefault, true, "the demo model then gets its own budget");
  assert.equal(c.maxQueue, 16);
  assert.equal(c.apiKey, undefined);
  assert.equal(c.prefetch, false);
  assert.equal(c.evictionPolicy, undefined, "the engine's default (predictive)");
  assert.equal(c.parallel, "auto", "sequences sized from memory");
  assert.equal(await parseServeArgs(["-h"], noEnv), "help");
});

Deno.test("serve flags: values and the model and converter-output paths", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const gguf = `${dir}/m.gguf`;
    await Deno.writeFile(gguf, serializeGguf({ metadata: [], tensors: [] }));
    await Deno.mkdir(`${dir}/base_model`);
    await Deno.writeTextFile(`${dir}/base_model/model.safetensors.index.json`, "{}");
    await Deno.mkdir(`${dir}/experts`);
    await Deno.writeTextFile(`${dir}/experts/experts.json`, "{}");
    const c = await parse([
      "--model",
      gguf,
      "--cache-size-gb",
      "0.5",
      "--port",
      "0",
      "--host",
      "0.0.0.0",
      "--api-key",
      "k",
      "--max-queue",
      "3",
      "--ctx-size",
      "1024",
      "--batch-size",
      "256",
      "--cache-ram",
      "64",
      "--parallel",
      "4",
      "--eviction-policy",
      "least-stale",
    ]);
    assert.equal(c.evictionPolicy, "least-stale");
    assert.deepEqual(c.model, {
      model: gguf,
      baseWeights: undefined,
      expertDir: undefined,
      ggufExperts: undefined,
    });
    assert.equal(c.cacheSizeGB, 0.5);
    assert.equal(c.maxBatch, 256);
    assert.equal(c.cacheSizeDefault, false);
    assert.equal(c.port, 0);
    assert.equal(c.host, "0.0.0.0");
    assert.equal(c.apiKey, "k");
    assert.equal(c.maxQueue, 3);
    assert.equal(c.nCtx, 1024);
    assert.equal(c.promptCacheMiB, 64);
    assert.equal(c.parallel, 4);
    const d = await parse([
      "--base-weights",
      `${dir}/base_model`,
      "--expert-dir",
      `${dir}/experts`,
    ]);
    assert.equal(d.model?.baseWeights, `${dir}/base_model`);
    assert.equal(d.model?.expertDir, `${dir}/experts`);
    const g = await parse(["--base-weights", `${dir}/base_model`, "--gguf-experts", gguf]);
    assert.equal(g.model?.ggufExperts, gguf);
    const h = await parse([
      "--allowed-hosts",
      "proxy.lan,box.local",
      "--allowed-hosts",
      "x.example:8080",
      "--cors-origin",
      "https://app.example",
      "--body-timeout-s",
      "5",
      "--header-timeout-s",
      "0",
    ]);
    assert.deepEqual(h.allowedHosts, ["proxy.lan", "box.local", "x.example:8080"]);
    assert.deepEqual(h.corsOrigins, ["https://app.example"]);
    assert.equal(h.bodyTimeoutMs, 5000);
    assert.equal(h.headerTimeoutMs, 0);
    await assert.rejects(() => parse(["--cors-origin", "app.example/x"]), /not an origin/);
    assert.match(USAGE, /ODMOE_API_KEY=KEY instead/);
    const e = await parseServeArgs([], (k) => k === "ODMOE_API_KEY" ? "from-env" : undefined);
    assert.equal((e as ServeConfig).apiKey, "from-env");

    const bad: [string[], RegExp][] = [
      [["--model", `${dir}/none.gguf`], /^--model: no such file or directory/],
      [["--model", dir], /^--model: .* is not a file/],
      [["--model", `${dir}/experts/experts.json`], /^--model: .* is not a GGUF file/],
      [["--base-weights", dir, "--expert-dir", `${dir}/experts`], /^--base-weights: .* holds no/],
      [["--base-weights", `${dir}/base_model`, "--expert-dir", dir], /^--expert-dir: .* holds no/],
      [
        ["--base-weights", `${dir}/base_model`, "--gguf-experts", dir],
        /^--gguf-experts: .*not a file/,
      ],
      [["--base-weights", `${dir}/base_model`], /--base-weights needs --expert-dir/],
      [["--expert-dir", `${dir}/experts`], /--expert-dir needs --base-weights/],
      [["--model", gguf, "--expert-dir", `${dir}/experts`], /--model holds the whole model/],
      [
        [
          "--base-weights",
          `${dir}/base_model`,
          "--expert-dir",
          `${dir}/experts`,
          "--gguf-experts",
          gguf,
        ],
        /not both/,
      ],
      [["--predictor-path", `${dir}/none`], /^--predictor-path: no such file/],
      [["--port", "99999"], /^--port must be an integer in 0…65535/],
      [["--port", "http"], /^--port must be an integer/],
      [["--max-queue", "-1"], /--max-queue|ambiguous/],
      [["--ctx-size", "8"], /^--ctx-size must be an integer in 16/],
      [["--batch-size", "0"], /^--batch-size must be an integer in 1…4096, got "0"/],
      [["--cache-ram", "1.5"], /^--cache-ram must be an integer in 0/],
      [["--parallel", "0"], /^--parallel must be an integer in 1…64/],
      [["--cache-size-gb=-1"], /^--cache-size-gb must be a number ≥ 0/],
      [["--cache-size-gb", "lots"], /^--cache-size-gb must be a number ≥ 0/],
      [["--api-key", ""], /^--api-key must not be empty/],
      [
        ["--eviction-policy", "mru"],
        /^--eviction-policy must be one of lru, predictive, least-stale, got "mru"/,
      ],
      [["--bogus"], /bogus/],
      [["stray"], /stray/],
    ];
    for (const [args, want] of bad) {
      await assert.rejects(() => parseServeArgs(args, noEnv), (e: unknown) => {
        assert.ok(e instanceof UsageError, `${args.join(" ")}: ${e}`);
        assert.match(e.message, want, args.join(" "));
        return true;
      });
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("serve flags: loopback hosts", () => {
  for (const h of ["127.0.0.1", "127.1.2.3", "localhost", "::1"]) assert.ok(isLoopback(h), h);
  for (const h of ["0.0.0.0", "::", "192.168.1.2", "example.com"]) assert.ok(!isLoopback(h), h);
});
