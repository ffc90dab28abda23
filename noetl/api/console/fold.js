// Folds an execution's events into the state of each step, for the graph and the timeline.

function blank(name) {
  return {
    name, status: "pending", startedAt: null, endedAt: null, activations: 0, args: undefined,
    items: null, itemsDone: 0, itemsFailed: 0, result: undefined, vars: undefined,
    error: null, restored: false, commands: new Map(),
  };
}

/** `{steps: Map<name, step>, started, ended}` from the events (oldest first). */
export function fold(events) {
  const steps = new Map();
  const step = (name) => {
    if (!steps.has(name)) steps.set(name, blank(name));
    return steps.get(name);
  };
  let started = null, ended = null;
  for (const e of events) {
    const at = Date.parse(e.created_at);
    const p = e.payload ?? {};
    switch (e.event_type) {
      case "execution.started": {
        started = at;
        for (const [name, kept] of Object.entries(p.restore?.steps ?? {})) {
          const s = step(name);
          s.restored = true;
          s.status = kept.status === "completed" ? "completed" : "failed";
          s.result = kept.result;
          s.error = kept.error ?? null;
        }
        break;
      }
      case "execution.completed":
      case "execution.failed":
      case "execution.cancelled":
        ended = at;
        if (e.event_type === "execution.cancelled") {
          for (const s of steps.values()) if (s.status === "running") s.status = "cancelled";
        }
        break;
      case "step.started": {
        const s = step(e.step);
        s.status = "running";
        s.restored = false;
        s.startedAt ??= at;
        s.endedAt = null;
        s.activations += 1;
        s.args = p.args;
        if (Array.isArray(p.items)) { s.items = p.items.length; s.itemsDone = 0; s.itemsFailed = 0; }
        break;
      }
      case "step.item": {
        const s = step(e.step);
        s.itemsDone += 1;
        const bad = Boolean(e.error || p.error);
        if (bad) s.itemsFailed += 1;
        // A sub-playbook's command has no runner events: its item ends it.
        const c = s.commands.get(e.command_id);
        if (c && c.endedAt === null) { c.endedAt = at; c.status = bad ? "failed" : "completed"; }
        break;
      }
      case "step.completed": {
        const s = step(e.step);
        s.status = "completed";
        s.endedAt = at;
        s.result = p.result;
        s.vars = p.vars;
        break;
      }
      case "step.failed": {
        const s = step(e.step);
        s.status = "failed";
        s.endedAt = at;
        s.error = e.error;
        break;
      }
      case "command.issued":
      case "command.started":
      case "command.completed":
      case "command.failed": {
        const s = step(e.step);
        const c = s.commands.get(e.command_id) ?? { id: e.command_id, issuedAt: at, startedAt: null, endedAt: null, seconds: null, status: "pending" };
        if (e.event_type === "command.issued") {
          Object.assign(c, { index: p.index, attempt: p.attempt, kind: p.kind, args: p.args });
        } else if (e.event_type === "command.started") {
          // The runner's own time: a fast command's start is committed with its outcome.
          c.startedAt = typeof p.started_at === "number" ? p.started_at * 1000 : at; c.status = "running";
        } else {
          c.endedAt = at; c.status = e.status ?? (e.event_type === "command.failed" ? "failed" : "completed");
          // How long it ran, as the runner measured it; else (older events) from its start.
          c.seconds = typeof p.seconds === "number" ? p.seconds : c.startedAt !== null ? Math.max(0, at - c.startedAt) / 1000 : null;
          if (c.seconds !== null && c.startedAt !== null) c.endedAt = c.startedAt + c.seconds * 1000;
          if (e.error) c.error = e.error;
        }
        s.commands.set(e.command_id, c);
        break;
      }
      default:
        break;
    }
  }
  return { steps, started, ended };
}

/** Seconds a step's commands ran on runners, all items and attempts; null when none ended. */
export function ranOf(s) {
  const known = [...s.commands.values()].filter((c) => c.seconds !== null && c.seconds !== undefined);
  return known.length ? known.reduce((sum, c) => sum + c.seconds, 0) : null;
}

/** Apply one announced SSE event (`{type, step, status, error}`) to folded state. */
export function applyAnnounced(state, event) {
  if (!event.step || !event.type.startsWith("step.")) return;
  let s = state.steps.get(event.step);
  if (!s) { s = blank(event.step); state.steps.set(event.step, s); }
  if (event.type === "step.started") { s.status = "running"; s.startedAt ??= Date.now(); }
  else if (event.type === "step.completed") s.status = "completed";
  else if (event.type === "step.failed") { s.status = "failed"; s.error = event.error ?? s.error; }
  else if (event.type === "step.item") s.itemsDone += 1;
}

/** The short note a node shows: loop items, attempts. */
export function noteOf(s) {
  const parts = [];
  if (s.items !== null) parts.push(`${s.itemsDone}/${s.items} items${s.itemsFailed ? `, ${s.itemsFailed} failed` : ""}`);
  const attempts = Math.max(0, ...[...s.commands.values()].map((c) => c.attempt ?? 0));
  if (attempts > 1) parts.push(`attempt ${attempts}`);
  if (s.restored) parts.push("kept");
  return parts.join(", ");
}
