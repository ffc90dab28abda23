// Small DOM and formatting helpers shared by the pages.

/** An element with attributes (`on*` functions become listeners) and children. */
export function h(tag, attrs = {}, ...children) {
  const node = tag.startsWith("svg:")
    ? document.createElementNS("http://www.w3.org/2000/svg", tag.slice(4))
    : document.createElement(tag);
  for (const [key, value] of Object.entries(attrs ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      node.addEventListener(key.slice(2).toLowerCase(), value);
    } else if (key === "class") {
      node.setAttribute("class", value);
    } else if (key in node && !tag.startsWith("svg:") && typeof value !== "string") {
      node[key] = value;
    } else {
      node.setAttribute(key, value === true ? "" : String(value));
    }
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(node, child);
    else node.append(child instanceof Node ? child : String(child));
  }
}

export function badge(status) {
  return h("span", { class: `badge ${status}`, "data-status": status }, status);
}

export function when(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} `
    + `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "";
  if (seconds < 0.01) return `${(seconds * 1000).toFixed(1)} ms`;
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 2 : 1)} s`;
  const m = Math.floor(seconds / 60);
  if (m < 60) return `${m} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

export function pretty(value) {
  return JSON.stringify(value, null, 2);
}

export function toast(message, bad = false) {
  const box = document.getElementById("toast");
  const item = h("div", { class: bad ? "bad" : "" }, message);
  box.append(item);
  setTimeout(() => item.remove(), bad ? 8000 : 4000);
}

/** The route's query as an object (`#/x?a=1` gives `{a: "1"}`). */
export function query() {
  const at = location.hash.indexOf("?");
  return Object.fromEntries(new URLSearchParams(at < 0 ? "" : location.hash.slice(at + 1)));
}

export function setQuery(path, params) {
  const kept = Object.entries(params).filter(([, v]) => v !== "" && v !== undefined && v !== null);
  const text = new URLSearchParams(kept).toString();
  const hash = `#/${path}${text ? `?${text}` : ""}`;
  if (location.hash !== hash) history.replaceState(null, "", hash);
}

/** Parse JSON typed by the user; throws an Error naming the field. */
export function parseJson(text, what) {
  if (!text.trim()) return undefined;
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new Error(`${what} is not valid JSON: ${err.message}`);
  }
}

/** Replace `node`'s children (arrays flattened, null and false left out). */
export function fill(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}
