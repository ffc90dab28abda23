// A line diff of two texts (longest common subsequence), shown as a unified listing.
import { lines } from "./yaml.js";
import { h } from "./util.js";

/** `[{op: " " | "+" | "-", text, a, b}]` where a and b are the old and new line numbers. */
export function diffLines(oldText, newText) {
  const a = oldText.replace(/\n$/, "").split("\n");
  const b = newText.replace(/\n$/, "").split("\n");
  const n = a.length, m = b.length;
  // lcs[i][j]: common lines of a[i:] and b[j:]; playbooks are small, so O(n·m) is fine.
  const lcs = Array.from({ length: n + 1 }, () => new Uint32Array(m + 1));
  for (let i = n - 1; i >= 0; i--) {
    for (let j = m - 1; j >= 0; j--) {
      lcs[i][j] = a[i] === b[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
    }
  }
  const out = [];
  let i = 0, j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && a[i] === b[j]) { out.push({ op: " ", text: a[i], a: ++i, b: ++j }); }
    // Removals before additions, as unified diffs show a changed line.
    else if (i < n && (j === m || lcs[i + 1][j] >= lcs[i][j + 1])) { out.push({ op: "-", text: a[i], a: ++i, b: null }); }
    else { out.push({ op: "+", text: b[j], a: null, b: ++j }); }
  }
  return out;
}

export function diffView(oldText, newText) {
  const rows = diffLines(oldText, newText);
  const spans = lines(rows.map((r) => r.text));
  const changed = rows.filter((r) => r.op !== " ").length;
  return h("div", {},
    h("p", { class: "muted", "data-changed": changed }, changed ? `${changed} line${changed > 1 ? "s" : ""} changed` : "The two versions are identical."),
    h("div", { class: "code diff", tabindex: 0, "aria-label": "Diff" },
      rows.map((r, i) => h("div", { class: `ln${r.op === "+" ? " add" : r.op === "-" ? " del" : ""}`, "data-op": r.op },
        h("span", {}, r.op === "-" ? `-${r.a}` : r.op === "+" ? `+${r.b}` : r.b), h("code", {}, spans[i])))));
}
