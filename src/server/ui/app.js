// The od-moe chat page: a conversation streamed from /v1/chat/completions and
// the experts view fed by /v1/experts/events. Plain browser JavaScript, no
// build step. Model text only ever reaches the page as textContent (see
// markdown.js).

import { renderMarkdown } from "./markdown.js";

const $ = (id) => document.getElementById(id);
const KEY_STORAGE = "od-moe-api-key";

const ui = {
  model: $("model"),
  status: $("status"),
  banner: $("banner"),
  messages: $("messages"),
  composer: $("composer"),
  prompt: $("prompt"),
  send: $("send"),
  stop: $("stop"),
  newChat: $("new-chat"),
  settings: $("settings"),
  toggleSettings: $("toggle-settings"),
  system: $("system"),
  temperature: $("temperature"),
  topP: $("top-p"),
  maxTokens: $("max-tokens"),
  seed: $("seed"),
  keyDialog: $("key-dialog"),
  keyForm: $("key-form"),
  key: $("key"),
  keyError: $("key-error"),
  grid: $("grid"),
  shape: $("experts-shape"),
  budgetFill: $("budget-fill"),
  budgetText: $("budget-text"),
};

/** @type {{role: string, content: string}[]} */
let history = [];
/** @type {AbortController | null} */
let current = null;
/** Bumped by New chat: a reply that ends after it leaves the new conversation alone. */
let chatId = 0;
let ready = false;

// ---------------------------------------------------------------- API access

class ApiError extends Error {
  constructor(status, message, type, retryAfter) {
    super(message);
    this.status = status;
    this.type = type;
    this.retryAfter = retryAfter;
  }
}

function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE);
}

/** fetch with the API key; a 401 asks for the key and tries again. */
async function api(path, init = {}) {
  for (;;) {
    const headers = new Headers(init.headers);
    const key = apiKey();
    if (key) headers.set("authorization", `Bearer ${key}`);
    headers.set("accept", "application/json, text/event-stream");
    const r = await fetch(path, { ...init, headers });
    if (r.ok) return r;
    let body = null;
    try {
      body = await r.json();
    } catch {
      // not JSON: the status says enough
    }
    const message = body?.error?.message ?? `${r.status} ${r.statusText}`;
    if (r.status === 401) {
      await askForKey(key ? message : null);
      continue;
    }
    throw new ApiError(r.status, message, body?.error?.type ?? null, r.headers.get("retry-after"));
  }
}

// the key is needed to go on: Escape does not close the dialog
ui.keyDialog.addEventListener("cancel", (ev) => ev.preventDefault());

let keyPrompt = null;
/** Shows the key dialog (once, however many requests wait for it). */
function askForKey(error) {
  keyPrompt ??= new Promise((resolve) => {
    ui.keyError.hidden = !error;
    ui.keyError.textContent = error ?? "";
    ui.key.value = "";
    ui.keyDialog.showModal();
    ui.keyForm.addEventListener("submit", () => {
      sessionStorage.setItem(KEY_STORAGE, ui.key.value.trim());
      keyPrompt = null;
      resolve();
    }, { once: true });
  });
  return keyPrompt;
}

/** Server-sent events of a fetch response: {event, data}. */
async function* readEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    buf = buf.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, end);
      buf = buf.slice(end + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue;
        const i = line.indexOf(":");
        const field = i < 0 ? line : line.slice(0, i);
        const v = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
        if (field === "event") event = v;
        else if (field === "data") data.push(v);
      }
      if (data.length) yield { event, data: data.join("\n") };
    }
  }
}

// ---------------------------------------------------------- server status

function setStatus(kind, text) {
  ui.status.className = `status ${kind}`;
  ui.status.textContent = text;
}

function showBanner(text, kind = "warn") {
  ui.banner.hidden = !text;
  ui.banner.textContent = text ?? "";
  ui.banner.className = `banner ${kind}`;
}

let waiting = false;
/** Polls /health until the model is loaded, then starts the experts view. */
async function waitForModel() {
  if (waiting) return;
  waiting = true;
  try {
    await pollHealth();
  } finally {
    waiting = false;
  }
}

async function pollHealth() {
  for (;;) {
    try {
      const r = await fetch("/health", { headers: { accept: "application/json" } });
      const b = await r.json();
      if (r.ok && b.status === "ok") {
        ready = true;
        ui.model.textContent = `${b.model} · ${b.architecture} · ctx ${b.context_length}`;
        setStatus("ok", "ready");
        showBanner(null);
        updateButtons();
        startExperts();
        return;
      }
      if (b.status === "error") {
        setStatus("error", "failed");
        showBanner(`The model failed to load: ${b.error}`, "error");
        return;
      }
      setStatus("loading", b.status === "shutting_down" ? "shutting down" : "loading");
      showBanner(
        b.status === "shutting_down"
          ? "The server is shutting down."
          : "The model is loading (503); the page will be ready when it is.",
      );
    } catch {
      setStatus("error", "offline");
      showBanner("The server cannot be reached; retrying…", "error");
    }
    ready = false;
    updateButtons();
    await sleep(1000);
  }
}

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

// -------------------------------------------------------------------- chat

function updateButtons() {
  ui.send.disabled = !ready || current !== null;
  ui.stop.disabled = current === null;
}

function addMessage(role, text) {
  const li = document.createElement("li");
  li.className = `msg ${role}`;
  const who = document.createElement("div");
  who.className = "role";
  who.textContent = role;
  const content = document.createElement("div");
  content.className = "content";
  li.append(who, content);
  if (role === "user") content.textContent = text;
  ui.messages.append(li);
  scrollDown();
  return { li, content };
}

function scrollDown() {
  const m = ui.messages;
  if (m.scrollHeight - m.scrollTop - m.clientHeight < 120) m.scrollTop = m.scrollHeight;
}

async function copy(text, button) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    const t = document.createElement("textarea");
    t.value = text;
    document.body.append(t);
    t.select();
    document.execCommand("copy");
    t.remove();
  }
  if (button) {
    const was = button.textContent;
    button.textContent = "copied";
    setTimeout(() => button.textContent = was, 1200);
  }
}

function readNumber(input, integer) {
  if (input.value.trim() === "") return undefined;
  const v = Number(input.value);
  if (!Number.isFinite(v)) return undefined;
  return integer ? Math.trunc(v) : v;
}

function requestBody() {
  const messages = [];
  const system = ui.system.value.trim();
  if (system) messages.push({ role: "system", content: system });
  messages.push(...history);
  const body = {
    messages,
    stream: true,
    stream_options: { include_usage: true },
  };
  const t = readNumber(ui.temperature);
  const p = readNumber(ui.topP);
  const n = readNumber(ui.maxTokens, true);
  const s = readNumber(ui.seed, true);
  if (t !== undefined) body.temperature = t;
  if (p !== undefined) body.top_p = p;
  if (n !== undefined) body.max_tokens = n;
  if (s !== undefined) body.seed = s;
  return body;
}

async function expertCounters() {
  try {
    const r = await api("/v1/experts");
    return (await r.json()).stats;
  } catch {
    return null;
  }
}

async function send(text) {
  const chat = chatId;
  history.push({ role: "user", content: text });
  addMessage("user", text);
  const reply = addMessage("assistant", "");
  reply.li.classList.add("streaming");
  const ac = new AbortController();
  current = ac;
  updateButtons();
  let content = "";
  let finish = null;
  let usage = null;
  let error = null;
  let rendering = false;
  const render = () => {
    if (rendering) return;
    rendering = true;
    requestAnimationFrame(() => {
      rendering = false;
      reply.content.replaceChildren(renderMarkdown(content, (code) => copy(code)));
      scrollDown();
    });
  };
  const before = await expertCounters();
  const t0 = performance.now();
  let tFirst = 0;
  try {
    const r = await api("/v1/chat/completions", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(requestBody()),
      signal: ac.signal,
    });
    for await (const e of readEvents(r)) {
      if (e.data === "[DONE]") break;
      const chunk = JSON.parse(e.data);
      if (chunk.error) {
        error = chunk.error.message;
        break;
      }
      if (chunk.usage) usage = chunk.usage;
      const choice = chunk.choices?.[0];
      if (choice?.delta?.content) {
        if (!tFirst) tFirst = performance.now();
        content += choice.delta.content;
        render();
      }
      if (choice?.finish_reason) finish = choice.finish_reason;
    }
  } catch (e) {
    if (ac.signal.aborted) finish = "stopped";
    else if (e instanceof ApiError && e.type === "queue_full") {
      error = `The server is busy: ${e.message}`;
    } else if (e instanceof ApiError && e.status === 503) {
      error = e.message;
      ready = false;
      waitForModel();
    } else error = e instanceof Error ? e.message : String(e);
  }
  const tEnd = performance.now();
  if (current === ac) current = null;
  if (chat !== chatId) {
    updateButtons();
    return; // New chat was pressed: this reply is gone with its conversation
  }
  reply.li.classList.remove("streaming");
  reply.content.replaceChildren(renderMarkdown(content, (code) => copy(code)));
  // a turn without a reply (failed, or stopped before the first token) leaves the conversation
  if (content) history.push({ role: "assistant", content });
  else history.pop();
  if (error) {
    const p = document.createElement("div");
    p.className = "error";
    p.textContent = error;
    reply.li.append(p);
  }
  const after = await expertCounters();
  reply.li.append(footer(content, {
    finish,
    ttftMs: tFirst ? tFirst - t0 : null,
    tokens: usage?.completion_tokens ?? null,
    seconds: tFirst ? (tEnd - tFirst) / 1000 : 0,
    before,
    after,
  }));
  updateButtons();
  scrollDown();
}

function footer(content, s) {
  const foot = document.createElement("div");
  foot.className = "foot";
  const b = document.createElement("button");
  b.type = "button";
  b.className = "copy";
  b.textContent = "copy";
  b.addEventListener("click", () => copy(content, b));
  const stats = document.createElement("span");
  stats.className = "stats";
  const add = (name, value) => {
    const span = document.createElement("span");
    span.dataset.stat = name;
    span.textContent = value;
    stats.append(span);
  };
  if (s.finish) add("finish", s.finish);
  if (s.tokens !== null) add("tokens", `${s.tokens} tokens`);
  if (s.tokens !== null && s.seconds > 0 && s.tokens > 1) {
    add("tps", `${((s.tokens - 1) / s.seconds).toFixed(1)} tok/s`);
  }
  if (s.ttftMs !== null) add("ttft", `TTFT ${Math.round(s.ttftMs)} ms`);
  if (s.before && s.after) {
    const loads = s.after.misses - s.before.misses;
    const lookups = s.after.lookups - s.before.lookups;
    const hits = s.after.hits - s.before.hits;
    add("loads", `${loads} expert loads`);
    if (lookups > 0) add("hit-rate", `hit rate ${(100 * hits / lookups).toFixed(0)}%`);
  }
  foot.append(b, stats);
  return foot;
}

ui.composer.addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = ui.prompt.value.trim();
  if (!text || !ready || current) return;
  ui.prompt.value = "";
  send(text);
});

ui.prompt.addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
    ev.preventDefault();
    ui.composer.requestSubmit();
  }
});

ui.stop.addEventListener("click", () => current?.abort());

ui.newChat.addEventListener("click", () => {
  chatId++;
  current?.abort();
  history = [];
  ui.messages.replaceChildren();
  ui.prompt.focus();
});

ui.toggleSettings.addEventListener("click", () => {
  ui.settings.hidden = !ui.settings.hidden;
  ui.toggleSettings.setAttribute("aria-expanded", String(!ui.settings.hidden));
});

// ------------------------------------------------------------ experts view

const FADE_MS = 700;
// shorter for evictions: under heavy churn they would otherwise hide what is resident
const EVICT_FADE_MS = 350;
const COLORS = {};
for (const k of ["absent", "resident", "hit", "loaded", "prefetched", "evicted"]) {
  COLORS[k] = getComputedStyle(document.documentElement).getPropertyValue(`--${k}`).trim();
}
const CHANGE = { resident: 1, hit: 2, loaded: 4, prefetched: 8, evicted: 16 };
const SERIES = ["hitRate", "loads", "upload", "prefetch", "stalls", "tokens"];
const series = Object.fromEntries(SERIES.map((k) => [k, []]));

const grid = {
  layers: [], // [{layer, n_expert}]
  rowOf: new Map(), // layer → row
  nExpert: 0,
  resident: null, // Uint8Array [rows × nExpert]
  unusedPrefetch: null, // Uint8Array
  lastHit: null, // Float64Array of times
  lastLoad: null,
  lastEvict: null,
  frames: 0,
  changes: 0,
};

function setupGrid(snap) {
  grid.layers = snap.layers;
  grid.rowOf = new Map(snap.layers.map((l, i) => [l.layer, i]));
  grid.nExpert = snap.n_expert;
  const n = snap.layers.length * snap.n_expert;
  grid.resident = new Uint8Array(n);
  grid.unusedPrefetch = new Uint8Array(n);
  grid.lastHit = new Float64Array(n).fill(-1e9);
  grid.lastLoad = new Float64Array(n).fill(-1e9);
  grid.lastEvict = new Float64Array(n).fill(-1e9);
  snap.resident.forEach((ids, row) => {
    for (const e of ids) grid.resident[row * grid.nExpert + e] = 1;
  });
  $("all-resident").hidden = !snap.all_resident;
  ui.shape.textContent = `${snap.layers.length} layers × ${snap.n_expert} experts` +
    (snap.all_resident ? " · all resident" : "") +
    (snap.predictor ? ` · predictor ${snap.predictor}` : "");
  const cols = grid.nExpert;
  const cell = Math.max(2, Math.min(28, Math.floor(800 / cols)));
  ui.grid.width = cols * cell;
  ui.grid.height = grid.layers.length * cell;
  grid.cell = cell;
  updateFigures(snap.stats, null);
  drawGrid();
}

function applyFrame(f) {
  const now = performance.now();
  for (const [layer, expert, flags] of f.changes) {
    const row = grid.rowOf.get(layer);
    if (row === undefined || expert >= grid.nExpert) continue;
    const i = row * grid.nExpert + expert;
    grid.resident[i] = flags & CHANGE.resident ? 1 : 0;
    if (flags & CHANGE.hit) {
      grid.lastHit[i] = now;
      grid.unusedPrefetch[i] = 0;
    }
    if (flags & CHANGE.loaded) grid.lastLoad[i] = now;
    if (flags & CHANGE.prefetched) grid.unusedPrefetch[i] = 1;
    if (flags & CHANGE.evicted) grid.lastEvict[i] = now;
    if (!grid.resident[i]) grid.unusedPrefetch[i] = 0;
  }
  grid.frames++;
  grid.changes += f.changes.length;
  updateFigures(f.stats, f.rates);
  drawGrid();
}

function cellColor(i, now) {
  if (!grid.resident[i] && now - grid.lastEvict[i] < EVICT_FADE_MS) return COLORS.evicted;
  if (!grid.resident[i]) return COLORS.absent;
  if (now - grid.lastLoad[i] < FADE_MS) return COLORS.loaded;
  if (now - grid.lastHit[i] < FADE_MS) return COLORS.hit;
  if (grid.unusedPrefetch[i]) return COLORS.prefetched;
  return COLORS.resident;
}

/** What a grid cell is, in words (the canvas's tooltip). */
function describeCell(i, now) {
  if (!grid.resident[i]) {
    return now - grid.lastEvict[i] < EVICT_FADE_MS ? "just evicted" : "on disk";
  }
  if (now - grid.lastLoad[i] < FADE_MS) return "loaded for a miss";
  if (now - grid.lastHit[i] < FADE_MS) return "resident, just hit";
  if (grid.unusedPrefetch[i]) return "prefetched, not used yet";
  return "resident";
}

ui.grid.addEventListener("mousemove", (ev) => {
  if (!grid.resident) return;
  const r = ui.grid.getBoundingClientRect();
  const scale = ui.grid.width / r.width;
  const e = Math.floor(((ev.clientX - r.left) * scale) / grid.cell);
  const row = Math.floor(((ev.clientY - r.top) * scale) / grid.cell);
  const l = grid.layers[row];
  if (!l || e < 0 || e >= l.n_expert) return;
  const i = row * grid.nExpert + e;
  ui.grid.title = `layer ${l.layer}, expert ${e}: ${describeCell(i, performance.now())}`;
});

let drawing = false;
function drawGrid() {
  if (drawing || !grid.resident) return;
  drawing = true;
  requestAnimationFrame(() => {
    drawing = false;
    const ctx = ui.grid.getContext("2d");
    const now = performance.now();
    const c = grid.cell;
    const gap = c >= 6 ? 1 : 0;
    let fading = false;
    let resident = 0;
    ctx.clearRect(0, 0, ui.grid.width, ui.grid.height);
    grid.layers.forEach((l, row) => {
      for (let e = 0; e < grid.nExpert; e++) {
        const i = row * grid.nExpert + e;
        if (e >= l.n_expert) continue;
        resident += grid.resident[i];
        const t = Math.max(grid.lastHit[i], grid.lastLoad[i], grid.lastEvict[i]);
        if (now - t < FADE_MS) fading = true;
        ctx.fillStyle = cellColor(i, now);
        ctx.fillRect(e * c, row * c, c - gap, c - gap);
      }
    });
    ui.grid.dataset.resident = String(resident);
    ui.grid.dataset.frames = String(grid.frames);
    ui.grid.dataset.changes = String(grid.changes);
    if (fading) setTimeout(drawGrid, 100);
  });
}

function fmtBytes(b) {
  if (b >= 2 ** 30) return `${(b / 2 ** 30).toFixed(2)} GiB`;
  if (b >= 2 ** 20) return `${(b / 2 ** 20).toFixed(1)} MiB`;
  if (b >= 2 ** 10) return `${(b / 2 ** 10).toFixed(1)} KiB`;
  return `${b} B`;
}

function pct(x) {
  return x === null || x === undefined ? "–" : `${(100 * x).toFixed(1)}%`;
}

function updateFigures(s, rates) {
  const limit = Math.max(s.limit_bytes, 1);
  ui.budgetFill.style.width = `${Math.min(100, 100 * s.resident_bytes / limit)}%`;
  // the budget is a hard cap (limit_bytes = budget_bytes)
  ui.budgetText.textContent = `resident ${fmtBytes(s.resident_bytes)} of budget ` +
    fmtBytes(s.budget_bytes);
  $("f-hit-rate").textContent = s.lookups ? pct(s.hit_rate) : "–";
  $("f-prefetch").textContent = pct(s.prefetch_accuracy);
  $("f-stalls").textContent = s.stalls_per_token === null ? "–" : s.stalls_per_token.toFixed(2);
  if (!rates) return;
  $("f-loads").textContent = rates.loads_per_s.toFixed(1);
  $("f-upload").textContent = rates.upload_mb_per_s.toFixed(2);
  $("f-tokens").textContent = rates.tokens_per_s.toFixed(1);
  const point = {
    hitRate: s.hit_rate,
    loads: rates.loads_per_s,
    upload: rates.upload_mb_per_s,
    prefetch: s.prefetch_accuracy ?? 0,
    stalls: s.stalls_per_token ?? 0,
    tokens: rates.tokens_per_s,
  };
  for (const k of SERIES) {
    series[k].push(point[k]);
    if (series[k].length > 120) series[k].shift();
  }
  for (const c of document.querySelectorAll("canvas.spark")) drawSpark(c, series[c.dataset.series]);
}

function drawSpark(canvas, values) {
  const w = canvas.clientWidth || 150;
  const h = canvas.clientHeight || 28;
  if (canvas.width !== w) canvas.width = w;
  if (canvas.height !== h) canvas.height = h;
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, w, h);
  if (values.length < 2) return;
  const max = Math.max(...values, 1e-9);
  ctx.strokeStyle = COLORS.resident;
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  values.forEach((v, i) => {
    const x = (i / (values.length - 1)) * w;
    const y = h - 2 - (v / max) * (h - 4);
    if (i === 0) ctx.moveTo(x, y);
    else ctx.lineTo(x, y);
  });
  ctx.stroke();
}

let following = false;
/** Follows /v1/experts/events; reconnects after a drop. */
async function startExperts() {
  if (following) return;
  following = true;
  for (;;) {
    try {
      const r = await api("/v1/experts/events", { headers: { accept: "text/event-stream" } });
      for await (const e of readEvents(r)) {
        const body = JSON.parse(e.data);
        if (e.event === "snapshot") setupGrid(body);
        else if (e.event === "experts" && grid.resident) applyFrame(body);
      }
    } catch (e) {
      if (e instanceof ApiError && e.status === 503) {
        following = false;
        ready = false;
        updateButtons();
        waitForModel();
        return;
      }
    }
    await sleep(2000);
  }
}

waitForModel();
updateButtons();
ui.prompt.focus();
