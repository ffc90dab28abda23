// Playbooks: the catalog with versions, highlighted YAML, graph, diff, start and edit forms.
import { api } from "./api.js";
import { diffView } from "./diff.js";
import { drawGraph } from "./graph.js";
import { codeView, parseProblems } from "./yaml.js";
import { fill, h, parseJson, pretty, query, setQuery, toast, when } from "./util.js";

const TABS = ["yaml", "graph", "diff", "run", "edit"];
const TAB_NAMES = { yaml: "YAML", graph: "Graph", diff: "Diff", run: "Run", edit: "Edit" };
const NEW = "apiVersion: noetl.io/v2\nkind: Playbook\nmetadata:\n  name: my_playbook\n  path: examples/my_playbook\nworkload: {}\nworkflow:\n  - step: start\n    tool:\n      kind: python\n      code: |\n        result = {\"hello\": \"world\"}\n";

/** A catalog path in a URL: each segment encoded, the slashes kept. */
function segments(path) {
  return path.split("/").map(encodeURIComponent).join("/");
}

export async function playbooksPage(path, signal) {
  const catalog = await api("/api/console/playbooks", { signal });
  const params = query();
  const creating = params.new === "1";
  if (!path && !creating && catalog.length) path = catalog[0].path;
  const entry = catalog.find((p) => p.path === path);
  const side = h("nav", { "aria-label": "Playbooks" },
    h("div", { class: "row", style: "justify-content:space-between;margin-bottom:6px" },
      h("h1", {}, "Playbooks"),
      h("a", { class: "button", href: "#/playbooks?new=1", role: "button" }, "New")),
    catalog.length ? h("ul", { class: "list" }, catalog.map((p) => h("li", {},
      h("button", { type: "button", "aria-current": p.path === path && !creating ? "true" : "false", onclick: () => { location.hash = `#/playbooks/${encodeURIComponent(p.path)}`; } },
        p.path, h("span", { class: "muted" }, ` v${p.versions[0].version}`)))))
      : h("p", { class: "muted" }, "No playbook registered yet."));
  let main;
  if (creating || !entry) {
    main = creating ? editor(null, NEW) : h("p", { class: "muted" }, path ? `No playbook at ${path}.` : "Register one with New or `noetl-runtime register FILE`.");
  } else {
    main = await playbookView(entry, params, signal);
  }
  return h("section", { class: "side" }, h("div", {}, side), h("div", {}, main));
}

async function playbookView(entry, params, signal) {
  const versions = entry.versions.map((v) => v.version);
  const version = versions.includes(Number(params.version)) ? Number(params.version) : versions[0];
  const tab = TABS.includes(params.tab) ? params.tab : "yaml";
  const pb = await api(`/api/console/playbooks/${segments(entry.path)}?version=${version}`, { signal });
  const panel = h("div", { role: "tabpanel" });
  const go = (changes) => {
    const next = { version, tab, ...changes };
    setQuery(`playbooks/${encodeURIComponent(entry.path)}`, { version: next.version === versions[0] ? "" : next.version, tab: next.tab === "yaml" ? "" : next.tab });
    window.dispatchEvent(new HashChangeEvent("hashchange"));
  };
  const versionSelect = h("select", { name: "version", "aria-label": "Version", onchange: (e) => go({ version: Number(e.target.value) }) },
    entry.versions.map((v) => h("option", { value: v.version, selected: v.version === version }, `v${v.version} · ${when(v.created_at)}`)));
  const tabs = h("div", { class: "tabs", role: "tablist" }, TABS.map((t) => h("button", {
    type: "button", role: "tab", "aria-selected": t === tab ? "true" : "false", "data-tab": t, onclick: () => go({ tab: t }),
    onkeydown: (e) => {
      const at = TABS.indexOf(t);
      if (e.key === "ArrowRight") go({ tab: TABS[(at + 1) % TABS.length] });
      else if (e.key === "ArrowLeft") go({ tab: TABS[(at - 1 + TABS.length) % TABS.length] });
    },
  }, TAB_NAMES[t])));

  if (tab === "yaml") {
    panel.append(pb.problems.length ? h("p", { class: "error" }, `${pb.problems.length} problem(s) found by validation, marked on their lines.`) : "",
      codeView(pb.content, pb.problems));
  } else if (tab === "graph") {
    panel.append(pb.graph ? drawGraph(pb.graph, () => {}).element : h("p", { class: "muted" }, "The playbook does not validate, so it has no graph."));
  } else if (tab === "diff") {
    const older = versions.includes(Number(params.from)) ? Number(params.from) : (versions.find((v) => v < version) ?? version);
    const fromSelect = h("select", { name: "from", "aria-label": "Compare with version", onchange: (e) => {
      setQuery(`playbooks/${encodeURIComponent(entry.path)}`, { version, tab: "diff", from: e.target.value });
      window.dispatchEvent(new HashChangeEvent("hashchange"));
    } }, versions.map((v) => h("option", { value: v, selected: v === older }, `v${v}`)));
    const base = older === version ? pb : await api(`/api/console/playbooks/${segments(entry.path)}?version=${older}`, { signal });
    panel.append(h("div", { class: "row", style: "margin-bottom:8px" }, h("label", {}, "From", fromSelect), h("span", { class: "muted" }, `to v${version}`)),
      diffView(base.content, pb.content));
  } else if (tab === "run") {
    panel.append(startForm(entry.path, version, pb.workload));
  } else {
    panel.append(editor(entry.path, pb.content));
  }
  return h("div", {},
    h("div", { class: "head" }, h("h2", { style: "margin:0" }, entry.path), versionSelect,
      h("a", { href: `#/executions?q=${encodeURIComponent(entry.path)}` }, "executions")),
    tabs, panel);
}

function startForm(path, version, workload) {
  const text = h("textarea", { name: "workload", rows: 14, "aria-label": "Workload (JSON)" }, pretty(workload ?? {}));
  const timeout = h("input", { type: "number", name: "timeout", min: 1, step: "any", placeholder: "none", "aria-label": "Timeout in seconds" });
  const error = h("p", { class: "error", role: "alert" });
  return h("form", { class: "card", id: "start-form", onsubmit: async (e) => {
    e.preventDefault();
    error.textContent = "";
    try {
      const body = { path, version, workload: parseJson(text.value, "The workload") ?? {} };
      if (timeout.value) body.timeout = Number(timeout.value);
      const reply = await api("/api/executions", { method: "POST", body });
      location.hash = `#/executions/${reply.execution_id}`;
    } catch (err) { error.textContent = err.message; }
  } },
  h("h2", { style: "margin-top:0" }, `Start ${path} v${version}`),
  h("p", { class: "muted" }, "The workload (JSON) is merged over the playbook's own, shown here."),
  text,
  h("div", { class: "row", style: "margin-top:8px" }, h("label", {}, "Timeout (s)", timeout), h("button", { type: "submit" }, "Start")),
  error);
}

function editor(path, content) {
  const text = h("textarea", { name: "content", rows: 22, spellcheck: false, "aria-label": "Playbook YAML" }, content);
  const result = h("div", { "aria-live": "polite" });
  const show = (problems, message) => {
    fill(result, h("p", { class: problems.length ? "error" : "muted" }, message), problems.length ? codeView(text.value, problems) : "");
  };
  const validate = async () => {
    try {
      const checked = await api("/api/console/validate", { method: "POST", body: { content: text.value } });
      show(checked.problems, checked.problems.length ? `${checked.problems.length} problem(s), marked on their lines:` : "Valid.");
    } catch (err) { show([], err.message); }
  };
  const register = async () => {
    try {
      const reply = await api("/api/playbooks", { method: "POST", body: { content: text.value } });
      toast(reply.created ? `Registered ${reply.path} v${reply.version}` : `Unchanged: ${reply.path} v${reply.version}`);
      location.hash = `#/playbooks/${encodeURIComponent(reply.path)}?version=${reply.version}`;
    } catch (err) {
      if (err.problems?.length) show(parseProblems(err.problems), "The playbook is invalid:");
      else show([], err.message);
    }
  };
  return h("div", { class: "card", id: "editor" },
    h("h2", { style: "margin-top:0" }, path ? `Edit ${path} (registers a new version)` : "New playbook"),
    text,
    h("div", { class: "row", style: "margin:8px 0" },
      h("button", { type: "button", class: "ghost", onclick: validate }, "Validate"),
      h("button", { type: "button", onclick: register }, "Register")),
    result);
}
