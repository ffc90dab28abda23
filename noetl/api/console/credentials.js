// Credentials: names, types and the playbooks naming them; create and delete. The page never
// asks for a credential's data, so no secret value (masked or not) reaches the browser.
import { api } from "./api.js";
import { h, parseJson, toast, when } from "./util.js";

export async function credentialsPage(signal) {
  const [items, { types, usage }] = await Promise.all([
    api("/api/credentials", { signal }),
    api("/api/console/credential-usage", { signal }),
  ]);
  const reload = () => window.dispatchEvent(new HashChangeEvent("hashchange"));
  const remove = async (name) => {
    if (!confirm(`Delete credential ${name}?`)) return;
    try {
      await api(`/api/credentials/${encodeURIComponent(name)}`, { method: "DELETE" });
      toast(`Deleted ${name}`);
      reload();
    } catch (err) { toast(err.message, true); }
  };
  const name = h("input", { name: "name", required: true, pattern: "[A-Za-z0-9_.\\-]+", "aria-label": "Name" });
  const type = h("input", { name: "type", required: true, list: "credential-types", "aria-label": "Type", value: "postgres" });
  const data = h("textarea", { name: "data", rows: 6, required: true, "aria-label": "Data (JSON)", placeholder: '{"host": "db", "port": 5432, "user": "etl", "password": "…", "database": "dw"}' });
  const error = h("p", { class: "error", role: "alert" });
  const form = h("form", { class: "card", id: "credential-form", autocomplete: "off", onsubmit: async (e) => {
    e.preventDefault();
    error.textContent = "";
    try {
      const body = { type: type.value.trim(), data: parseJson(data.value, "The data") ?? {} };
      const reply = await api(`/api/credentials/${encodeURIComponent(name.value.trim())}`, { method: "PUT", body });
      // Cleared at once: the secret stays in the page no longer than the request.
      data.value = "";
      toast(reply.created ? `Created ${reply.name}` : `Replaced ${reply.name}`);
      reload();
    } catch (err) { error.textContent = err.message; }
  } },
  h("h2", { style: "margin-top:0" }, "Create or replace"),
  h("datalist", { id: "credential-types" }, types.map((t) => h("option", { value: t }))),
  h("div", { class: "row" }, h("label", {}, "Name", name), h("label", {}, "Type", type)),
  h("label", { style: "display:flex;margin-top:8px" }, "Data (JSON; write-only, never shown again)", data),
  error,
  h("button", { type: "submit" }, "Save"));
  return h("section", {},
    h("div", { class: "head" }, h("h1", {}, "Credentials"), h("span", { class: "muted" }, `${items.length} stored, encrypted at rest`)),
    h("table", { class: "credentials" },
      h("thead", {}, h("tr", {}, ["Name", "Type", "Used by", "Updated", ""].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, items.length ? items.map((c) => h("tr", { "data-name": c.name },
        h("td", { class: "mono" }, c.name),
        h("td", {}, c.type),
        h("td", { class: "path" }, (usage[c.name] ?? []).length
          ? (usage[c.name]).map((p, i) => [i ? ", " : "", h("a", { href: `#/playbooks/${encodeURIComponent(p)}` }, p)])
          : h("span", { class: "muted" }, "no playbook")),
        h("td", {}, when(c.updated_at)),
        h("td", {}, h("button", { type: "button", class: "ghost", "aria-label": `Delete ${c.name}`, onclick: () => remove(c.name) }, "Delete"))))
        : h("tr", {}, h("td", { colspan: 5, class: "muted" }, "No credential stored.")))),
    h("div", { style: "margin-top:16px;max-width:640px" }, form));
}
