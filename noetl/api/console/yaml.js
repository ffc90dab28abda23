// YAML shown with line numbers, highlighted, and problems marked on their lines.
import { h } from "./util.js";

const SCALAR = /^(?:true|false|null|~|yes|no|-?\d+(?:\.\d+)?(?:e[+-]?\d+)?)$/i;

/** Spans for a value: Jinja expressions, quoted strings, numbers and booleans. */
function value(text) {
  const out = [];
  const pattern = /(\{\{.*?\}\}|\{%.*?%\})|("(?:[^"\\]|\\.)*"?|'(?:[^']|'')*'?)/g;
  let last = 0;
  for (let m; (m = pattern.exec(text)); ) {
    if (m.index > last) out.push(plain(text.slice(last, m.index)));
    out.push(h("span", { class: m[1] ? "y-j" : "y-s" }, m[0]));
    last = m.index + m[0].length;
  }
  if (last < text.length) out.push(plain(text.slice(last)));
  return out;
}

function plain(text) {
  return SCALAR.test(text.trim()) ? h("span", { class: "y-n" }, text) : text;
}

/** One line's spans. */
export function line(text) {
  let body = text, comment = "";
  // A `#` starts a comment at the line start or after a space, outside quotes.
  let quote = null;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quote) { if (c === quote) quote = null; continue; }
    if (c === '"' || c === "'") quote = c;
    else if (c === "#" && (i === 0 || /\s/.test(text[i - 1]))) { body = text.slice(0, i); comment = text.slice(i); break; }
  }
  const out = [];
  const m = /^(\s*)(-\s+)?([^\s"'{[#][^:#]*?|"[^"]*"|'[^']*')(:)(?=\s|$)(.*)$/.exec(body);
  if (m) {
    out.push(m[1]);
    if (m[2]) out.push(h("span", { class: "y-p" }, m[2]));
    out.push(h("span", { class: "y-k" }, m[3]), h("span", { class: "y-p" }, m[4]), ...value(m[5]));
  } else {
    const d = /^(\s*)(-\s+|-$)?(.*)$/.exec(body);
    out.push(d[1]);
    if (d[2]) out.push(h("span", { class: "y-p" }, d[2]));
    out.push(...value(d[3]));
  }
  if (comment) out.push(h("span", { class: "y-c" }, comment));
  return out;
}

/** Spans for each line; the text of block scalars (`key: |`) stays plain text. */
export function lines(texts) {
  let block = null; // indentation of the key that opened a block scalar
  return texts.map((t) => {
    const indent = /^\s*/.exec(t)[0].length;
    if (block !== null && (t.trim() === "" || indent > block)) return [h("span", { class: "y-b" }, t)];
    block = null;
    if (/:\s*[|>][-+0-9]*\s*(#.*)?$/.test(t)) block = indent + (/^\s*-\s/.test(t) ? 2 : 0);
    return line(t);
  });
}

/**
 * The text as numbered, highlighted lines; `problems` ({line, col, message, severity}) are
 * shown under their lines, and `marks` (line number → "add" | "del") colour lines.
 */
export function codeView(text, problems = []) {
  const byLine = new Map();
  for (const p of problems) (byLine.get(p.line) ?? byLine.set(p.line, []).get(p.line)).push(p);
  const texts = text.replace(/\n$/, "").split("\n");
  const spans = lines(texts);
  const rows = texts.map((t, i) => {
    const here = byLine.get(i + 1) ?? [];
    return h("div", { class: `ln${here.length ? " problem" : ""}`, "data-line": i + 1 },
      h("span", {}, i + 1), h("code", {}, spans[i]),
      here.map((p) => h("div", { class: "msg", role: "note" }, `${p.severity === "warning" ? "warning" : "error"} (col ${p.col}): ${p.message}`)));
  });
  // Problems without a line in the text (line 0 or past the end) are listed first.
  const loose = problems.filter((p) => !(p.line >= 1 && p.line <= texts.length));
  return h("div", { class: "code", tabindex: 0, "aria-label": "Playbook YAML" },
    loose.map((p) => h("div", { class: "ln problem" }, h("span", {}, ""), h("div", { class: "msg" }, p.message))),
    rows);
}

/** `FILE:LINE:COL: message` strings (as the API's 422 answers) as problem objects. */
export function parseProblems(strings) {
  return strings.map((s) => {
    const m = /^.*?:(\d+):(\d+): (?:(warning): )?(.*)$/s.exec(s);
    return m ? { line: Number(m[1]), col: Number(m[2]), message: m[4], severity: m[3] ?? "error" }
      : { line: 0, col: 0, message: s, severity: "error" };
  });
}
