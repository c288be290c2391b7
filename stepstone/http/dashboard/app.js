// Start-up: the token (from the URL fragment, session storage or a form), the hash
// router that swaps the main view, notices, the live indicator, and fresh relative times.
// Routes: #/  ·  #/workflows/NAME[?status=&cursor=]  ·  #/workflows/NAME/instances/ID

import * as api from "./api.js";
import { fill, h, refreshTimes } from "./format.js";
import { instanceView } from "./instance.js";
import { instancesView } from "./instances.js";
import { overviewView } from "./overview.js";

const main = document.getElementById("main");
const crumbs = document.getElementById("crumbs");
const notices = document.getElementById("notices");
const live = document.getElementById("live");
const forget = document.getElementById("forget-token");
const dialog = document.getElementById("token-dialog");
const tokenForm = document.getElementById("token-form");
const tokenInput = document.getElementById("token-input");
const tokenReason = document.getElementById("token-reason");

let pendingToken = null;

/** Show the token form; resolves once the user gave a token (shared by every call that got a 401). */
function askForToken(reason) {
  if (!pendingToken) {
    pendingToken = new Promise((resolve) => {
      tokenReason.textContent = reason;
      tokenInput.value = "";
      dialog.showModal();
      tokenInput.focus();
      tokenForm.onsubmit = (event) => {
        event.preventDefault();
        const value = tokenInput.value.trim();
        if (!value) return;
        api.setToken(value);
        dialog.close();
        showForget();
        pendingToken = null;
        resolve();
      };
    });
  }
  return pendingToken;
}

// Escape cannot dismiss the form: without a token there is nothing to show.
dialog.addEventListener("cancel", (event) => event.preventDefault());

function showForget() {
  forget.hidden = !api.token();
}

forget.addEventListener("click", () => {
  api.forgetToken();
  showForget();
  route();
});

/** A token in the URL fragment (#token=...) is stored and removed from the address bar; it never reaches the server. */
function takeTokenFromFragment() {
  const match = location.hash.match(/^#token=([^&]+)(?:&(.*))?$/);
  if (!match) return;
  api.setToken(decodeURIComponent(match[1]));
  history.replaceState(null, "", `${location.pathname}${location.search}#${match[2] ?? "/"}`);
}

/** Say what happened: "ok" (a confirmation) or "error"; a link may follow. */
function notify(kind, text, link) {
  const close = h("button", { type: "button", class: "quiet close", "aria-label": "Dismiss", onclick: () => note.remove() }, "×");
  const note = h(
    "div",
    { class: `notice notice-${kind}`, role: kind === "error" ? "alert" : "status" },
    h("span", {}, text),
    link ? [" ", h("a", { href: link.href }, link.text)] : null,
    close,
  );
  fill(notices, note);
}

function setLive(state) {
  live.dataset.state = state;
  live.textContent = { live: "live", reconnecting: "reconnecting…", stopped: "", idle: "" }[state] ?? "";
}

let cleanup = () => {};

function parseRoute() {
  const raw = location.hash.replace(/^#/, "") || "/";
  const [pathPart, query = ""] = raw.split("?");
  const parts = pathPart.split("/").filter(Boolean).map(decodeURIComponent);
  return { parts, query: new URLSearchParams(query) };
}

function setCrumbs(...items) {
  const nodes = [];
  items.forEach(([text, href], i) => {
    if (i) nodes.push(h("span", { class: "sep", "aria-hidden": "true" }, "/"));
    nodes.push(href ? h("a", { href }, text) : h("span", { "aria-current": "page" }, text));
  });
  fill(crumbs, nodes);
  document.title = items.length ? `${items[items.length - 1][0]} · stepstone` : "stepstone";
}

function route() {
  cleanup();
  fill(notices);
  const { parts, query } = parseRoute();
  const context = { main, notify, setLive, setCrumbs };
  main.replaceChildren(h("p", { class: "muted" }, "Loading…"));
  if (parts.length === 0) cleanup = overviewView(context);
  else if (parts.length === 2 && parts[0] === "workflows") cleanup = instancesView(context, parts[1], query);
  else if (parts.length === 4 && parts[0] === "workflows" && parts[2] === "instances") {
    cleanup = instanceView(context, parts[1], parts[3]);
  } else {
    setCrumbs();
    fill(main, h("h1", {}, "Not found"), h("p", {}, h("a", { href: "#/" }, "Back to the workflows")));
    cleanup = () => {};
  }
  window.scrollTo(0, 0);
}

api.onUnauthorized(askForToken);
takeTokenFromFragment();
showForget();
window.addEventListener("hashchange", () => {
  if (location.hash.startsWith("#token=")) takeTokenFromFragment();
  route();
});
setInterval(() => refreshTimes(), 10000);
route();
