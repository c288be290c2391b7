// One workflow's instances: a table (newest first) filtered by status, opened by id,
// paged with the API's keyset cursor (Next, then Newest), live from the workflow's
// change stream; and a form that triggers a new instance.

import * as api from "./api.js";
import { STATUSES, at, badge, elapsed, fill, h } from "./format.js";

const PER_PAGE = 25;
const REFETCH_MS = 400;

export function instancesView({ main, notify, setLive, setCrumbs }, name, query) {
  const status = STATUSES.includes(query.get("status")) ? query.get("status") : null;
  const cursor = query.get("cursor");
  const base = `#/workflows/${encodeURIComponent(name)}`;
  const instancePath = (id) => `${base}/instances/${encodeURIComponent(id)}`;
  const pageUrl = (params) => {
    const search = new URLSearchParams(params);
    for (const [key, value] of [...search]) if (!value) search.delete(key);
    const text = search.toString();
    return text ? `${base}?${text}` : base;
  };
  setCrumbs(["Workflows", "#/"], [name, null]);
  let stopped = false;
  let counts = null;
  const rows = new Map();

  const filters = h("nav", { class: "filters", "aria-label": "Filter by status" });
  const tbody = h("tbody");
  const table = h(
    "table",
    { class: "instances" },
    h(
      "thead",
      {},
      h("tr", {}, h("th", {}, "Instance"), h("th", {}, "Status"), h("th", {}, "Created"), h("th", {}, "Last update"), h("th", {}, "Duration")),
    ),
    tbody,
  );
  const pager = h("nav", { class: "pager", "aria-label": "Pages" });

  // -- open an instance by id -----------------------------------------------------------------
  const idInput = h("input", { type: "search", name: "id", placeholder: "Find by instance id", "aria-label": "Find by instance id", required: true, autocomplete: "off" });
  const search = h(
    "form",
    {
      class: "search",
      role: "search",
      onsubmit: async (event) => {
        event.preventDefault();
        const id = idInput.value.trim();
        if (!id) return;
        try {
          await api.call("GET", api.path("workflows", name, "instances", id));
          location.hash = instancePath(id);
        } catch (error) {
          notify("error", error.code === "instance_not_found" ? `No instance "${id}" in ${name}.` : error.message);
        }
      },
    },
    idInput,
    h("button", { type: "submit" }, "Open"),
  );

  // -- trigger a new instance ------------------------------------------------------------------
  const newId = h("input", { name: "instance_id", placeholder: "generated", autocomplete: "off", id: "trigger-id" });
  const params = h("textarea", { name: "params", rows: 4, spellcheck: "false", id: "trigger-params" });
  params.value = "{}";
  const trigger = h(
    "details",
    { class: "panel trigger" },
    h("summary", {}, "Trigger an instance"),
    h(
      "form",
      {
        onsubmit: async (event) => {
          event.preventDefault();
          let body;
          try {
            body = { params: params.value.trim() ? JSON.parse(params.value) : null };
          } catch (error) {
            notify("error", `The params are not valid JSON: ${error.message}`);
            params.focus();
            return;
          }
          if (newId.value.trim()) body.instance_id = newId.value.trim();
          try {
            const { result } = await api.call("POST", api.path("workflows", name, "instances"), body);
            notify("ok", `Created instance ${result.id} of ${name} (${result.status}).`, { href: instancePath(result.id), text: "Open it" });
            newId.value = "";
            if (!cursor) refetch();
          } catch (error) {
            notify("error", error.message);
          }
        },
      },
      h("label", { for: "trigger-id" }, "Instance id ", h("span", { class: "muted" }, "(optional)")),
      newId,
      h("label", { for: "trigger-params" }, "Params ", h("span", { class: "muted" }, "(JSON)")),
      params,
      h("div", { class: "row" }, h("button", { type: "submit", class: "primary" }, "Trigger")),
    ),
  );

  fill(
    main,
    h("div", { class: "title-row" }, h("h1", {}, name), search),
    filters,
    trigger,
    h("div", { class: "table-wrap" }, table),
    pager,
  );

  function renderFilters() {
    const total = counts ? Object.values(counts).reduce((a, b) => a + b, 0) : null;
    const chip = (value, label, count) =>
      h(
        "a",
        {
          class: `chip ${value ? `status-${value}` : "all"}`,
          href: pageUrl({ status: value }),
          "aria-current": value === status ? "page" : null,
          "data-status": value ?? "all",
        },
        value ? h("span", { class: "dot" }) : null,
        label,
        count === null ? null : [" ", h("strong", { class: "count" }, count.toLocaleString())],
      );
    // Only the statuses some instance has (and the one filtered on): nine chips of zeros say little.
    const shown = STATUSES.filter((value) => value === status || (counts && counts[value] > 0));
    fill(
      filters,
      chip(null, "all", total),
      shown.map((value) => chip(value, value, counts ? counts[value] : null)),
    );
  }

  function row(instance) {
    return h(
      "tr",
      { "data-id": instance.id, "data-status": instance.status },
      h("td", { class: "mono id" }, h("a", { href: instancePath(instance.id) }, instance.id)),
      h("td", {}, badge(instance.status)),
      h("td", {}, at(instance.created)),
      h("td", {}, at(instance.updated)),
      h("td", { class: "num" }, elapsed(instance.started, instance.ended)),
    );
  }

  function renderPage(instances, info) {
    rows.clear();
    if (!instances.length) {
      fill(tbody, h("tr", {}, h("td", { colspan: 5, class: "empty" }, status ? `No ${status} instances.` : "No instances yet.")));
    } else {
      fill(tbody, instances.map((instance) => {
        const tr = row(instance);
        rows.set(instance.id, tr);
        return tr;
      }));
    }
    fill(
      pager,
      cursor ? h("a", { class: "button", href: pageUrl({ status }) }, "« Newest") : null,
      info?.cursor ? h("a", { class: "button", href: pageUrl({ status, cursor: info.cursor }), rel: "next" }, "Next page ›") : null,
    );
  }

  async function load() {
    const listQuery = new URLSearchParams({ per_page: PER_PAGE });
    if (status) listQuery.set("status", status);
    if (cursor) listQuery.set("cursor", cursor);
    try {
      const { result, info } = await api.call("GET", `${api.path("workflows", name, "instances")}?${listQuery}`);
      if (!stopped) renderPage(result, info);
    } catch (error) {
      if (!stopped) notify("error", error.message);
    }
  }

  // The stream updates rows in place; a new instance, or a change of counts (an instance
  // deleted, or one leaving the filter), reloads the page, at most every 2 s.
  const refetch = api.paced(load, { delay: REFETCH_MS });

  function changed(instance) {
    const tr = rows.get(instance.id);
    if (tr) {
      const fresh = row(instance);
      rows.set(instance.id, fresh);
      tr.replaceWith(fresh);
    } else if (!cursor && (!status || instance.status === status)) {
      refetch(); // a new instance on the first page
    }
  }

  renderFilters();
  load();
  const stop = api.follow(
    `${api.path("workflows", name, "stream")}?per_page=${PER_PAGE}`,
    {
      counts: (data) => {
        if (stopped) return;
        if (counts !== null) refetch();
        counts = data.counts;
        renderFilters();
      },
      instance: (instance) => !stopped && changed(instance),
      failed: (error) => notify("error", error.message),
    },
    setLive,
  );
  return () => {
    stopped = true;
    refetch.cancel();
    stop();
  };
}
