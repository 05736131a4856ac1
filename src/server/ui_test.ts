import assert from "node:assert/strict";
import { isUiPath, uiResponse, wantsHtml } from "./ui.ts";

Deno.test("wantsHtml: browsers get the page, curl / fetch / JSON clients get JSON", () => {
  // Chromium's and Firefox's navigation Accept headers
  assert.equal(
    wantsHtml(
      "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8",
    ),
    true,
  );
  assert.equal(wantsHtml("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"), true);
  assert.equal(wantsHtml("*/*"), false); // curl, fetch
  assert.equal(wantsHtml(""), false);
  assert.equal(wantsHtml("application/json"), false);
  assert.equal(wantsHtml("application/json, text/html;q=0.5"), false);
  assert.equal(wantsHtml("text/html, application/json"), false, "a tie goes to JSON");
  assert.equal(wantsHtml("text/html;q=0"), false);
});

Deno.test("uiResponse: the page and its files, with a strict CSP; 404 for others", async () => {
  const page = await uiResponse("/");
  assert.equal(page.status, 200);
  assert.match(page.headers.get("content-type")!, /^text\/html/);
  const csp = page.headers.get("content-security-policy")!;
  assert.match(csp, /script-src 'self'/);
  assert.doesNotMatch(csp, /unsafe-inline/);
  assert.equal(page.headers.get("x-content-type-options"), "nosniff");
  const html = await page.text();
  // every script and stylesheet the page names is served, and nothing inline runs
  const refs = [...html.matchAll(/(?:src|href)="(\/ui\/[^"]+)"/g)].map((m) => m[1]!);
  assert.deepEqual(refs.sort(), ["/ui/app.css", "/ui/app.js"]);
  assert.doesNotMatch(html, /<script>|<style>| on[a-z]+=/);
  for (const path of [...refs, "/ui/markdown.js"]) {
    assert.ok(isUiPath(path), path);
    const r = await uiResponse(path);
    assert.equal(r.status, 200, path);
    assert.ok((await r.text()).length > 100, path);
  }
  const js = await (await uiResponse("/ui/app.js")).text();
  assert.match(js, /from "\.\/markdown\.js"/);
  assert.doesNotMatch(js + await (await uiResponse("/ui/markdown.js")).text(), /innerHTML/);
  const missing = await uiResponse("/ui/nope.js");
  assert.equal(missing.status, 404);
  await missing.body?.cancel();
  assert.equal(isUiPath("/ui/../ui.ts"), false);
});
