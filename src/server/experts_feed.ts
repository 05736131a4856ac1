/**
 * The live experts view behind `GET /v1/experts` (a snapshot) and
 * `GET /v1/experts/events` (a server-sent event stream): which experts are
 * resident, and frames of what changed — hits, on-demand loads, prefetch
 * uploads, evictions — with the cache counters and rates.
 *
 * The pool tells every change through {@link ExpertPool.listen}; the feed
 * listens only while a client is subscribed, folds the changes of each
 * interval (default 250 ms) into one frame per (layer, expert) touched and
 * sends nothing for an interval in which nothing happened, so a fast model
 * cannot flood a page: a frame holds at most one entry per expert.
 *
 * Frame (`event: experts`), JSON:
 * ```
 * { "t_ms", "interval_ms",
 *   "changes": [[layer, expert, flags], …],   // flags: see CHANGE
 *   "stats": { …cumulative counters, see ExpertsStatsJson },
 *   "rates": { "loads_per_s", "upload_mb_per_s", "lookups_per_s", "tokens_per_s" } }
 * ```
 * The stream opens with `event: snapshot` (the same body as `GET /v1/experts`).
 * A client that does not read (more than {@link MAX_QUEUED_FRAMES} events
 * waiting in its queue) is skipped instead of queued without bound; once it
 * has caught up it gets a fresh `snapshot` and frames again, so replaying
 * the frames over the last snapshot always gives the pool's state.
 *
 * @module
 */

import type { PoolEvent } from "../experts/pool.ts";
import type { ExpertStatsSnapshot } from "../experts/stats.ts";
import type { PrefetchStatsSnapshot } from "../experts/prefetch_stats.ts";
import { formatSseEvent } from "./sse.ts";

/** Events a subscriber may have waiting before it is skipped (and later resynchronised). */
export const MAX_QUEUED_FRAMES = 8;

/** Bits of a change's `flags` in an `experts` frame. */
export const CHANGE = {
  /** Resident when the frame was sent. */
  resident: 1,
  /** Looked up and found resident during the interval. */
  hit: 2,
  /** Uploaded for a miss (the token stalled for it) during the interval. */
  loaded: 4,
  /** Uploaded by the prefetcher, ahead of use, during the interval. */
  prefetched: 8,
  /** Evicted during the interval (it may have come back since: see `resident`). */
  evicted: 16,
} as const;

/** What the feed reads of the expert pool (an `ExpertPool` has all of it). */
export interface ExpertsFeedPool {
  /** Rows of the residency table. */
  readonly nLayer: number;
  /** Columns: the most experts of any layer. */
  readonly nExpert: number;
  /** The layers with routed experts. */
  readonly source: { readonly layers: readonly { layer: number; nExpert: number }[] };
  /** Whether every expert has a slot. */
  readonly allResident: boolean;
  /** GPU bytes of the slots holding an expert. */
  readonly residentBytes: number;
  /** The cache budget, bytes. */
  readonly budgetBytes: number;
  /** The budget plus the reserve, bytes. */
  readonly limitBytes: number;
  /** GPU bytes of the arenas. */
  readonly allocatedBytes: number;
  /** Hit/miss/upload counters. */
  readonly stats: { snapshot(): ExpertStatsSnapshot };
  /** Experts of `layer` resident now. */
  residentExperts(layer: number): number[];
  /** The slot of an expert, or −1. */
  slotOf(layer: number, expert: number): number;
  /** Adds a listener for pool events; returns its remover. */
  listen(listener: (e: PoolEvent) => void): () => void;
}

/** What the feed reads: the model's pool and its prefetch statistics. */
export interface ExpertsFeedModel {
  /** The expert pool. */
  readonly pool: ExpertsFeedPool;
  /** Prefetch statistics while experts stream (none when every expert fits). */
  readonly prefetchStats: PrefetchStatsSnapshot | undefined;
}

/** The counters in a snapshot and in every frame (cumulative since the server started). */
export interface ExpertsStatsJson {
  lookups: number;
  hits: number;
  misses: number;
  hit_rate: number;
  evictions: number;
  bytes_uploaded: number;
  prefetch_uploads: number;
  prefetch_bytes: number;
  prefetch_hits: number;
  /** Prefetched experts used before eviction / prefetched; null without prefetch uploads. */
  prefetch_accuracy: number | null;
  tokens: number;
  syncs_per_token: number;
  misses_per_token: number;
  /** Stalls (repairs) per decoded token; null when every expert is resident. */
  stalls_per_token: number | null;
  resident_bytes: number;
  budget_bytes: number;
  limit_bytes: number;
  allocated_bytes: number;
}

/** The body of `GET /v1/experts`. */
export interface ExpertsSnapshotJson {
  /** Rows of the residency table (the model's blocks). */
  n_layer: number;
  /** Columns: the most experts of any layer. */
  n_expert: number;
  /** The layers with routed experts, in order, with their expert count. */
  layers: { layer: number; n_expert: number }[];
  /** Experts resident now: `resident[i]` lists the ids resident in `layers[i]`. */
  resident: number[][];
  /** Whether the budget holds every expert (nothing streams). */
  all_resident: boolean;
  /** The predictor while experts stream (`"lookahead"`, `"shadow"`, `"history"`), else null. */
  predictor: string | null;
  /** Frames are at most this often on `/v1/experts/events`, ms. */
  interval_ms: number;
  /** Counters. */
  stats: ExpertsStatsJson;
}

/** Options of {@link ExpertsFeed}. */
export interface ExpertsFeedOptions {
  /** Shortest time between two frames, ms (default 250). */
  intervalMs?: number;
  /** Time between keep-alive comments when nothing happens, ms (default 15000). */
  keepAliveMs?: number;
}

interface Subscriber {
  controller: ReadableStreamDefaultController<Uint8Array>;
  closed: boolean;
  /** Frames were skipped: it gets a snapshot once its queue has drained. */
  behind: boolean;
}

const encoder = new TextEncoder();

/** One server's experts feed (see the module doc). */
export class ExpertsFeed {
  /** Shortest time between two frames, ms. */
  readonly intervalMs: number;
  readonly #keepAliveMs: number;
  readonly #subs = new Set<Subscriber>();
  // (layer · nExpert + expert) → flags gathered since the last frame
  readonly #pending = new Map<number, number>();
  #unlisten: (() => void) | undefined;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #last: { t: number; stats: ExpertStatsSnapshot; tokens: number; quietSince: number } | undefined;
  readonly #t0 = performance.now();

  /** A feed over `model`'s pool; it listens to the pool only while someone is subscribed. */
  constructor(readonly model: ExpertsFeedModel, o: ExpertsFeedOptions = {}) {
    this.intervalMs = Math.max(20, o.intervalMs ?? 250);
    this.#keepAliveMs = o.keepAliveMs ?? 15000;
  }

  /** Clients subscribed to the event stream. */
  get subscribers(): number {
    return this.#subs.size;
  }

  /** The body of `GET /v1/experts`. */
  snapshot(): ExpertsSnapshotJson {
    const pool = this.model.pool;
    const layers = pool.source.layers.map((l) => ({ layer: l.layer, n_expert: l.nExpert }))
      .sort((a, b) => a.layer - b.layer);
    return {
      n_layer: pool.nLayer,
      n_expert: pool.nExpert,
      layers,
      resident: layers.map((l) => pool.residentExperts(l.layer)),
      all_resident: pool.allResident,
      predictor: this.model.prefetchStats?.predictor ?? null,
      interval_ms: this.intervalMs,
      stats: this.#statsJson(pool.stats.snapshot()),
    };
  }

  /**
   * The SSE response of `GET /v1/experts/events`: a `snapshot` event, then
   * `experts` frames until the client goes away or {@link close}.
   */
  subscribe(): Response {
    let sub!: Subscriber;
    const body = new ReadableStream<Uint8Array>({
      start: (controller) => {
        sub = { controller, closed: false, behind: false };
      },
      cancel: () => {
        sub.closed = true;
        this.#drop(sub);
      },
    });
    this.#subs.add(sub);
    this.#write(sub, formatSseEvent(JSON.stringify(this.snapshot()), "snapshot"));
    this.#start();
    return new Response(body, {
      headers: {
        "content-type": "text/event-stream; charset=utf-8",
        "cache-control": "no-cache",
        "x-accel-buffering": "no",
      },
    });
  }

  /** Ends every stream and stops listening. */
  close(): void {
    for (const s of this.#subs) {
      s.closed = true;
      try {
        s.controller.close();
      } catch {
        // the runtime already errored it
      }
    }
    this.#subs.clear();
    this.#stop();
  }

  /** Queues `text` for `sub` unless its queue is full (then it is marked behind). */
  #write(sub: Subscriber, text: string): void {
    if (sub.closed) return;
    const room = sub.controller.desiredSize;
    if (room !== null && room <= 1 - MAX_QUEUED_FRAMES) {
      sub.behind = true;
      return;
    }
    try {
      sub.controller.enqueue(encoder.encode(text));
    } catch {
      sub.closed = true;
      this.#drop(sub);
    }
  }

  /** Sends a frame (or, to a subscriber that fell behind and caught up, a snapshot). */
  #broadcast(frame: string | undefined): void {
    let snapshot: string | undefined;
    for (const s of this.#subs) {
      if (s.behind) {
        if ((s.controller.desiredSize ?? 1) < 1) continue; // still draining
        s.behind = false;
        snapshot ??= formatSseEvent(JSON.stringify(this.snapshot()), "snapshot");
        this.#write(s, snapshot);
      } else if (frame !== undefined) {
        this.#write(s, frame);
      }
    }
  }

  #drop(sub: Subscriber): void {
    this.#subs.delete(sub);
    if (this.#subs.size === 0) this.#stop();
  }

  #start(): void {
    if (this.#unlisten) return;
    const pool = this.model.pool;
    const n = pool.nExpert;
    const bit = {
      hit: CHANGE.hit,
      load: CHANGE.loaded,
      prefetch: CHANGE.prefetched,
      evict: CHANGE.evicted,
    } as const;
    this.#unlisten = pool.listen((e) => {
      const k = e.layer * n + e.expert;
      this.#pending.set(k, (this.#pending.get(k) ?? 0) | bit[e.kind]);
    });
    const now = performance.now();
    const stats = pool.stats.snapshot();
    this.#last = { t: now, stats, tokens: this.#tokens(stats), quietSince: now };
    this.#schedule();
  }

  // a timeout chain, not an interval: frames are never closer than intervalMs
  #schedule(): void {
    this.#timer = setTimeout(() => {
      this.#tick();
      if (this.#unlisten) this.#schedule();
    }, this.intervalMs);
  }

  #stop(): void {
    this.#unlisten?.();
    this.#unlisten = undefined;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#pending.clear();
    this.#last = undefined;
  }

  #tokens(s: ExpertStatsSnapshot): number {
    return Math.max(s.tokens, this.model.prefetchStats?.tokens ?? 0);
  }

  #tick(): void {
    const last = this.#last;
    if (!last) return;
    const now = performance.now();
    const pool = this.model.pool;
    const stats = pool.stats.snapshot();
    const tokens = this.#tokens(stats);
    const moved = stats.lookups !== last.stats.lookups ||
      stats.prefetchUploads !== last.stats.prefetchUploads || tokens !== last.tokens;
    if (this.#pending.size === 0 && !moved) {
      if (now - last.quietSince >= this.#keepAliveMs) {
        for (const s of this.#subs) this.#write(s, ": keep-alive\n\n");
        last.quietSince = now;
      }
      this.#broadcast(undefined);
      return;
    }
    const n = pool.nExpert;
    const changes: [number, number, number][] = [];
    for (const [k, flags] of this.#pending) {
      const layer = Math.floor(k / n);
      const expert = k % n;
      const resident = pool.slotOf(layer, expert) >= 0 ? CHANGE.resident : 0;
      changes.push([layer, expert, flags | resident]);
    }
    this.#pending.clear();
    changes.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
    const dt = (now - last.t) / 1000;
    const per = (x: number) => dt > 0 ? x / dt : 0;
    const frame = {
      t_ms: Math.round(now - this.#t0),
      interval_ms: Math.round(now - last.t),
      changes,
      stats: this.#statsJson(stats),
      rates: {
        loads_per_s: per(
          stats.misses - last.stats.misses + stats.prefetchUploads - last.stats.prefetchUploads,
        ),
        upload_mb_per_s: per(
          (stats.bytesUploaded - last.stats.bytesUploaded + stats.prefetchBytes -
            last.stats.prefetchBytes) / 1e6,
        ),
        lookups_per_s: per(stats.lookups - last.stats.lookups),
        tokens_per_s: per(tokens - last.tokens),
      },
    };
    this.#broadcast(formatSseEvent(JSON.stringify(frame), "experts"));
    this.#last = { t: now, stats, tokens, quietSince: now };
  }

  #statsJson(s: ExpertStatsSnapshot): ExpertsStatsJson {
    const pool = this.model.pool;
    const p = this.model.prefetchStats;
    return {
      lookups: s.lookups,
      hits: s.hits,
      misses: s.misses,
      hit_rate: s.hitRate,
      evictions: s.evictions,
      bytes_uploaded: s.bytesUploaded,
      prefetch_uploads: s.prefetchUploads,
      prefetch_bytes: s.prefetchBytes,
      prefetch_hits: s.prefetchHits,
      prefetch_accuracy: p && p.prefetchUploads > 0 ? p.prefetchAccuracy : null,
      tokens: this.#tokens(s),
      syncs_per_token: s.syncsPerToken,
      misses_per_token: s.missesPerToken,
      stalls_per_token: p ? p.stallsPerToken : null,
      resident_bytes: pool.residentBytes,
      budget_bytes: pool.budgetBytes,
      limit_bytes: pool.limitBytes,
      allocated_bytes: pool.allocatedBytes,
    };
  }
}
