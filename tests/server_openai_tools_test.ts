/**
 * Tool calling, structured output and log probabilities through the
 * official `openai` client, unchanged but for `baseURL`, against the real
 * server on a generated model (random weights, the built-in vocabulary)
 * that carries Qwen3's chat template (tools, `<tool_call>`, `<think>`).
 * An untrained model never calls a tool by itself, so the calls here are
 * forced (`tool_choice` "required" or a named function) and the JSON
 * answers come from constrained decoding: what is checked is what a user
 * relies on, that the output is a well-formed call or document that
 * validates against the schema sent (ajv), streamed or not.
 */

import assert from "node:assert/strict";
import { Ajv, OpenAI } from "../dev/ref/packages.ts";
import { llamaSourceDir } from "../dev/ref/llama_src.ts";
import { startServer } from "../src/server/app.ts";
import { demoModelSpec, syntheticModel } from "../src/model/synthetic.ts";
import { writeGgufFile } from "../src/gguf/writer.ts";
import { Keys } from "../src/gguf/names.ts";
import { gv } from "../src/gguf/value.ts";
import { gpuTest } from "../dev/gpu.ts";

const WEATHER_PARAMS = {
  type: "object",
  properties: {
    location: { type: "string", description: "City and country e.g. Bogotá, Colombia" },
    unit: { type: "string", enum: ["celsius", "fahrenheit"] },
  },
  required: ["location", "unit"],
  additionalProperties: false,
};

const TOOLS: OpenAI.ChatCompletionFunctionTool[] = [
  {
    type: "function",
    function: {
      name: "get_weather",
      description: "Get current temperature for a given location.",
      parameters: WEATHER_PARAMS,
      strict: true,
    },
  },
  {
    type: "function",
    function: {
      name: "get_time",
      description: "The time in a time zone.",
      parameters: {
        type: "object",
        properties: { zone: { type: "string", enum: ["UTC", "CET", "PST"] } },
        required: ["zone"],
      },
    },
  },
];

/**
 * Room for a forced call: the random model spells the call's fixed text
 * with short tokens (~60), and the length budget closes the strings in time.
 */
const MAX_CALL_TOKENS = 100;

const MATH_SCHEMA = {
  type: "object",
  properties: {
    steps: {
      type: "array",
      items: {
        type: "object",
        properties: { explanation: { type: "string" }, output: { type: "string" } },
        required: ["explanation", "output"],
        additionalProperties: false,
      },
      maxItems: 1,
    },
    final_answer: { type: "integer" },
  },
  required: ["steps", "final_answer"],
  additionalProperties: false,
};

/** A function tool call (the only kind this server makes). */
function fnCall(
  c: OpenAI.ChatCompletionMessageToolCall | undefined,
): OpenAI.ChatCompletionMessageFunctionToolCall {
  if (c?.type !== "function") throw new Error(`not a function call: ${JSON.stringify(c)}`);
  return c;
}

async function toolModel(dir: string): Promise<string> {
  const template = await Deno.readTextFile(
    `${await llamaSourceDir()}/models/templates/Qwen-Qwen3-0.6B.jinja`,
  );
  const spec = demoModelSpec();
  spec.name = "od-moe tools test (random weights)";
  const vocab = spec.vocab!;
  spec.vocab = {
    nTokens: vocab.nTokens,
    entries: vocab.entries.map(([k, v]) =>
      k === Keys.tokenizerChatTemplate ? [k, gv.str(template)] as const : [k, v] as const
    ),
  };
  const path = `${dir}/qwen3-template.gguf`;
  await writeGgufFile(path, syntheticModel(spec));
  return path;
}

gpuTest({
  name: "server: the openai client's tool calls, structured outputs and logprobs",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn(_gpu, t) {
    const dir = await Deno.makeTempDir({ prefix: "odmoe-tools-" });
    const server = await startServer({
      port: 0,
      engineOptions: { model: await toolModel(dir), nCtx: 1024 },
    });
    const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "none", maxRetries: 0 });
    const model = server.engine.info.name;
    const ajv = new Ajv({ strict: false });
    const messages: OpenAI.ChatCompletionMessageParam[] = [
      { role: "user", content: "What is the weather like in Paris today?" },
    ];
    try {
      let call: OpenAI.ChatCompletionMessageFunctionToolCall | undefined;
      await t.step("tool_choice required: a call to an offered tool, arguments valid", async () => {
        const plain = await client.chat.completions.create({
          model,
          messages,
          max_tokens: 4,
          temperature: 0,
        });
        const r = await client.chat.completions.create({
          model,
          messages,
          tools: TOOLS,
          tool_choice: "required",
          max_tokens: MAX_CALL_TOKENS,
          temperature: 0,
        });
        const c = r.choices[0]!;
        assert.equal(c.finish_reason, "tool_calls");
        assert.equal(c.message.content, null);
        assert.equal(c.message.tool_calls?.length, 1);
        call = fnCall(c.message.tool_calls?.[0]);
        assert.equal(call.type, "function");
        assert.match(call.id, /^call_/);
        const tool = TOOLS.find((x) => x.function.name === call!.function.name);
        assert.ok(tool, `called ${call.function.name}, which was not offered`);
        const args = JSON.parse(call.function.arguments);
        const ok = ajv.validate(tool.function.parameters!, args);
        assert.ok(ok, `${call.function.arguments}: ${JSON.stringify(ajv.errors)}`);
        // the tools were rendered into the prompt by the template, as /apply-template shows
        assert.ok(r.usage!.prompt_tokens > plain.usage!.prompt_tokens + 50);
        const applied = await (await fetch(`${server.url}/apply-template`, {
          method: "POST",
          body: JSON.stringify({ messages, tools: TOOLS, tool_choice: "required" }),
        })).json();
        assert.match(applied.prompt, /<tools>[\s\S]*"get_weather"[\s\S]*<\/tools>/);
        const ids = server.engine.tokenizer.encode(applied.prompt);
        assert.equal(ids.length, r.usage!.prompt_tokens);
      });

      await t.step(
        "runTools (the client's tool loop) calls our function with parsed arguments",
        async () => {
          const seen: unknown[] = [];
          const runner = client.chat.completions.runTools({
            model,
            messages,
            max_tokens: MAX_CALL_TOKENS,
            temperature: 0,
            tool_choice: { type: "function", function: { name: "get_weather" } },
            tools: [{
              type: "function",
              function: {
                name: "get_weather",
                description: "Get current temperature for a given location.",
                function: (args: { location: string; unit: string }) => {
                  seen.push(args);
                  return { temperature: 21, unit: args.unit };
                },
                parse: JSON.parse,
                parameters: WEATHER_PARAMS,
              },
            }],
          });
          await runner.done();
          assert.equal(seen.length, 1);
          assert.ok(ajv.validate(WEATHER_PARAMS, seen[0]), JSON.stringify(seen[0]));
          // the tool's answer went back as a tool message
          assert.ok(runner.messages.some((m) => m.role === "tool"));
        },
      );

      await t.step("streamed, the runner assembles the same call from the deltas", async () => {
        const runner = client.chat.completions.stream({
          model,
          messages,
          tools: TOOLS,
          tool_choice: "required",
          max_tokens: MAX_CALL_TOKENS,
          temperature: 0,
        });
        // the arguments come in pieces as they are generated, after a delta that names the call
        const deltas: OpenAI.ChatCompletionChunk.Choice.Delta.ToolCall[] = [];
        runner.on("chunk", (c) => deltas.push(...c.choices[0]?.delta.tool_calls ?? []));
        const final = await runner.finalChatCompletion();
        const [first, ...rest] = deltas;
        assert.equal(first?.index, 0);
        assert.equal(first?.type, "function");
        assert.match(first?.id ?? "", /^call_/);
        assert.deepEqual(first?.function, { name: call!.function.name, arguments: "" });
        assert.ok(rest.length > 1, `${rest.length} arguments fragments`);
        for (const d of rest) {
          assert.deepEqual(Object.keys(d).sort(), ["function", "index"]);
          assert.deepEqual(Object.keys(d.function!), ["arguments"]);
        }
        assert.equal(rest.map((d) => d.function!.arguments).join(""), call!.function.arguments);
        const got = fnCall(final.choices[0]!.message.tool_calls?.[0]);
        assert.equal(final.choices[0]!.finish_reason, "tool_calls");
        assert.equal(final.choices[0]!.message.tool_calls!.length, 1);
        assert.equal(got.function.name, call!.function.name);
        assert.equal(got.function.arguments, call!.function.arguments);
      });

      await t.step(
        "the tool result goes back through the template (tool role, tool_calls)",
        async () => {
          const r = await client.chat.completions.create({
            model,
            messages: [
              ...messages,
              { role: "assistant", content: null, tool_calls: [call!] },
              { role: "tool", tool_call_id: call!.id, content: '{"temperature": 21}' },
            ],
            tools: TOOLS,
            max_tokens: 4,
            temperature: 0,
          });
          assert.equal(typeof r.choices[0]!.message.content, "string");
          assert.ok(
            r.choices[0]!.finish_reason === "length" || r.choices[0]!.finish_reason === "stop",
          );
        },
      );

      await t.step(
        "response_format json_schema: parse() returns an object the schema accepts",
        async () => {
          const validate = ajv.compile(MATH_SCHEMA);
          const r = await client.chat.completions.parse({
            model,
            messages: [{ role: "user", content: "how can I solve 8x + 7 = -23" }],
            response_format: {
              type: "json_schema",
              json_schema: { name: "math_response", schema: MATH_SCHEMA, strict: true },
            },
            max_tokens: 50,
            temperature: 0,
          });
          const parsed = r.choices[0]!.message.parsed;
          assert.ok(
            validate(parsed),
            `${r.choices[0]!.message.content}: ${JSON.stringify(validate.errors)}`,
          );
          // streamed: the same document
          const s = client.chat.completions.stream({
            model,
            messages: [{ role: "user", content: "how can I solve 8x + 7 = -23" }],
            response_format: {
              type: "json_schema",
              json_schema: { name: "math_response", schema: MATH_SCHEMA, strict: true },
            },
            max_tokens: 50,
            temperature: 0,
          });
          const final = await s.finalChatCompletion();
          assert.equal(final.choices[0]!.message.content, r.choices[0]!.message.content);
        },
      );

      await t.step(
        "response_format json_object with sampling: a JSON object every time",
        async () => {
          for (const seed of [1, 2]) {
            const r = await client.chat.completions.create({
              model,
              messages: [{ role: "user", content: "Describe a cat as JSON." }],
              response_format: { type: "json_object" },
              max_tokens: 32,
              temperature: 1,
              seed,
            });
            const v = JSON.parse(r.choices[0]!.message.content!);
            assert.ok(typeof v === "object" && v !== null && !Array.isArray(v));
          }
        },
      );

      await t.step("a schema keyword that cannot be enforced is a 400 naming it", async () => {
        await assert.rejects(
          () =>
            client.chat.completions.create({
              model,
              messages,
              response_format: {
                type: "json_schema",
                json_schema: {
                  name: "zip",
                  schema: {
                    type: "object",
                    properties: { zip: { type: "string", pattern: "^\\d+$" } },
                  },
                },
              },
            }),
          (e: unknown) => {
            assert.ok(e instanceof OpenAI.BadRequestError, String(e));
            assert.equal(e.param, "response_format.json_schema.schema.properties.zip.pattern");
            return true;
          },
        );
        await assert.rejects(
          () =>
            client.chat.completions.create({
              model,
              messages,
              tools: TOOLS,
              tool_choice: { type: "function", function: { name: "send_email" } },
            }),
          (e: unknown) =>
            e instanceof OpenAI.BadRequestError && e.param === "tool_choice.function.name",
        );
      });

      await t.step(
        "logprobs: greedy text unchanged, the chosen token is the most likely",
        async () => {
          const base = { model, messages, max_tokens: 8, temperature: 0 };
          const plain = await client.chat.completions.create(base);
          const r = await client.chat.completions.create({
            ...base,
            logprobs: true,
            top_logprobs: 3,
          });
          const c = r.choices[0]!;
          assert.equal(c.message.content, plain.choices[0]!.message.content);
          // the same prompt again: its KV cache is reused on either path
          const full = r.usage!.prompt_tokens - 1;
          assert.equal(r.usage!.prompt_tokens_details?.cached_tokens, full);
          const lps = c.logprobs!.content!;
          assert.equal(lps.length, r.usage!.completion_tokens);
          for (const lp of lps) {
            assert.ok(lp.logprob <= 0);
            assert.equal(lp.top_logprobs.length, 3);
            assert.equal(lp.top_logprobs[0]!.token, lp.token);
            assert.ok(Math.abs(lp.top_logprobs[0]!.logprob - lp.logprob) < 1e-9);
            assert.ok(lp.top_logprobs[1]!.logprob <= lp.top_logprobs[0]!.logprob);
          }
          // streamed: one entry per token, the same values
          const stream = await client.chat.completions.create({
            ...base,
            logprobs: true,
            top_logprobs: 3,
            stream: true,
            stream_options: { include_usage: true },
          });
          const streamed: OpenAI.ChatCompletionTokenLogprob[] = [];
          let cached: number | undefined;
          for await (const ch of stream) {
            streamed.push(...ch.choices[0]?.logprobs?.content ?? []);
            if (ch.usage) cached = ch.usage.prompt_tokens_details?.cached_tokens;
          }
          assert.deepEqual(streamed, lps);
          assert.equal(cached, full);
          // the completions endpoint's columns
          const comp = await client.completions.create({
            model,
            prompt: "Once upon a time",
            max_tokens: 6,
            temperature: 0,
            logprobs: 2,
          });
          const cl = comp.choices[0]!.logprobs!;
          assert.equal(cl.tokens!.join(""), comp.choices[0]!.text);
          assert.equal(cl.token_logprobs!.length, cl.tokens!.length);
          assert.equal(Object.keys(cl.top_logprobs![0]!).length, 2);
        },
      );
    } finally {
      await server.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});
