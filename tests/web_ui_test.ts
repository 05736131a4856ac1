/**
 * The chat page in a real browser: Debian's Chromium, headless, driven by
 * playwright-core over its pipe (nothing downloads a browser), against the
 * server on a free loopback port with the real engine on the trained demo
 * model (`data/kjv-moe-Q8_0.gguf`) served as `deno task serve` serves it: a
 * third of its experts' bytes, prefetch on (experts stream). The page loads, a message
 * streams in and matches the API's own reply, the experts grid changes
 * while the reply streams, Stop cancels the generation on the server, model
 * output that holds markup stays text, `--api-key` makes the page ask for
 * the key, a full queue and a loading model are said plainly.
 *
 * Set `OD_MOE_SCREENSHOT=docs/web_ui.png` to write the README's screenshot
 * (taken mid-reply); otherwise it goes to a temporary file.
 */

import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { type BrowserContext, chromium, type Page } from "../dev/ref/packages.ts";
import { type RunningServer, startServer } from "../src/server/app.ts";
import { trainedDemoModel } from "../src/server/demo.ts";
import { Engine } from "../src/generate/engine.ts";
import { gpuTest } from "../dev/gpu.ts";

const REPO = fileURLToPath(new URL("../", import.meta.url)).replace(/\/$/, "");
const CHROMIUM = "/usr/bin/chromium";
const haveChromium = (() => {
  try {
    return Deno.statSync(CHROMIUM).isFile;
  } catch {
    return false;
  }
})();
// CI installs Chromium (.ci/run), so there a missing browser fails the test
const inCi = Deno.env.get("CI") === "true";
if (!haveChromium && !inCi) {
  console.log(`web_ui_test: skipped: no ${CHROMIUM} (apt-get install chromium)`);
}

const TIMEOUT = 90_000;

async function launch(): Promise<{ ctx: BrowserContext; close: () => Promise<void> }> {
  const dir = await Deno.makeTempDir({ prefix: "od-moe-chromium-" });
  // a fresh profile (playwright passes it as --user-data-dir)
  const ctx = await chromium.launchPersistentContext(dir, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1280, height: 760 },
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  ctx.setDefaultTimeout(TIMEOUT);
  return {
    ctx,
    close: async () => {
      await ctx.close();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    },
  };
}

/** A new page that fails the test on any script error. */
async function open(ctx: BrowserContext, url: string, errors: string[]): Promise<Page> {
  const page = await ctx.newPage();
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(url);
  return page;
}

async function setSettings(page: Page, s: { temperature?: number; maxTokens?: number }) {
  if (await page.locator("#settings").isHidden()) await page.click("#toggle-settings");
  if (s.temperature !== undefined) await page.fill("#temperature", String(s.temperature));
  if (s.maxTokens !== undefined) await page.fill("#max-tokens", String(s.maxTokens));
}

async function sendMessage(page: Page, text: string): Promise<void> {
  await page.waitForSelector("#send:not([disabled])");
  await page.fill("#prompt", text);
  await page.press("#prompt", "Enter");
}

/** Waits for the last assistant reply to finish; its text and its footer's stats. */
async function lastReply(page: Page) {
  const reply = page.locator("li.msg.assistant").last();
  await reply.locator(".foot").waitFor();
  const stats: Record<string, string> = {};
  for (const s of await reply.locator(".foot [data-stat]").all()) {
    stats[(await s.getAttribute("data-stat"))!] = (await s.textContent())!;
  }
  return { reply, text: (await reply.locator(".content").textContent())!, stats };
}

gpuTest({
  name: "web page: chat and the experts view in Chromium",
  ignore: !haveChromium && !inCi,
  sanitizeResources: false,
  sanitizeOps: false,
  async fn(_gpu, t) {
    if (!haveChromium) throw new Error(`no ${CHROMIUM}: .ci/run should have installed chromium`);
    const demo = trainedDemoModel(`${REPO}/data`);
    if (!demo) throw new Error(`data/kjv-moe-Q8_0.gguf is missing or cut short`);
    // a third of the experts' bytes (about 10 of 32 slots): experts stream, are prefetched, hit
    // and evicted
    const engine = await Engine.load({
      model: demo.path,
      nCtx: 256,
      cacheSizeGB: demo.cacheSizeGB,
      enablePrefetch: true,
    });
    const servers: RunningServer[] = [];
    const browser = await launch();
    const errors: string[] = [];
    let release: (() => void) | undefined;
    try {
      const server = await startServer({ engine, port: 0, maxQueue: 0 });
      servers.push(server);
      const { url } = server;

      await t.step("GET /: the page to a browser, JSON to a JSON client", async () => {
        const r = await fetch(`${url}/`, { headers: { accept: "application/json" } });
        assert.match(r.headers.get("content-type")!, /application\/json/);
        assert.equal((await r.json()).name, "od-moe");
        const curl = await fetch(`${url}/`, { headers: { accept: "*/*" } });
        assert.match(curl.headers.get("content-type")!, /application\/json/);
        await curl.body?.cancel();
        const page = await open(browser.ctx, url, errors);
        assert.equal(await page.title(), "od-moe");
        await page.waitForSelector("#status.ok");
        assert.match((await page.textContent("#model"))!, /· llama · ctx 256$/);
        // the grid: 4 expert layers × 8 experts, 8 pixels or more a cell
        await page.waitForSelector("#grid[data-resident]");
        assert.match((await page.textContent("#experts-shape"))!, /4 layers × 8 experts/);
        assert.ok(await page.locator("#all-resident").isHidden(), "experts stream at a quarter");
        const box = await page.evaluate(() => {
          const c = document.getElementById("grid") as HTMLCanvasElement;
          return { w: c.width, h: c.height };
        });
        assert.equal(box.w / 8, box.h / 4);
        assert.match(
          (await page.textContent("#budget-text"))!,
          /^resident .* of budget [\d.]+ (B|KiB|MiB|GiB)$/,
        );
        await page.close();
      });

      await t.step("a message streams in, equals the API's reply, with its stats", async () => {
        const page = await open(browser.ctx, url, errors);
        await page.waitForSelector("#status.ok");
        await setSettings(page, { temperature: 0, maxTokens: 24 });
        // record the reply's text length at every change while it streams
        await page.evaluate(() => {
          const w = window as unknown as { lengths: number[] };
          w.lengths = [];
          new MutationObserver(() => {
            const c = document.querySelector("li.msg.assistant.streaming .content");
            if (c) w.lengths.push(c.textContent!.length);
          }).observe(document.getElementById("messages")!, {
            subtree: true,
            childList: true,
            characterData: true,
          });
        });
        await sendMessage(page, "The sea");
        const { text, stats } = await lastReply(page);
        const lengths = await page.evaluate(() =>
          (window as unknown as { lengths: number[] }).lengths
        );
        const distinct = new Set(lengths.filter((n) => n > 0 && n < text.length));
        assert.ok(distinct.size >= 1, `text arrived in pieces before the end: ${lengths}`);
        // the same request straight to the API (greedy): the same text
        const r = await fetch(`${url}/v1/chat/completions`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({
            messages: [{ role: "user", content: "The sea" }],
            temperature: 0,
            top_p: 0.95,
            max_tokens: 24,
          }),
        });
        const want = (await r.json()).choices[0].message.content as string;
        assert.ok(want.length > 0);
        // the reply's copy button gives the text as streamed (before Markdown)
        await browser.ctx.grantPermissions(["clipboard-read", "clipboard-write"], { origin: url });
        await page.locator("li.msg.assistant").last().locator(".foot button.copy").click();
        assert.equal(await page.evaluate(() => navigator.clipboard.readText()), want);
        assert.ok(text.length > 0);
        assert.match(stats.tokens!, /^\d+ tokens$/);
        assert.match(stats.ttft!, /^TTFT \d+ ms$/);
        assert.match(stats.loads!, /^\d+ expert loads$/);
        assert.ok(Number(stats.loads!.split(" ")[0]) > 0, "experts were loaded");
        assert.match(stats["hit-rate"]!, /^hit rate \d+%$/);
        assert.ok(["stop", "length"].includes(stats.finish!));
        await page.close();
      });

      await t.step("the experts grid changes while a reply streams (screenshot)", async () => {
        const page = await open(browser.ctx, url, errors);
        await page.waitForSelector("#grid[data-resident]");
        await setSettings(page, { temperature: 0, maxTokens: 64 });
        await page.click("#toggle-settings");
        const pixels = () =>
          page.evaluate(() => (document.getElementById("grid") as HTMLCanvasElement).toDataURL());
        const before = await pixels();
        const changes0 = Number(await page.getAttribute("#grid", "data-changes"));
        await sendMessage(page, "And God said, Let there be light");
        await page.waitForFunction((c0) => {
          const g = document.getElementById("grid")!;
          return document.querySelector("li.msg.assistant.streaming .content")?.textContent &&
            Number(g.dataset.changes) > c0 && Number(g.dataset.frames) >= 2;
        }, changes0);
        const during = await pixels();
        assert.notEqual(during, before, "the grid's pixels changed during the reply");
        const resident = Number(await page.getAttribute("#grid", "data-resident"));
        // a third of 32 experts' bytes holds 10 of them
        assert.ok(resident >= 1 && resident <= 10, `resident ${resident} within the 10 slots`);
        assert.notEqual(await page.textContent("#f-loads"), "–", "loads/s shown");
        // the picture for the README: a few frames into the reply
        await page.waitForFunction(() =>
          Number(document.getElementById("grid")!.dataset.frames) >= 10 ||
          !document.querySelector("li.msg.assistant.streaming")
        );
        const shot = Deno.env.get("OD_MOE_SCREENSHOT") ??
          await Deno.makeTempFile({ prefix: "od-moe-ui-", suffix: ".png" });
        await page.screenshot({ path: shot });
        const png = await Deno.readFile(shot);
        assert.deepEqual([...png.subarray(1, 4)], [0x50, 0x4e, 0x47], "a PNG");
        await lastReply(page);
        await page.close();
      });

      await t.step("Stop cancels the generation on the server", async () => {
        const page = await open(browser.ctx, url, errors);
        await page.waitForSelector("#status.ok");
        // greedy, so the same long reply every run (no end-of-text before Stop)
        await setSettings(page, { temperature: 0, maxTokens: 200 });
        await sendMessage(page, "In the beginning God created the heaven and the earth");
        await page.waitForFunction(() =>
          (document.querySelector("li.msg.assistant.streaming .content")?.textContent ?? "")
            .length > 0
        );
        assert.equal(server.inFlight, 1);
        await page.click("#stop");
        const { text, stats } = await lastReply(page);
        assert.equal(stats.finish, "stopped");
        const t0 = performance.now();
        while (server.inFlight > 0 && performance.now() - t0 < 10_000) {
          await new Promise((r) => setTimeout(r, 20));
        }
        assert.equal(server.inFlight, 0, "the server stopped generating");
        assert.ok(!stats.tokens || Number(stats.tokens.split(" ")[0]) < 200);
        await page.waitForSelector("#send:not([disabled])");
        assert.ok(await page.locator("#stop").isDisabled());
        // the partial reply stays, and does not grow any more
        await new Promise((r) => setTimeout(r, 500));
        assert.equal(
          await page.locator("li.msg.assistant").last().locator(".content").textContent(),
          text,
        );
        await page.close();
      });

      await t.step("a full queue is said plainly", async () => {
        const page = await open(browser.ctx, url, errors);
        await page.waitForSelector("#status.ok");
        // maxQueue 0: while this generation runs, the page's request is refused
        const ac = new AbortController();
        const busy = await fetch(`${url}/v1/completions`, {
          method: "POST",
          body: JSON.stringify({
            prompt: "And the LORD spake unto Moses",
            max_tokens: 200,
            temperature: 0,
            stream: true,
          }),
          signal: ac.signal,
        });
        try {
          await sendMessage(page, "Hello?");
          const { reply } = await lastReply(page);
          assert.match((await reply.locator(".error").textContent())!, /busy.*queue is full/);
        } finally {
          ac.abort();
          await busy.body?.cancel().catch(() => {});
        }
        await page.close();
      });

      await t.step("model output holding markup is shown as text; Markdown renders", async () => {
        const page = await open(browser.ctx, url, errors);
        await page.waitForSelector("#status.ok");
        const pieces = [
          'Here: <img src=x onerror="window.pwned=1">',
          " and <script>window.pwned=2</script>\n\n",
          "**bold** [link](javascript:window.pwned=3) [ok](https://example.com/a)\n\n",
          '```html\n<b onclick="window.pwned=4">x</b>\n```\n',
          "## Title\n- one `<u>x</u>`\n- two\n",
        ];
        const sse = pieces.map((c, i) =>
          `data: ${
            JSON.stringify({
              choices: [{ index: 0, delta: { content: c }, finish_reason: null }],
              ...(i === 0 ? {} : {}),
            })
          }\n\n`
        ).join("") +
          `data: ${
            JSON.stringify({ choices: [{ index: 0, delta: {}, finish_reason: "stop" }] })
          }\n\ndata: [DONE]\n\n`;
        // the model cannot be made to write this: the reply comes from the route
        await page.route(
          "**/v1/chat/completions",
          (route) => route.fulfill({ status: 200, contentType: "text/event-stream", body: sse }),
        );
        await sendMessage(page, "<i>hi</i>");
        const { reply, text } = await lastReply(page);
        const content = reply.locator(".content");
        assert.match(text, /<img src=x onerror="window.pwned=1">/);
        assert.match(text, /<script>window.pwned=2<\/script>/);
        assert.equal(
          await content.locator("img, script, b, i, u").count(),
          0,
          "no element from text",
        );
        assert.equal(await content.locator("strong").textContent(), "bold");
        assert.equal(await content.locator("h4").textContent(), "Title");
        assert.deepEqual(await content.locator("ul > li").allTextContents(), [
          "one <u>x</u>",
          "two",
        ]);
        assert.equal(await content.locator("li code").textContent(), "<u>x</u>");
        assert.equal(
          await content.locator("pre code").textContent(),
          '<b onclick="window.pwned=4">x</b>',
        );
        const links = await content.locator("a").evaluateAll((as) =>
          as.map((a) => (a as HTMLAnchorElement).href)
        );
        assert.deepEqual(links, ["https://example.com/a"], "no javascript: link");
        await content.locator("pre button").click(); // copy does not throw
        // the user's own message is text too
        const user = page.locator("li.msg.user").last();
        assert.equal(await user.locator("i").count(), 0);
        assert.equal(await user.locator(".content").textContent(), "<i>hi</i>");
        await new Promise((r) => setTimeout(r, 200));
        assert.equal(await page.evaluate(() => (window as { pwned?: number }).pwned), undefined);
        await page.close();
      });

      await t.step("settings reach the request; New chat forgets the conversation", async () => {
        const page = await open(browser.ctx, url, errors);
        await page.waitForSelector("#status.ok");
        const bodies: Record<string, unknown>[] = [];
        let n = 0;
        await page.route("**/v1/chat/completions", (route) => {
          bodies.push(route.request().postDataJSON());
          const chunk = (delta: unknown, finish: string | null) =>
            `data: ${
              JSON.stringify({ choices: [{ index: 0, delta, finish_reason: finish }] })
            }\n\n`;
          route.fulfill({
            status: 200,
            contentType: "text/event-stream",
            body: chunk({ content: `reply ${++n}` }, null) + chunk({}, "stop") + "data: [DONE]\n\n",
          });
        });
        await setSettings(page, { temperature: 0.3, maxTokens: 7 });
        await page.fill("#top-p", "0.8");
        await page.fill("#seed", "42");
        await page.fill("#system", "Be brief.");
        await sendMessage(page, "first");
        await lastReply(page);
        await sendMessage(page, "second");
        await lastReply(page);
        assert.deepEqual(bodies[1], {
          messages: [
            { role: "system", content: "Be brief." },
            { role: "user", content: "first" },
            { role: "assistant", content: "reply 1" },
            { role: "user", content: "second" },
          ],
          stream: true,
          stream_options: { include_usage: true },
          temperature: 0.3,
          top_p: 0.8,
          max_tokens: 7,
          seed: 42,
        });
        await page.click("#new-chat");
        assert.equal(await page.locator("li.msg").count(), 0);
        await page.fill("#system", "");
        await page.fill("#seed", "");
        await sendMessage(page, "third");
        await lastReply(page);
        const last = bodies[2]!;
        assert.deepEqual(last.messages, [{ role: "user", content: "third" }]);
        assert.equal("seed" in last, false, "an empty seed is not sent");
        await page.close();
      });

      await t.step(
        "--api-key: the page asks for the key and keeps it for the session",
        async () => {
          const keyed = await startServer({ engine, port: 0, apiKey: "s3cret-key" });
          servers.push(keyed);
          const noKey = await fetch(`${keyed.url}/v1/experts`);
          assert.equal(noKey.status, 401);
          await noKey.body?.cancel();
          const page = await open(browser.ctx, keyed.url, errors);
          await page.waitForSelector("#key-dialog[open]");
          await page.keyboard.press("Escape");
          assert.equal(await page.locator("#key-dialog[open]").count(), 1, "Escape keeps it open");
          await page.fill("#key", "wrong");
          await page.press("#key", "Enter");
          await page.waitForSelector("#key-dialog[open] #key-error:not([hidden])");
          assert.match((await page.textContent("#key-error"))!, /the API key is wrong/);
          await page.fill("#key", "s3cret-key");
          await page.press("#key", "Enter");
          await page.waitForSelector("#grid[data-resident]");
          assert.equal(await page.locator("#key-dialog[open]").count(), 0);
          const stored = await page.evaluate(() => ({
            session: sessionStorage.getItem("od-moe-api-key"),
            local: localStorage.length,
          }));
          assert.deepEqual(stored, { session: "s3cret-key", local: 0 });
          await setSettings(page, { maxTokens: 4 });
          await sendMessage(page, "Hi");
          const { text, stats } = await lastReply(page);
          assert.ok(text.length > 0 && /^\d+ tokens$/.test(stats.tokens!));
          await page.close();
        },
      );

      await t.step("while the model loads: a clear 503 banner, then ready", async () => {
        const gate = new Promise<void>((r) => release = r);
        const loading = await startServer({
          port: 0,
          waitForModel: false,
          // the server owns what load returns: this engine is closed with it
          load: () => gate.then(() => engine),
        });
        servers.push(loading);
        const page = await open(browser.ctx, loading.url, errors);
        await page.waitForSelector("#banner:not([hidden])");
        assert.match((await page.textContent("#banner"))!, /loading \(503\)/);
        assert.ok(await page.locator("#send").isDisabled());
        release!();
        await page.waitForSelector("#status.ok");
        assert.ok(await page.locator("#banner").isHidden());
        await page.waitForSelector("#grid[data-resident]");
        await page.close();
      });
      assert.deepEqual(errors, [], "no script errors on the page");
    } finally {
      release?.();
      await browser.close();
      for (const s of servers.reverse()) await s.close({ graceMs: 0 });
      // the last server owned the engine only if its step got that far
      if (servers.length < 3) engine.close();
    }
  },
});
