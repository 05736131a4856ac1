import assert from "node:assert/strict";
import { statsJson } from "./app.ts";
import { wantsPrometheus } from "./http.ts";

Deno.test("metrics negotiation: Prometheus only when preferred over JSON", () => {
  assert.equal(wantsPrometheus("text/plain"), true);
  assert.equal(wantsPrometheus("text/plain; version=0.0.4"), true);
  // what Prometheus itself sends
  assert.equal(
    wantsPrometheus(
      "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
    ),
    true,
  );
  assert.equal(wantsPrometheus(""), false);
  assert.equal(wantsPrometheus("*/*"), false); // curl
  assert.equal(wantsPrometheus("application/json, text/plain, */*"), false); // axios
  assert.equal(wantsPrometheus("application/json;q=0.5, text/plain"), true);
  assert.equal(wantsPrometheus("text/plain;q=0"), false);
});

Deno.test("statsJson: the /generate stats names, tokens/s falling back to the whole run", () => {
  const s = statsJson({
    promptTokens: 3,
    cachedTokens: 0,
    completionTokens: 1,
    prefillMs: 400,
    decodeMs: 100,
    prefillTokensPerSecond: 7.5,
    decodeTokensPerSecond: 0,
    syncsPerToken: 1,
    submitsPerToken: 1,
    stalls: 0,
    expertLookups: 8,
    expertHits: 6,
    expertMisses: 2,
    cacheHitRate: 0.75,
    expertBytesUploaded: 10,
    finishReason: "length",
  });
  assert.equal(s.tokens_per_second, 2);
  assert.equal(s.expert_loads, 2);
  assert.equal(s.cache_hit_rate, 0.75);
  assert.equal(s.syncs_per_token, 1);
});
