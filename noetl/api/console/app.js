// The console's shell: login, theme, navigation and the hash router.
import { api, setToken, token, whenUnauthorized } from "./api.js";
import { credentialsPage } from "./credentials.js";
import { executionPage } from "./execution.js";
import { executionsPage } from "./executions.js";
import { playbooksPage } from "./playbooks.js";

const view = document.getElementById("view");
let current = null; // the shown page's AbortController: aborted when the route changes

function applyTheme(theme) {
  if (theme) document.documentElement.dataset.theme = theme;
  else delete document.documentElement.dataset.theme;
}

function toggleTheme() {
  const dark = document.documentElement.dataset.theme
    ? document.documentElement.dataset.theme === "dark"
    : matchMedia("(prefers-color-scheme: dark)").matches;
  const next = dark ? "light" : "dark";
  localStorage.setItem("noetl.theme", next);
  applyTheme(next);
}

function showLogin(message = "") {
  current?.abort();
  current = null;
  document.getElementById("logout").hidden = true;
  const form = document.getElementById("login-template").content.firstElementChild.cloneNode(true);
  form.querySelector(".error").textContent = message;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    setToken(form.token.value.trim());
    try {
      await api("/api/console/executions?limit=1");
      route();
    } catch (err) {
      setToken(null);
      form.querySelector(".error").textContent =
        err.status === 401 ? "Wrong token." : `The API did not answer: ${err.message}`;
    }
  });
  view.replaceChildren(form);
  form.token.focus();
}

const pages = [
  [/^executions\/(\d+)$/, "executions", (m, signal) => executionPage(m[1], signal)],
  [/^executions$/, "executions", (m, signal) => executionsPage(signal)],
  [/^playbooks(?:\/(.+))?$/, "playbooks", (m, signal) => playbooksPage(m[1] && decodeURIComponent(m[1]), signal)],
  [/^credentials$/, "credentials", (m, signal) => credentialsPage(signal)],
];

async function route() {
  const hash = location.hash.replace(/^#\/?/, "").split("?")[0];
  if (!hash) {
    location.replace("#/executions");
    return;
  }
  current?.abort();
  current = new AbortController();
  const signal = current.signal;
  document.getElementById("logout").hidden = token() === null;
  for (const [pattern, nav, render] of pages) {
    const match = pattern.exec(hash);
    if (!match) continue;
    for (const link of document.querySelectorAll("nav a")) {
      link.toggleAttribute("aria-current", link.dataset.nav === nav);
      if (link.dataset.nav === nav) link.setAttribute("aria-current", "page");
    }
    try {
      const page = await render(match, signal);
      if (!signal.aborted) {
        view.replaceChildren(page);
        page.dataset.page = nav;
        // Keyboard and screen-reader users start at the new page, not at the old link.
        if (!view.contains(document.activeElement)) view.focus({ preventScroll: true });
      }
    } catch (err) {
      if (signal.aborted || err.name === "AbortError" || err.status === 401) return;
      const box = document.createElement("div");
      box.className = "card error";
      box.textContent = err.message;
      view.replaceChildren(box);
    }
    return;
  }
  view.textContent = "No such page.";
}

applyTheme(localStorage.getItem("noetl.theme"));
document.getElementById("theme").addEventListener("click", toggleTheme);
document.getElementById("logout").addEventListener("click", () => {
  setToken(null);
  showLogin();
});
whenUnauthorized(() => showLogin(token() ? "The token was refused." : ""));
window.addEventListener("hashchange", route);
route();
