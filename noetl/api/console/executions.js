// Executions: a filtered, server-side paged list, refreshed while it is shown.
import { api } from "./api.js";
import { badge, duration, h, query, setQuery, when } from "./util.js";

const PAGE = 50;
const REFRESH_MS = 3000;

export async function executionsPage(signal) {
  const params = query();
  const state = {
    status: params.status ?? "",
    q: params.q ?? "",
    parent: params.parent ?? "",
    offset: Number(params.offset ?? 0) || 0,
  };
  const status = h("select", { name: "status", "aria-label": "Status" },
    ["", "running", "completed", "failed", "cancelled"].map((s) =>
      h("option", { value: s, selected: s === state.status }, s || "any status")));
  const search = h("input", { type: "search", name: "q", value: state.q, placeholder: "playbook path or execution id", size: 32, "aria-label": "Search" });
  const body = h("tbody");
  const info = h("span", { class: "muted", "data-total": "" });
  const prev = h("button", { type: "button", class: "ghost", onclick: () => { go(state.offset - PAGE); scrollTo({ top: 0 }); } }, "← Newer");
  const next = h("button", { type: "button", class: "ghost", onclick: () => { go(state.offset + PAGE); scrollTo({ top: 0 }); } }, "Older →");
  const parentNote = state.parent
    ? h("span", {}, "children of ", h("a", { href: `#/executions/${state.parent}` }, state.parent), " ",
        h("button", { type: "button", class: "ghost", onclick: () => { state.parent = ""; parentNote.remove(); go(0); } }, "✕"))
    : "";

  async function load() {
    setQuery("executions", { ...state, offset: state.offset || "" });
    const qs = new URLSearchParams({ limit: PAGE, offset: state.offset, status: state.status, q: state.q, parent: state.parent });
    const page = await api(`/api/console/executions?${qs}`, { signal });
    const focused = document.activeElement?.dataset?.id;
    body.replaceChildren(...page.items.map(row));
    if (focused) body.querySelector(`tr[data-id="${focused}"]`)?.focus();
    const last = Math.min(page.offset + page.items.length, page.total);
    info.textContent = page.total
      ? `${page.offset + 1}–${last} of ${page.total.toLocaleString("en")}`
      : "no execution matches";
    info.dataset.total = page.total;
    prev.disabled = page.offset === 0;
    next.disabled = last >= page.total;
    if (!page.items.length && !page.total) body.append(h("tr", {}, h("td", { colspan: 6, class: "muted" }, "Nothing here yet: start one from Playbooks.")));
  }

  function go(offset) {
    state.offset = Math.max(0, offset);
    load().catch(() => {});
  }

  status.addEventListener("change", () => { state.status = status.value; go(0); });
  let typing;
  search.addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => { state.q = search.value.trim(); go(0); }, 250);
  });

  await load();
  // Read by the browser test: when the first page of rows was in the document.
  if (!performance.getEntriesByName("executions-rows").length) performance.mark("executions-rows");
  const timer = setInterval(() => {
    if (!document.hidden) load().catch(() => {});
  }, REFRESH_MS);
  signal.addEventListener("abort", () => clearInterval(timer));

  return h("section", {},
    h("div", { class: "head" }, h("h1", {}, "Executions"), info),
    h("div", { class: "row", style: "margin-bottom:10px" }, status, search, parentNote),
    h("table", { class: "executions" },
      h("thead", {}, h("tr", {}, ["Status", "Execution", "Playbook", "Started", "Duration", "Parent"].map((t) => h("th", { scope: "col" }, t)))),
      body),
    h("div", { class: "pager" }, prev, next));
}

function row(item) {
  const open = () => { location.hash = `#/executions/${item.execution_id}`; };
  const running = item.status === "running";
  return h("tr", {
    class: "link", tabindex: 0, "data-id": item.execution_id, "data-status": item.status,
    onclick: (e) => { if (e.target.tagName !== "A") open(); },
    onkeydown: (e) => {
      if (e.key === "Enter") open();
      else if (e.key === "ArrowDown") e.currentTarget.nextElementSibling?.focus();
      else if (e.key === "ArrowUp") e.currentTarget.previousElementSibling?.focus();
      else return;
      e.preventDefault();
    },
  },
  h("td", {}, badge(item.status)),
  h("td", { class: "mono" }, item.execution_id),
  h("td", { class: "path" }, item.path, h("span", { class: "muted" }, ` v${item.version}`)),
  h("td", {}, when(item.started_at)),
  h("td", {}, running ? h("span", { class: "muted" }, duration((Date.now() - Date.parse(item.started_at)) / 1000)) : duration(item.duration)),
  h("td", { class: "mono" }, item.parent_execution_id
    ? h("a", { href: `#/executions/${item.parent_execution_id}` }, item.parent_execution_id)
    : item.restarted_from ? h("span", { class: "muted", title: "restarted from" }, `↻ ${item.restarted_from}`) : ""));
}
