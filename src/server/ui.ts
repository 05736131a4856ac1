/**
 * The chat page served at `GET /` (to browsers) and its assets under
 * `/ui/`: plain HTML, CSS and JavaScript in `src/server/ui/`, read relative
 * to this module's URL (a local checkout or the published package alike)
 * and kept in memory after the first request. No build step.
 *
 * @module
 */

/** The page's files: URL path → file name in `ui/` and content type. */
const FILES: Readonly<Record<string, { file: string; type: string }>> = {
  "/": { file: "index.html", type: "text/html; charset=utf-8" },
  "/ui/app.js": { file: "app.js", type: "text/javascript; charset=utf-8" },
  "/ui/app.css": { file: "app.css", type: "text/css; charset=utf-8" },
  "/ui/markdown.js": { file: "markdown.js", type: "text/javascript; charset=utf-8" },
};

/** The asset paths under `/ui/`, for the router. */
export const UI_ASSET_PATTERN: RegExp = /^\/ui\/([a-z_]+\.(?:js|css))$/;

// Same-origin only; no inline script or style, so text from the model that
// somehow became markup could not run.
const SECURITY_HEADERS = {
  "content-security-policy": "default-src 'self'; script-src 'self'; style-src 'self'; " +
    "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; " +
    "frame-ancestors 'none'",
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer",
};

const cache = new Map<string, Uint8Array>();

/** Whether `path` is one of the page's files. */
export function isUiPath(path: string): boolean {
  return path in FILES;
}

/**
 * The response for one of the page's files (404 for another path), read
 * through `fetch` from beside this module so it works from a file or an
 * https URL.
 */
export async function uiResponse(path: string): Promise<Response> {
  const f = FILES[path];
  if (!f) {
    return new Response(`no file at ${path}`, {
      status: 404,
      headers: { "content-type": "text/plain; charset=utf-8" },
    });
  }
  let body = cache.get(path);
  if (!body) {
    const url = new URL(`./ui/${f.file}`, import.meta.url);
    const r = await fetch(url);
    if (!r.ok) {
      await r.body?.cancel();
      throw new Error(`the page's file ${url} could not be read (HTTP ${r.status})`);
    }
    body = new Uint8Array(await r.arrayBuffer());
    cache.set(path, body);
  }
  return new Response(body.slice(), {
    headers: { "content-type": f.type, "cache-control": "no-cache", ...SECURITY_HEADERS },
  });
}

/**
 * Whether an `Accept` header asks for HTML before JSON: `text/html` with a
 * strictly higher quality than `application/json` (browsers); `*\/*` alone
 * (curl, fetch) gets JSON.
 */
export function wantsHtml(accept: string): boolean {
  let html = 0;
  let json = 0;
  for (const part of accept.split(",")) {
    const [type = "", ...params] = part.trim().toLowerCase().split(";").map((x) => x.trim());
    const qp = params.find((p) => p.startsWith("q="));
    const q = qp ? Number(qp.slice(2)) : 1;
    if (!(q >= 0)) continue;
    if (type === "text/html" || type === "application/xhtml+xml") html = Math.max(html, q);
    if (type === "application/json") json = Math.max(json, q);
  }
  return html > 0 && html > json;
}
