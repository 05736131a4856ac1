/**
 * Soak: a real `serve` process (a subprocess, so a crash is seen, not
 * suffered) on a converted model with experts streaming from
 * `--expert-dir` (`--cache-size-gb 0`, so files are read all the time),
 * under a mix of normal, streamed, cancelled, hostile and fault-injected
 * requests for a bounded time. Faults: an expert file truncated, deleted,
 * replaced by another expert's file or with a flipped byte, then restored.
 * The server's RSS, open file descriptors and expert GPU memory are sampled
 * throughout.
 *
 * Every answer served as a success is compared with the answer the same
 * greedy request got before any fault: a difference is a wrong answer.
 * During a fault a request may fail (500 naming the file); after the
 * restore it must succeed again. The report: crashes, wrong answers,
 * requests not recovered after a restore, unexpected statuses, counts per
 * kind, and RSS/fd/GPU memory at the start and end of the run (after a
 * warm-up) with their growth.
 *
 * ```sh
 * deno run -A bench/soak.ts [--seconds 600] [--seed 1]
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";
import { convertGguf } from "../src/convert/convert.ts";
import { ensureDemoModel } from "../src/server/demo.ts";
import { readSse } from "../src/server/sse.ts";
import { Rng } from "../src/util/rng.ts";
import { intFlag, note, roundNumbers } from "./_util.ts";

/** Options of {@linkcode runSoakBench}. */
export interface SoakOptions {
  /** Seconds of mixed load. */
  seconds: number;
  /** Seed of the mix. */
  seed?: number;
  /** The GGUF to convert and serve (default the demo model). */
  model?: string;
  /** Progress lines (default stderr). */
  log?: (line: string) => void;
}

/** One resource sample of the server process. */
export interface SoakSample {
  /** Seconds since the load started. */
  t: number;
  /** Resident set size, MiB. */
  rssMiB: number;
  /** Open file descriptors. */
  fds: number;
  /** Expert pool GPU bytes allocated and resident, MiB (from /metrics). */
  gpuAllocatedMiB: number;
  gpuResidentMiB: number;
}

/** What {@linkcode runSoakBench} reports. */
export interface SoakReport {
  bench: "soak";
  seconds: number;
  requests: number;
  byKind: Record<string, number>;
  byStatus: Record<string, number>;
  /** The server process died. */
  crashes: number;
  /** 200 answers that differ from the fault-free answer. */
  wrongAnswers: number;
  /** Requests after a restore that did not succeed. */
  notRecovered: number;
  /** Statuses other than the ones each kind may get (e.g. a 500 with no fault active). */
  unexpected: number;
  /** Fault requests answered with an error naming the file (the rest were served right). */
  faultErrors: number;
  /** The first few problems, for reading. */
  problems: string[];
  rss: { startMiB: number; endMiB: number; growth: number };
  fds: { start: number; end: number };
  gpu: { allocatedStartMiB: number; allocatedEndMiB: number; residentMaxMiB: number };
  samples: SoakSample[];
}

const MIB = 1024 * 1024;

function procSample(pid: number): { rssMiB: number; fds: number } {
  const status = Deno.readTextFileSync(`/proc/${pid}/status`);
  const kb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
  let fds = 0;
  for (const _ of Deno.readDirSync(`/proc/${pid}/fd`)) fds++;
  return { rssMiB: kb / 1024, fds };
}

async function rawHttp(port: number, text: string, halfClose: boolean): Promise<number> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await conn.write(new TextEncoder().encode(text));
    if (halfClose) await conn.closeWrite();
    const buf = new Uint8Array(1024);
    let got = "";
    const deadline = setTimeout(() => conn.close(), 10_000);
    try {
      while (!got.includes("\r\n")) {
        const n = await conn.read(buf);
        if (n === null) break;
        got += new TextDecoder().decode(buf.subarray(0, n));
      }
    } catch {
      // closed by the deadline
    } finally {
      clearTimeout(deadline);
    }
    return Number(/^HTTP\/1\.1 (\d{3})/.exec(got)?.[1] ?? 0);
  } finally {
    try {
      conn.close();
    } catch {
      // closed already
    }
  }
}

/** Runs the soak; resolves with the report (the server is stopped). */
export async function runSoakBench(o: SoakOptions): Promise<SoakReport> {
  const log = o.log ?? note;
  const rng = new Rng(o.seed ?? 1);
  const gguf = o.model ?? await ensureDemoModel();
  const work = await Deno.makeTempDir({ prefix: "od-moe-soak-" });
  const out = `${work}/converted`;
  await convertGguf({ input: gguf, output: out, outputDtype: "keep", sync: false });
  const expertFiles: string[] = [];
  for (const l of Deno.readDirSync(`${out}/experts`)) {
    if (!l.isDirectory) continue;
    for (const f of Deno.readDirSync(`${out}/experts/${l.name}`)) {
      expertFiles.push(`${out}/experts/${l.name}/${f.name}`);
    }
  }
  expertFiles.sort();
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      "--unstable-no-legacy-abort",
      new URL("../src/server/main.ts", import.meta.url).pathname,
      "--base-weights",
      `${out}/base_model`,
      "--expert-dir",
      `${out}/experts`,
      "--cache-size-gb",
      "0",
      "--port",
      "0",
      "--quiet",
      "--body-timeout-s",
      "2",
      "--max-queue",
      "64",
    ],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let exited: Deno.CommandStatus | undefined;
  const status = child.status.then((s) => exited = s);
  const stderr = new Response(child.stderr).text();
  const problems: string[] = [];
  const problem = (p: string) => {
    if (problems.length < 20) problems.push(p);
  };
  const byKind: Record<string, number> = {};
  const byStatus: Record<string, number> = {};
  const samples: SoakSample[] = [];
  let wrongAnswers = 0;
  let notRecovered = 0;
  let unexpected = 0;
  let faultErrors = 0;
  let requests = 0;
  try {
    // the URL, then the model loaded
    const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let text = "";
    let url = "";
    while (!url) {
      const { value, done } = await lines.read();
      if (done) throw new Error(`serve exited before listening: ${await stderr}`);
      text += value;
      url = /listening on (http:\/\/\S+)/.exec(text)?.[1] ?? "";
    }
    lines.releaseLock();
    child.stdout.cancel().catch(() => {});
    const port = Number(new URL(url).port);
    for (;;) {
      const h = await fetch(`${url}/health`).catch(() => undefined);
      await h?.body?.cancel();
      if (h?.status === 200) break;
      if (exited) throw new Error(`serve exited while loading: ${await stderr}`);
      await new Promise((r) => setTimeout(r, 200));
    }
    const count = (kind: string, st: number) => {
      requests++;
      byKind[kind] = (byKind[kind] ?? 0) + 1;
      byStatus[st] = (byStatus[st] ?? 0) + 1;
    };
    const prompts = ["The cat sat on", "Once upon a time", "One, two, three,", "Hello there"];
    const generate = async (
      i: number,
    ): Promise<{ status: number; tokens?: number[]; message?: string }> => {
      const r = await fetch(`${url}/generate`, {
        method: "POST",
        body: JSON.stringify({ prompt: prompts[i], max_tokens: 8, temperature: 0 }),
      });
      const b = await r.json();
      return {
        status: r.status,
        tokens: r.status === 200 ? b.tokens : undefined,
        message: b.error?.message,
      };
    };
    const chat = async (i: number): Promise<{ status: number; text?: string }> => {
      const r = await fetch(`${url}/v1/chat/completions`, {
        method: "POST",
        body: JSON.stringify({
          messages: [{ role: "user", content: prompts[i] }],
          max_tokens: 8,
          temperature: 0,
          stream: true,
        }),
      });
      let t = "";
      let failed = false;
      for await (const e of readSse(r.body!)) {
        if (e.data === "[DONE]") break;
        const d = JSON.parse(e.data);
        if (d.error) failed = true;
        t += d.choices?.[0]?.delta?.content ?? "";
      }
      return { status: failed ? 500 : r.status, text: failed ? undefined : t };
    };
    // the fault-free answers
    const wantTokens: number[][] = [];
    const wantText: string[] = [];
    for (let i = 0; i < prompts.length; i++) {
      const g = await generate(i);
      const c = await chat(i);
      if (g.status !== 200 || c.status !== 200) throw new Error("the clean server failed");
      wantTokens.push(g.tokens!);
      wantText.push(c.text!);
    }
    /** A request; `faulty` names the damaged file, which a 500 must name with its layer and expert. */
    const checkGenerate = async (kind: string, faulty?: string): Promise<boolean> => {
      const i = rng.int(prompts.length);
      const g = await generate(i);
      count(kind, g.status);
      if (g.status === 200) {
        if (JSON.stringify(g.tokens) !== JSON.stringify(wantTokens[i])) {
          wrongAnswers++;
          problem(`${kind}: wrong tokens for prompt ${i}: ${g.tokens}`);
        }
        return true;
      }
      if (g.status === 500 && faulty) {
        const name = faulty.slice(faulty.lastIndexOf("/") + 1);
        if (!(g.message?.includes(name) && /expert \d+ of layer \d+/.test(g.message))) {
          unexpected++;
          problem(`${kind}: a 500 that does not name ${name}, its layer and expert: ${g.message}`);
        }
        faultErrors++;
        return false;
      }
      unexpected++;
      problem(`${kind}: status ${g.status}`);
      return false;
    };

    const t0 = performance.now();
    const elapsed = () => (performance.now() - t0) / 1000;
    let sampling = true;
    const sampler = (async () => {
      while (sampling && !exited) {
        try {
          const p = procSample(child.pid);
          const m = await (await fetch(`${url}/metrics`)).json();
          samples.push({
            t: elapsed(),
            rssMiB: p.rssMiB,
            fds: p.fds,
            gpuAllocatedMiB: (m.experts?.allocated_bytes ?? 0) / MIB,
            gpuResidentMiB: (m.experts?.resident_bytes ?? 0) / MIB,
          });
        } catch {
          // the process is gone: the main loop reports it
        }
        await new Promise((r) => setTimeout(r, 1000));
      }
    })();
    const head = (extra: string) =>
      `POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\n${extra}Connection: close\r\n`;
    const hostile: [string, () => Promise<number>, number][] = [
      [
        "cut body",
        () => rawHttp(port, head("Content-Length: 100\r\n") + '\r\n{"prompt":', true),
        400,
      ],
      [
        "foreign Host",
        () =>
          rawHttp(
            port,
            `POST /generate HTTP/1.1\r\nHost: evil.example\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}`,
            false,
          ),
        403,
      ],
      [
        "cross-site",
        async () => {
          const r = await fetch(`${url}/generate`, {
            method: "POST",
            headers: { origin: "https://evil.example", "content-type": "text/plain" },
            body: '{"prompt":"x"}',
          });
          await r.body?.cancel();
          return r.status;
        },
        403,
      ],
      [
        "bad JSON",
        async () => {
          const r = await fetch(`${url}/generate`, { method: "POST", body: '{"prompt": ' });
          await r.body?.cancel();
          return r.status;
        },
        400,
      ],
      ["too large", () => rawHttp(port, head("Content-Length: 9000000\r\n") + "\r\n", false), 413],
      ["slow body", () => rawHttp(port, head("Content-Length: 50\r\n") + '\r\n{"pro', false), 408],
    ];
    let last = 0;
    while (elapsed() < o.seconds && !exited) {
      const r = rng.next();
      if (r < 0.3) {
        await checkGenerate("normal");
      } else if (r < 0.5) {
        const i = rng.int(prompts.length);
        const c = await chat(i);
        count("streamed", c.status);
        if (c.status !== 200) {
          unexpected++;
          problem(`streamed: status ${c.status}`);
        } else if (c.text !== wantText[i]) {
          wrongAnswers++;
          problem(`streamed: wrong text for prompt ${i}: ${JSON.stringify(c.text)}`);
        }
      } else if (r < 0.62) {
        const ac = new AbortController();
        const res = await fetch(`${url}/generate`, {
          method: "POST",
          body: JSON.stringify({ prompt: prompts[0], max_tokens: 64, stream: true }),
          signal: ac.signal,
        });
        count("cancelled", res.status);
        const it = readSse(res.body!);
        await it.next();
        ac.abort();
        await it.return(undefined).catch(() => {});
      } else if (r < 0.77) {
        const [name, send, want] = hostile[rng.int(hostile.length)]!;
        const st = await send();
        count("hostile", st);
        if (st !== want) {
          unexpected++;
          problem(`hostile ${name}: status ${st}, want ${want}`);
        }
      } else {
        const file = expertFiles[rng.int(expertFiles.length)]!;
        const saved = await Deno.readFile(file);
        const mode = rng.int(4);
        if (mode === 0) await Deno.truncate(file, Math.max(0, saved.length - 1088));
        else if (mode === 1) await Deno.remove(file);
        else if (mode === 2) {
          const other = expertFiles[(expertFiles.indexOf(file) + 1) % expertFiles.length]!;
          await Deno.copyFile(other, `${file}.tmp`);
          await Deno.rename(`${file}.tmp`, file);
        } else {
          const bad = saved.slice();
          bad[bad.length - 1 - rng.int(Math.min(bad.length, 4096))]! ^= 0x10;
          await Deno.writeFile(file, bad);
        }
        for (let k = 0; k < 2; k++) await checkGenerate("fault", file);
        await Deno.writeFile(`${file}.tmp`, saved);
        await Deno.rename(`${file}.tmp`, file);
        if (!(await checkGenerate("after restore"))) {
          notRecovered++;
          problem(`not recovered after restoring ${file} (mode ${mode})`);
        }
      }
      if (elapsed() - last >= 10) {
        last = elapsed();
        log(`soak: ${last.toFixed(0)} s, ${requests} requests, ${wrongAnswers} wrong`);
      }
    }
    sampling = false;
    await sampler;
  } finally {
    if (!exited) child.kill("SIGTERM");
    const timer = setTimeout(() => {
      try {
        child.kill("SIGKILL");
      } catch {
        // gone
      }
    }, 10_000);
    await status;
    clearTimeout(timer);
    await Deno.remove(work, { recursive: true }).catch(() => {});
  }
  const err = await stderr;
  const crashed = exited !== undefined && exited.signal !== "SIGTERM" && exited.code !== 0;
  if (crashed) problem(`serve died: ${JSON.stringify(exited)}: ${err.slice(-2000)}`);
  // start = after the first quarter (pipelines compiled, caches filled)
  const warm = samples.filter((s) => s.t >= o.seconds / 4);
  const first = warm[0] ?? samples[0];
  const lastS = samples.at(-1);
  return roundNumbers({
    bench: "soak" as const,
    seconds: o.seconds,
    requests,
    byKind,
    byStatus,
    crashes: crashed ? 1 : 0,
    wrongAnswers,
    notRecovered,
    unexpected,
    faultErrors,
    problems,
    rss: {
      startMiB: first?.rssMiB ?? 0,
      endMiB: lastS?.rssMiB ?? 0,
      growth: first && lastS ? lastS.rssMiB / first.rssMiB - 1 : 0,
    },
    fds: { start: first?.fds ?? 0, end: lastS?.fds ?? 0 },
    gpu: {
      allocatedStartMiB: first?.gpuAllocatedMiB ?? 0,
      allocatedEndMiB: lastS?.gpuAllocatedMiB ?? 0,
      residentMaxMiB: Math.max(0, ...samples.map((s) => s.gpuResidentMiB)),
    },
    samples,
  }, 4);
}

/** One line for `deno task bench`. */
export function soakSummary(r: Record<string, unknown>): string {
  const s = r as unknown as SoakReport;
  return `soak ${s.seconds} s: ${s.requests} requests, ${s.crashes} crashes, ${s.wrongAnswers} wrong, ` +
    `${s.notRecovered} not recovered, ${s.unexpected} unexpected; RSS ${s.rss.startMiB}→${s.rss.endMiB} MiB, ` +
    `fds ${s.fds.start}→${s.fds.end}`;
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: { seconds: { type: "string" }, seed: { type: "string" }, model: { type: "string" } },
  });
  const r = await runSoakBench({
    seconds: intFlag("seconds", values.seconds, 600),
    seed: intFlag("seed", values.seed, 1),
    model: values.model,
  });
  const { samples, ...rest } = r;
  // the resource series at about one point a minute, to read its trend
  const step = Math.max(1, Math.round(samples.length / 10));
  const series = samples.filter((_, i) => i % step === 0 || i === samples.length - 1)
    .map((s) => [Math.round(s.t), s.rssMiB, s.fds, s.gpuResidentMiB]);
  console.log(
    JSON.stringify({ ...rest, series: { columns: ["t", "rssMiB", "fds", "gpuMiB"], series } }),
  );
  note(soakSummary(r as unknown as Record<string, unknown>));
  Deno.exit(r.crashes + r.wrongAnswers + r.notRecovered + r.unexpected > 0 ? 1 : 0);
}
