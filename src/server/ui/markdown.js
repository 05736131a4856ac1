// A small Markdown renderer for model output that builds DOM nodes and sets
// only textContent: whatever the model writes, no markup from it reaches the
// page. Covers what chat models write: fenced code, headings, lists, quotes,
// paragraphs, `code`, **bold**, *italic* and [links](https://…) (http/https
// only). An unclosed fence (a reply still streaming) is code to the end.

/**
 * @param {string} text
 * @param {(text: string) => void} [onCopy] called by a code block's copy button
 * @returns {DocumentFragment}
 */
export function renderMarkdown(text, onCopy) {
  const out = document.createDocumentFragment();
  const lines = text.replace(/\r\n?/g, "\n").split("\n");
  let para = [];
  let list = null; // { el, ordered }
  const flushPara = () => {
    if (para.length) {
      const p = el("p");
      inline(p, para.join("\n"));
      out.append(p);
      para = [];
    }
  };
  const endList = () => {
    list = null;
  };
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    const fence = /^\s*(`{3,}|~{3,})\s*([\w+#.-]*)\s*$/.exec(line);
    if (fence) {
      flushPara();
      endList();
      const body = [];
      let j = i + 1;
      while (
        j < lines.length &&
        !new RegExp(`^\\s*${fence[1][0]}{${fence[1].length},}\\s*$`).test(lines[j])
      ) {
        body.push(lines[j]);
        j++;
      }
      out.append(codeBlock(body.join("\n"), fence[2], onCopy));
      i = j;
      continue;
    }
    const heading = /^(#{1,6})\s+(.*)$/.exec(line);
    if (heading) {
      flushPara();
      endList();
      const h = el(`h${Math.min(6, heading[1].length + 2)}`);
      inline(h, heading[2]);
      out.append(h);
      continue;
    }
    const item = /^\s*(?:([-*+])|(\d{1,9})[.)])\s+(.*)$/.exec(line);
    if (item) {
      flushPara();
      const ordered = item[2] !== undefined;
      if (!list || list.ordered !== ordered) {
        list = { el: el(ordered ? "ol" : "ul"), ordered };
        if (ordered && item[2] !== "1") list.el.start = Number(item[2]);
        out.append(list.el);
      }
      const li = el("li");
      inline(li, item[3]);
      list.el.append(li);
      continue;
    }
    const quote = /^>\s?(.*)$/.exec(line);
    if (quote) {
      flushPara();
      endList();
      const q = el("blockquote");
      inline(q, quote[1]);
      out.append(q);
      continue;
    }
    if (line.trim() === "") {
      flushPara();
      endList();
      continue;
    }
    endList();
    para.push(line);
  }
  flushPara();
  return out;
}

function el(tag) {
  return document.createElement(tag);
}

function codeBlock(code, lang, onCopy) {
  const pre = el("pre");
  const c = el("code");
  c.textContent = code;
  pre.append(c);
  if (lang) {
    const l = el("span");
    l.className = "lang";
    l.textContent = lang;
    pre.append(l);
  }
  if (onCopy) {
    const b = el("button");
    b.type = "button";
    b.textContent = "copy";
    b.addEventListener("click", () => onCopy(code));
    pre.append(b);
  }
  return pre;
}

// `code` first (its content is literal), then links, bold, italic.
const INLINE =
  /`([^`\n]+)`|\[([^\]\n]+)\]\(([^)\s]+)\)|\*\*([^*\n]+)\*\*|__([^_\n]+)__|\*([^*\n]+)\*|_([^_\n]+)_/g;

/** Appends `text` to `parent` with inline Markdown as elements, all text as text nodes. */
function inline(parent, text) {
  let at = 0;
  for (const m of text.matchAll(INLINE)) {
    if (m.index > at) parent.append(text.slice(at, m.index));
    at = m.index + m[0].length;
    if (m[1] !== undefined) {
      const c = el("code");
      c.textContent = m[1];
      parent.append(c);
    } else if (m[2] !== undefined) {
      const href = safeUrl(m[3]);
      if (href) {
        const a = el("a");
        a.href = href;
        a.rel = "noopener noreferrer nofollow";
        a.target = "_blank";
        a.textContent = m[2];
        parent.append(a);
      } else {
        parent.append(m[0]);
      }
    } else if (m[4] !== undefined || m[5] !== undefined) {
      const b = el("strong");
      inline(b, m[4] ?? m[5]);
      parent.append(b);
    } else {
      const i = el("em");
      inline(i, m[6] ?? m[7]);
      parent.append(i);
    }
  }
  if (at < text.length) parent.append(text.slice(at));
}

function safeUrl(s) {
  try {
    const u = new URL(s);
    return u.protocol === "http:" || u.protocol === "https:" ? u.href : null;
  } catch {
    return null;
  }
}
