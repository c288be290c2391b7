// The overview: each workflow with its instance counts by status (live, from
// GET /workflows/stream) and its newest instances with their last update.

import * as api from "./api.js";
import { STATUSES, badge, fill, h, when } from "./format.js";

const RECENT = 5;

export function overviewView({ main, notify, setLive, setCrumbs }) {
  setCrumbs();
  let stopped = false;
  const cards = new Map();
  const grid = h("div", { class: "cards" });
  const empty = h(
    "p",
    { class: "empty", hidden: true },
    "No workflows yet. An Engine records the workflows it serves when it starts (",
    h("code", {}, "stepstone worker"),
    " or ",
    h("code", {}, "stepstone dev"),
    ").",
  );
  let shown = false;

  function show() {
    if (shown) return;
    shown = true;
    fill(main, h("h1", {}, "Workflows"), empty, grid);
  }

  async function loadRecent(name, card) {
    try {
      const { result } = await api.call("GET", `${api.path("workflows", name, "instances")}?per_page=${RECENT}`);
      if (!stopped) renderRecent(card.recent, name, result);
    } catch (error) {
      if (!stopped) fill(card.recent, h("li", { class: "muted" }, error.message));
    }
  }

  function update(rows) {
    show();
    empty.hidden = rows.length > 0;
    const names = new Set(rows.map((row) => row.name));
    for (const [name, card] of cards) {
      if (!names.has(name)) {
        card.reload.cancel();
        card.element.remove();
        cards.delete(name);
      }
    }
    rows.forEach((row) => {
      let card = cards.get(row.name);
      if (!card) {
        card = workflowCard(row.name);
        const made = card;
        card.reload = api.paced(() => loadRecent(row.name, made), { delay: 0 });
        cards.set(row.name, card);
      }
      grid.append(card.element); // keeps the server's order (by name)
      const changed = JSON.stringify(row.counts) !== card.counts;
      card.counts = JSON.stringify(row.counts);
      renderCounts(card, row);
      if (changed) card.reload();
    });
  }

  const stop = api.follow(
    "workflows/stream",
    {
      workflows: (rows) => !stopped && update(rows),
      failed: (error) => notify("error", error.message),
    },
    setLive,
  );
  return () => {
    stopped = true;
    for (const card of cards.values()) card.reload.cancel();
    stop();
  };
}

function workflowCard(name) {
  const href = `#/workflows/${encodeURIComponent(name)}`;
  const total = h("span", { class: "muted total" });
  const bar = h("div", { class: "bar", role: "img" });
  const chips = h("div", { class: "chips" });
  const recent = h("ul", { class: "recent" }, h("li", { class: "muted" }, "…"));
  const element = h(
    "section",
    { class: "card", "data-workflow": name },
    h("header", {}, h("h2", {}, h("a", { href }, name)), total),
    bar,
    chips,
    h("h3", {}, "Newest instances"),
    recent,
  );
  return { element, total, bar, chips, recent, counts: null };
}

function renderCounts(card, row) {
  const sum = Object.values(row.counts).reduce((a, b) => a + b, 0);
  card.total.textContent = `${sum.toLocaleString()} instance${sum === 1 ? "" : "s"}`;
  const present = STATUSES.filter((status) => row.counts[status] > 0);
  card.bar.setAttribute("aria-label", present.map((s) => `${row.counts[s]} ${s}`).join(", ") || "no instances");
  fill(
    card.bar,
    present.map((status) =>
      h("span", { class: `seg status-${status}`, "data-share": row.counts[status] / sum }),
    ),
  );
  for (const seg of card.bar.children) seg.style.flexGrow = seg.dataset.share;
  const base = `#/workflows/${encodeURIComponent(row.name)}`;
  fill(
    card.chips,
    present.length
      ? present.map((status) =>
          h(
            "a",
            { class: `chip status-${status}`, href: `${base}?status=${status}`, "data-status": status },
            h("span", { class: "dot" }),
            status,
            " ",
            h("strong", { class: "count" }, row.counts[status].toLocaleString()),
          ),
        )
      : h("span", { class: "muted" }, "no instances yet"),
  );
}

function renderRecent(list, name, instances) {
  if (!instances.length) {
    fill(list, h("li", { class: "muted" }, "nothing yet"));
    return;
  }
  fill(
    list,
    instances.map((instance) =>
      h(
        "li",
        {},
        badge(instance.status),
        h("a", { class: "mono id", href: `#/workflows/${encodeURIComponent(name)}/instances/${encodeURIComponent(instance.id)}` }, instance.id),
        h("span", { class: "muted" }, when(instance.updated)),
      ),
    ),
  );
}
