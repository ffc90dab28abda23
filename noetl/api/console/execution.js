// One execution: its step graph and timeline, live from the SSE stream, and its actions.
import { api, follow } from "./api.js";
import { applyAnnounced, fold, noteOf, ranOf } from "./fold.js";
import { drawGraph } from "./graph.js";
import { badge, duration, fill, h, parseJson, pretty, toast, when } from "./util.js";

const REFETCH_MS = 700;
const APPEAR_MS = 10000;
const MAX_JSON = 20000;
const MAX_COMMAND_BARS = 300;
const MAX_LANES = 16;

function json(value) {
  const text = pretty(value);
  return h("pre", { class: "json" }, text.length > MAX_JSON ? `${text.slice(0, MAX_JSON)}\n… (${text.length.toLocaleString("en")} characters)` : text);
}

/** The execution's details and events; a just-started one is recorded by its coordinator
 * a moment after the start is accepted, so a 404 is retried for a few seconds. */
async function load(id, signal) {
  const deadline = Date.now() + APPEAR_MS;
  for (;;) {
    try {
      return await Promise.all([
        api(`/api/console/executions/${id}`, { signal }),
        api(`/api/executions/${id}/events`, { signal }),
      ]);
    } catch (err) {
      if (err.status !== 404 || Date.now() > deadline) throw err;
      await new Promise((resolve) => setTimeout(resolve, 150));
    }
  }
}

export async function executionPage(id, signal) {
  const [info, events] = await load(id, signal);
  let doc = info.execution;
  let state = fold(events);
  let selected = null;

  const header = h("div");
  const actions = h("div", { class: "row" });
  const detail = h("div", { class: "detail card", "aria-live": "polite" });
  const timeline = h("div", { class: "timeline", role: "list", "aria-label": "Timeline" });
  const graph = info.graph
    ? drawGraph(info.graph, (step) => { selected = step; renderDetail(); })
    : null;

  function renderHeader() {
    const end = doc.ended_at ? Date.parse(doc.ended_at) : Date.now();
    fill(header, [
      h("div", { class: "head" },
        h("h1", {}, "Execution ", h("span", { class: "mono" }, doc.execution_id)),
        h("span", { id: "execution-status", "data-status": doc.status }, badge(doc.status))),
      h("div", { class: "facts" },
        h("span", {}, "playbook ", h("b", {}, h("a", { href: `#/playbooks/${encodeURIComponent(doc.path)}?version=${doc.version}` }, `${doc.path} v${doc.version}`))),
        h("span", {}, "started ", h("b", {}, when(doc.started_at))),
        h("span", {}, "duration ", h("b", {}, duration((end - Date.parse(doc.started_at)) / 1000))),
        doc.parent_execution_id && h("span", {}, "parent ", h("a", { href: `#/executions/${doc.parent_execution_id}` }, doc.parent_execution_id)),
        doc.restarted_from && h("span", {}, "restarted from ", h("a", { href: `#/executions/${doc.restarted_from}` }, doc.restarted_from)),
        info.children.length > 0 && h("a", { href: `#/executions?parent=${doc.execution_id}` }, `${info.children.length} child execution${info.children.length > 1 ? "s" : ""}`)),
      doc.error && h("div", { class: "card error", id: "execution-error" }, doc.error.message ?? pretty(doc.error)),
      Object.entries(doc.waiting_for_pool ?? {}).map(([step, pool]) =>
        h("div", { class: "card", id: `waiting-${step}` }, `Step ${step} is waiting for pool ${pool}: no runner of that pool is live (noetl-runtime up --role runner --pool ${pool}).`)),
    ]);
    renderActions();
  }

  function renderActions() {
    const ran = [...state.steps.values()].filter((s) => s.status !== "pending");
    const failed = ran.find((s) => s.status === "failed" && !s.restored);
    const from = h("select", { name: "from", "aria-label": "Restart from step" },
      ran.map((s) => h("option", { value: s.name, selected: s.name === (selected ?? failed?.name) }, s.name)));
    const running = doc.status === "running";
    fill(actions, 
      h("button", { type: "button", class: "danger", id: "cancel", disabled: !running, onclick: cancel }, "Cancel"),
      h("span", { class: "row", style: "gap:4px" }, from,
        h("button", { type: "button", id: "restart", disabled: running || !ran.length, onclick: () => restart(from.value) }, "Restart from step")),
      h("button", { type: "button", class: "ghost", id: "run-again", onclick: runAgain }, "Run again…"),
    );
  }

  async function cancel() {
    if (!confirm(`Cancel execution ${doc.execution_id}?`)) return;
    try {
      await api(`/api/executions/${doc.execution_id}/cancel`, { method: "POST", body: { reason: "cancelled from the console" } });
      toast("Cancel requested");
    } catch (err) { toast(err.message, true); }
  }

  async function restart(step) {
    try {
      const reply = await api(`/api/executions/${doc.execution_id}/restart`, { method: "POST", body: step ? { from: step } : {} });
      location.hash = `#/executions/${reply.execution_id}`;
    } catch (err) { toast(err.message, true); }
  }

  function runAgain() {
    const text = h("textarea", { name: "workload", rows: 12, "aria-label": "Workload (JSON)" }, pretty(info.workload ?? {}));
    const error = h("p", { class: "error", role: "alert" });
    const dialog = h("dialog", { "aria-label": "Run again" },
      h("form", { method: "dialog", onsubmit: async (e) => {
        e.preventDefault();
        try {
          const workload = parseJson(text.value, "The workload") ?? {};
          const reply = await api("/api/executions", { method: "POST", body: { path: doc.path, version: doc.version, workload } });
          dialog.close();
          location.hash = `#/executions/${reply.execution_id}`;
        } catch (err) { error.textContent = err.message; }
      } },
      h("h2", {}, `Run ${doc.path} v${doc.version} again`),
      h("p", { class: "muted" }, "The workload this execution ran with; edit it to run with another."),
      text, error,
      h("div", { class: "row" }, h("button", { type: "submit" }, "Run"), h("button", { type: "button", class: "ghost", onclick: () => dialog.close() }, "Close"))));
    dialog.addEventListener("close", () => dialog.remove());
    document.body.append(dialog);
    dialog.showModal();
    text.focus();
  }

  function renderGraph() {
    if (!graph) return;
    for (const node of info.graph.nodes) {
      const s = state.steps.get(node.id);
      let status = s?.status ?? "pending";
      if (status === "pending" && doc.status !== "running") status = "skipped";
      const children = info.children.filter((c) => c.step === node.id).length;
      const pool = doc.waiting_for_pool?.[node.id];
      const note = [pool ? `waiting for pool ${pool}` : "", s ? noteOf(s) : "", children ? `${children} child run${children > 1 ? "s" : ""}` : ""];
      graph.update(node.id, { status, note: note.filter(Boolean).join(", ") });
    }
  }

  function renderTimeline() {
    const t0 = state.started ?? Date.parse(doc.started_at);
    const t1 = Math.max(state.ended ?? (doc.ended_at ? Date.parse(doc.ended_at) : Date.now()), t0 + 1);
    const span = t1 - t0;
    const pct = (t) => `${(((t - t0) / span) * 100).toFixed(2)}%`;
    const width = (a, b) => `${Math.max(((b - a) / span) * 100, 0.3).toFixed(2)}%`;
    const ordered = [...state.steps.values()].filter((s) => s.startedAt || s.restored)
      .sort((a, b) => (a.startedAt ?? 0) - (b.startedAt ?? 0));
    fill(timeline, [
      ...ordered.map((s) => {
        const end = s.endedAt ?? t1;
        const bars = [];
        const commands = [...s.commands.values()];
        // Loop items and retries get lanes under the step's bar, so concurrency shows.
        const lanes = commands.length > 1 ? Math.min(commands.length, MAX_LANES) : 0;
        if (s.startedAt) bars.push(h("div", { class: `tl-bar ${s.status}`, style: `left:${pct(s.startedAt)};width:${width(s.startedAt, end)}${lanes ? ";height:5px" : ""}`, title: `${s.name}: ${s.status}` }));
        if (lanes) {
          commands.slice(0, MAX_COMMAND_BARS).forEach((c, i) => {
            const a = c.startedAt ?? c.issuedAt, b = c.endedAt ?? t1;
            bars.push(h("div", { class: `tl-bar tl-item ${c.status}`, style: `left:${pct(a)};width:${width(a, b)};top:${9 + (i % lanes) * 4}px`, title: `item ${c.index ?? ""} attempt ${c.attempt ?? 1}: ${c.status}${c.seconds !== null ? ` in ${duration(c.seconds)}` : ""}` }));
          });
        }
        return h("div", { class: "tl-row", role: "listitem" },
          h("button", { type: "button", onclick: () => { selected = s.name; graph?.select(s.name); renderDetail(); } }, s.name),
          h("div", { class: "tl-track", style: lanes ? `height:${12 + lanes * 4}px` : "" }, bars),
          h("span", { class: "muted" }, s.restored ? "kept" : s.startedAt ? duration((end - s.startedAt) / 1000) : ""));
      }),
      ordered.length ? "" : h("p", { class: "muted" }, "No step has started yet."),
    ]);
  }

  function renderDetail() {
    if (!selected) {
      fill(detail, 
        h("h2", {}, "Result"),
        doc.status === "running" ? h("p", { class: "muted" }, "Running… Select a step in the graph or the timeline.") : json(doc.result),
        h("h2", {}, "Workload"), json(info.workload ?? {}),
        Object.keys(doc.vars ?? {}).length ? [h("h2", {}, "Vars"), json(doc.vars)] : "");
      return;
    }
    const s = state.steps.get(selected);
    const node = info.graph?.nodes.find((n) => n.id === selected);
    const children = info.children.filter((c) => c.step === selected);
    const errors = s ? [s.error, ...[...s.commands.values()].map((c) => c.error)].filter(Boolean) : [];
    const seen = new Set();
    const unique = errors.filter((e) => { const k = JSON.stringify(e); if (seen.has(k)) return false; seen.add(k); return true; });
    fill(detail, 
      h("div", { class: "head" }, h("h2", { id: "step-title" }, `Step ${selected}`), badge(s?.status ?? "pending"),
        h("button", { type: "button", class: "ghost", onclick: () => { selected = null; renderDetail(); } }, "Execution")),
      node?.desc && h("p", { class: "muted" }, node.desc),
      s ? [
        h("div", { class: "facts" },
          node?.kind && h("span", {}, "tool ", h("b", {}, node.kind)),
          s.startedAt && h("span", {}, "started ", h("b", {}, when(new Date(s.startedAt).toISOString()))),
          s.endedAt && s.startedAt && h("span", {}, "took ", h("b", {}, duration((s.endedAt - s.startedAt) / 1000))),
          ranOf(s) !== null && h("span", { title: "how long its commands ran on runners, all items and attempts" }, "ran ", h("b", { class: "ran" }, duration(ranOf(s)))),
          s.items !== null && h("span", {}, "items ", h("b", {}, `${s.itemsDone}/${s.items}`)),
          s.commands.size > 0 && h("span", {}, "commands ", h("b", {}, s.commands.size)),
          s.restored && h("b", {}, "kept from the restarted execution")),
        children.length > 0 && [h("h3", {}, "Child executions"),
          h("ul", {}, children.map((c) => h("li", {}, h("a", { href: `#/executions/${c.execution_id}` }, c.execution_id), " ", badge(c.status), c.index !== null ? ` item ${c.index}` : "")))],
        s.args !== undefined && Object.keys(s.args ?? {}).length > 0 && [h("h3", {}, "Args passed by the route"), json(s.args)],
        node && Object.keys(node.args ?? {}).length > 0 && [h("h3", {}, "Args as written"), json(node.args)],
        unique.map((e) => [
          h("h3", {}, "Error"), h("p", { class: "error step-error" }, e.message ?? pretty(e)),
          e.traceback && [h("h3", {}, "Traceback"), h("pre", { class: "trace" }, e.traceback)],
        ]),
        s.result !== undefined && [h("h3", {}, "Result"), json(s.result)],
        s.vars && Object.keys(s.vars).length > 0 && [h("h3", {}, "Vars"), json(s.vars)],
      ] : h("p", { class: "muted" }, doc.status === "running" ? "Not started yet." : "This step did not run."),
    );
  }

  // A failed execution opens on its failed step, once (the user may then choose another).
  let focusedFailure = false;
  function selectFailure() {
    const failed = [...state.steps.values()].find((s) => s.status === "failed" && !s.restored);
    if (focusedFailure || selected || !failed || doc.status === "running") return;
    focusedFailure = true;
    selected = failed.name;
    graph?.select(failed.name);
  }

  function renderAll() {
    selectFailure();
    renderHeader();
    renderGraph();
    renderTimeline();
    renderDetail();
  }

  // Live: announced events recolour at once; the events are re-read for the details, no
  // more often than every REFETCH_MS nor than twice the last read took (a long loop's log
  // is large).
  let pending = null;
  let gap = REFETCH_MS;
  const refetch = () => {
    if (pending || signal.aborted) return;
    pending = setTimeout(async () => {
      const began = performance.now();
      try {
        const [fresh, more] = await Promise.all([
          api(`/api/executions/${id}/events`, { signal }),
          api(`/api/console/executions/${id}`, { signal }),
        ]);
        state = fold(fresh);
        doc = more.execution;
        info.children = more.children;
        renderAll();
      } catch { /* the next event or the end retries */ }
      gap = Math.max(REFETCH_MS, 2 * (performance.now() - began));
      pending = null;
    }, gap);
  };
  if (doc.status === "running") {
    const ticker = setInterval(() => { if (!document.hidden) { renderHeader(); renderTimeline(); } }, 1000);
    signal.addEventListener("abort", () => clearInterval(ticker));
    follow(id, {
      signal,
      onEvent: (event) => {
        applyAnnounced(state, event);
        renderGraph();
        refetch();
      },
      onEnd: (final) => {
        clearInterval(ticker);
        doc = final;
        clearTimeout(pending);
        pending = null;
        gap = 0; // the final state at once
        refetch();
      },
    }).catch((err) => { if (!signal.aborted) toast(`Live updates stopped: ${err.message}`, true); });
  }

  renderAll();
  return h("section", { "data-execution": id },
    header,
    h("div", { class: "row", style: "margin-bottom:12px" }, actions),
    h("div", { class: "grid2" },
      h("div", {},
        h("div", { class: "legend" }, ["pending", "running", "completed", "failed", "cancelled"].map((s) => h("span", {}, h("i", { style: `background:var(--${s})` }), s))),
        graph ? graph.element : h("p", { class: "muted" }, "The playbook's graph is unavailable."),
        h("h2", {}, "Timeline"), timeline),
      detail));
}
