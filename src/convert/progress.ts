/**
 * Progress of a long write: a single redrawn line with a bar, bytes/s and
 * ETA on a terminal, and a plain line every 5 % otherwise (logs, CI).
 *
 * @module
 */

import { formatBytes } from "./plan.ts";

/** Receives progress. */
export interface Progress {
  /** Starts a run of `total` bytes, `done` of them already there (resumed). */
  start(total: number, done: number): void;
  /** `n` more bytes are written (or verified). */
  advance(n: number, counted?: boolean): void;
  /** What is being worked on now (a file name). */
  label(text: string): void;
  /** A message line that must not be mixed into the bar. */
  note(line: string): void;
  /** The run is over (successfully or not). */
  finish(): void;
}

/** A progress that shows nothing. */
export const silentProgress: Progress = {
  start() {},
  advance() {},
  label() {},
  note() {},
  finish() {},
};

function duration(seconds: number): string {
  if (!Number.isFinite(seconds)) return "--:--";
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const pad = (x: number) => String(x).padStart(2, "0");
  return h > 0 ? `${h}:${pad(m)}:${pad(s % 60)}` : `${pad(m)}:${pad(s % 60)}`;
}

/** Shared accounting: bytes done, the rate of this run, and the ETA. */
abstract class Counter implements Progress {
  protected total = 0;
  protected done = 0;
  /** Bytes done by this run (not found done), for the rate. */
  protected ran = 0;
  protected t0 = 0;
  protected current = "";

  constructor(protected readonly write: (text: string) => void) {}

  start(total: number, done: number): void {
    this.total = total;
    this.done = done;
    this.ran = 0;
    this.t0 = performance.now();
  }

  advance(n: number, counted = true): void {
    this.done += n;
    if (counted) this.ran += n;
    this.update();
  }

  label(text: string): void {
    this.current = text;
  }

  abstract note(line: string): void;
  abstract finish(): void;
  protected abstract update(): void;

  protected stats(): { pct: number; rate: number; eta: number } {
    const seconds = (performance.now() - this.t0) / 1000;
    const rate = seconds > 0 ? this.ran / seconds : 0;
    const left = Math.max(0, this.total - this.done);
    return {
      pct: this.total > 0 ? Math.min(100, (100 * this.done) / this.total) : 100,
      rate,
      eta: rate > 0 ? left / rate : left === 0 ? 0 : Infinity,
    };
  }
}

/** A single line redrawn in place (`\r`), at most ten times a second. */
export class TerminalProgress extends Counter {
  #last = 0;
  #width = 0;

  /** Draws with `write` (default: standard error). */
  constructor(write: (text: string) => void = stderrWriter()) {
    super(write);
  }

  /** Clears the bar, prints `line`, and redraws. */
  note(line: string): void {
    this.#clear();
    this.write(`${line}\n`);
    this.#draw();
  }

  /** Draws the final state and ends the line. */
  finish(): void {
    this.#draw();
    this.write("\n");
    this.#width = 0;
  }

  protected update(): void {
    const now = performance.now();
    if (now - this.#last < 100 && this.done < this.total) return;
    this.#last = now;
    this.#draw();
  }

  #clear(): void {
    if (this.#width > 0) this.write(`\r${" ".repeat(this.#width)}\r`);
    this.#width = 0;
  }

  #draw(): void {
    const { pct, rate, eta } = this.stats();
    const cells = 24;
    const full = Math.round((pct / 100) * cells);
    const bar = "█".repeat(full) + "░".repeat(cells - full);
    const label = this.current.length > 40 ? `…${this.current.slice(-39)}` : this.current;
    const line =
      `${bar} ${pct.toFixed(1).padStart(5)}% ${formatBytes(this.done)}/${
        formatBytes(this.total)
      } ` +
      `${formatBytes(rate)}/s ETA ${duration(eta)} ${label}`;
    this.write(`\r${line}${" ".repeat(Math.max(0, this.#width - line.length))}`);
    this.#width = line.length;
  }
}

/** A plain line at every 5 % step, for logs and pipes. */
export class LineProgress extends Counter {
  #step = -1;

  /** Prints with `write` (default: standard error). */
  constructor(write: (text: string) => void = stderrWriter()) {
    super(write);
  }

  /** Prints `line`. */
  note(line: string): void {
    this.write(`${line}\n`);
  }

  /** Prints the last step if it was not printed. */
  finish(): void {
    if (this.#step < 20 && this.done >= this.total) this.#print(20);
  }

  protected update(): void {
    const step = this.total > 0 ? Math.floor((20 * this.done) / this.total) : 20;
    if (step > this.#step) this.#print(step);
  }

  #print(step: number): void {
    this.#step = step;
    const { pct, rate, eta } = this.stats();
    this.write(
      `progress ${pct.toFixed(0).padStart(3)}%: ${formatBytes(this.done)} of ${
        formatBytes(this.total)
      }, ` +
        `${formatBytes(rate)}/s, ETA ${duration(eta)}\n`,
    );
  }
}

function stderrWriter(): (text: string) => void {
  const enc = new TextEncoder();
  return (text) => {
    const bytes = enc.encode(text);
    for (let off = 0; off < bytes.length;) off += Deno.stderr.writeSync(bytes.subarray(off));
  };
}

/** The bar on a terminal, lines otherwise (decided by whether standard error is a terminal). */
export function defaultProgress(): Progress {
  return Deno.stderr.isTerminal() ? new TerminalProgress() : new LineProgress();
}
