// A playbook's step graph as SVG: layered top-down from `start`, each node focusable.
import { h } from "./util.js";

const W = 180, H = 62, GAP_X = 34, GAP_Y = 62, PAD = 24;

/** Layers by longest path over the graph without its back edges (loops drawn aside). */
function layout(nodes, edges) {
  const index = new Map(nodes.map((n, i) => [n.id, i]));
  const out = new Map(nodes.map((n) => [n.id, []]));
  for (const e of edges) out.get(e.source)?.push(e.target);
  const back = new Set();
  const state = new Map(); // 1 on the DFS stack, 2 done
  const visit = (id) => {
    state.set(id, 1);
    for (const t of out.get(id)) {
      if (state.get(t) === 1) back.add(`${id}\u0000${t}`);
      else if (!state.has(t)) visit(t);
    }
    state.set(id, 2);
  };
  if (index.has("start")) visit("start");
  for (const n of nodes) if (!state.has(n.id)) visit(n.id);
  const forward = edges.filter((e) => !back.has(`${e.source}\u0000${e.target}`));
  const layer = new Map(nodes.map((n) => [n.id, 0]));
  // Longest path by relaxation: at most |nodes| rounds over an acyclic edge set.
  for (let round = 0, changed = true; changed && round < nodes.length; round++) {
    changed = false;
    for (const e of forward) {
      if (layer.get(e.target) < layer.get(e.source) + 1) {
        layer.set(e.target, layer.get(e.source) + 1);
        changed = true;
      }
    }
  }
  const rows = [];
  for (const n of nodes) (rows[layer.get(n.id)] ??= []).push(n.id);
  const pos = new Map();
  const preds = new Map(nodes.map((n) => [n.id, []]));
  for (const e of forward) preds.get(e.target).push(e.source);
  const width = Math.max(...rows.map((r) => r?.length ?? 0)) * (W + GAP_X);
  rows.forEach((row = [], depth) => {
    // Barycentre of the predecessors' x keeps children under their parents.
    const key = (id) => {
      const xs = preds.get(id).map((p) => pos.get(p)?.x).filter((x) => x !== undefined);
      return xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : index.get(id) * 1e-3;
    };
    row.sort((a, b) => key(a) - key(b) || index.get(a) - index.get(b));
    const span = row.length * (W + GAP_X) - GAP_X;
    row.forEach((id, i) => {
      pos.set(id, { x: PAD + (width - span) / 2 + i * (W + GAP_X), y: PAD + depth * (H + GAP_Y) });
    });
  });
  return { pos, back, width: width + 2 * PAD, height: rows.length * (H + GAP_Y) - GAP_Y + 2 * PAD };
}

function short(text, n) {
  return text.length > n ? `${text.slice(0, n - 1)}…` : text;
}

/**
 * Draw `graph` ({nodes, edges}); `onSelect(step)` when a node is clicked or chosen with the
 * keyboard. Returns the element and `update(step, {status, note})`.
 */
export function drawGraph(graph, onSelect) {
  const { nodes, edges } = graph;
  const { pos, back, width, height } = layout(nodes, edges);
  const svg = h("svg:svg", {
    width: Math.max(width, 300), height: Math.max(height, 80), role: "group",
    "aria-label": "Step graph", viewBox: `0 0 ${Math.max(width, 300)} ${Math.max(height, 80)}`,
  });
  const defs = h("svg:defs", {}, h("svg:marker", {
    id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse",
  }, h("svg:path", { d: "M0,0 L10,5 L0,10 z", fill: "currentColor", class: "arrowhead" })));
  svg.append(defs);
  let extra = 0; // width the loop lanes need beyond the nodes
  // Routes back (loops) go up on the right of every node they pass, each in its own lane.
  let lane = 0;
  for (const e of edges) {
    const a = pos.get(e.source), b = pos.get(e.target);
    if (!a || !b) continue;
    let d, lx, ly;
    if (e.source === e.target) {
      const x = a.x + W, y1 = a.y + 16, y2 = a.y + H - 16;
      d = `M${x},${y1} C${x + 24},${y1 - 6} ${x + 24},${y2 + 6} ${x + 2},${y2}`;
      lx = null; // no room beside the node: the condition is the path's tooltip
    } else if (back.has(`${e.source}\u0000${e.target}`)) {
      const top = Math.min(a.y, b.y), bottom = Math.max(a.y, b.y) + H;
      const passed = [...pos.values()].filter((p) => p.y + H >= top && p.y <= bottom);
      const xo = Math.max(...passed.map((p) => p.x + W)) + 18 + 12 * lane++;
      const y1 = a.y + H / 2, y2 = b.y + H / 2, x1 = a.x + W, x2 = b.x + W;
      d = `M${x1},${y1} L${xo - 8},${y1} Q${xo},${y1} ${xo},${y1 - 8} L${xo},${y2 + 8} Q${xo},${y2} ${xo - 8},${y2} L${x2 + 2},${y2}`;
      lx = xo + 4; ly = (y1 + y2) / 2;
      extra = Math.max(extra, xo + 40 - width);
    } else {
      const x1 = a.x + W / 2, y1 = a.y + H, x2 = b.x + W / 2, y2 = b.y;
      const k = (y2 - y1) / 2;
      d = `M${x1},${y1} C${x1},${y1 + k} ${x2},${y2 - k} ${x2},${y2 - 1}`;
      // Near the target, so the labels of a fan-out do not overlap.
      lx = x2 + 6; ly = y2 - 8;
    }
    svg.append(h("svg:path", { d, class: `edge${e.when ? " cond" : ""}`, "marker-end": "url(#arrow)", "data-edge": `${e.source}>${e.target}` },
      e.when && h("svg:title", {}, e.when)));
    if (e.when && lx !== null) svg.append(h("svg:text", { x: lx, y: ly, class: "edge-label" }, h("svg:title", {}, e.when), short(e.when.replace(/\s+/g, " "), 26)));
  }
  if (extra > 0) {
    const w = Math.max(width, 300) + extra + 120;
    svg.setAttribute("width", w);
    svg.setAttribute("viewBox", `0 0 ${w} ${Math.max(height, 80)}`);
  }
  const notes = new Map();
  const groups = [];
  for (const n of nodes) {
    const p = pos.get(n.id);
    const kind = n.playbook ? `playbook ${n.playbook}` : (n.kind ?? "route");
    const loop = n.loop ? (n.loop.pagination ? "pages · " : `loop ${n.loop.mode} · `) : "";
    const note = h("svg:text", { x: p.x + 10, y: p.y + 53, class: "sub note" }, "");
    notes.set(n.id, note);
    const g = h("svg:g", {
      class: "node pending", tabindex: 0, role: "button", "data-step": n.id, "data-state": "pending",
      "aria-label": `step ${n.id}: pending`,
      onclick: () => select(n.id),
      onkeydown: (ev) => {
        const at = groups.indexOf(g);
        if (ev.key === "Enter" || ev.key === " ") select(n.id);
        else if (ev.key === "ArrowRight" || ev.key === "ArrowDown") groups[(at + 1) % groups.length].focus();
        else if (ev.key === "ArrowLeft" || ev.key === "ArrowUp") groups[(at - 1 + groups.length) % groups.length].focus();
        else return;
        ev.preventDefault();
      },
    },
    h("svg:title", {}, n.desc ? `${n.id}: ${n.desc}` : n.id),
    h("svg:rect", { x: p.x, y: p.y, width: W, height: H, rx: 8 }),
    h("svg:text", { x: p.x + 10, y: p.y + 19, "font-weight": 600 }, short(n.id, 24)),
    h("svg:text", { x: p.x + 10, y: p.y + 36, class: "sub" }, short(loop + kind, 30)),
    note);
    groups.push(g);
    svg.append(g);
  }
  function select(step) {
    for (const g of groups) g.classList.toggle("selected", g.dataset.step === step);
    onSelect(step);
  }
  function update(step, { status, note }) {
    const g = groups.find((x) => x.dataset.step === step);
    if (!g) return;
    g.classList.remove("pending", "running", "completed", "failed", "cancelled", "skipped");
    g.classList.add(status);
    g.dataset.state = status;
    g.setAttribute("aria-label", `step ${step}: ${status}${note ? `, ${note}` : ""}`);
    notes.get(step).textContent = short(note ?? "", 30);
  }
  svg.style.color = "var(--muted)";
  return { element: h("div", { class: "graph" }, svg), update, select };
}
