// Building the page safely, and showing values: dates in local time with relative time,
// durations, status badges, and JSON pretty-printed with long values folded. Everything
// from the API goes into the page as text nodes, never as HTML.

/** An element: h("a", {href: "#/", class: "x"}, "text", child, ...). Strings become text nodes. */
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else if (value === true) element.setAttribute(name, "");
    else element.setAttribute(name, String(value));
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace an element's children. */
export function fill(element, ...children) {
  element.replaceChildren();
  append(element, children);
  return element;
}

export const STATUSES = [
  "queued", "running", "paused", "errored", "terminated", "complete", "waiting", "waitingForPause", "unknown",
];

/** A coloured badge for an instance's (or a step's) status. */
export function badge(status) {
  return h("span", { class: `badge status-${status}`, "data-status": status, title: status }, status);
}

const longDate = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });
const shortTime = new Intl.DateTimeFormat(undefined, { timeStyle: "medium" });
const shortDate = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric" });

/** A date in the browser's local time: "27 Nov 2026, 11:04:05". */
function localTime(iso) {
  return longDate.format(new Date(iso));
}

/** Local time, short: the time today, else the day and time. */
function shortLocalTime(iso) {
  const date = new Date(iso);
  const today = new Date().toDateString() === date.toDateString();
  return today ? shortTime.format(date) : `${shortDate.format(date)}, ${shortTime.format(date)}`;
}

/** "just now", "12 s ago", "3 min ago", "in 2 h", "5 days ago". */
function relative(iso, now = Date.now()) {
  const seconds = (new Date(iso).getTime() - now) / 1000;
  const size = Math.abs(seconds);
  if (size < 5) return "just now";
  // Each unit while its rounded figure stays below the next unit: 59.6 min reads "1 h".
  let text;
  if (Math.round(size) < 60) text = `${Math.round(size)} s`;
  else if (Math.round(size / 60) < 60) text = `${Math.round(size / 60)} min`;
  else if (Math.round(size / 3600) < 24) text = `${Math.round(size / 3600)} h`;
  else {
    const days = Math.round(size / 86400);
    text = `${days} day${days === 1 ? "" : "s"}`;
  }
  return seconds < 0 ? `${text} ago` : `in ${text}`;
}

/** A <time>: relative text (kept fresh by refreshTimes), the local date in its tooltip. */
export function when(iso) {
  if (!iso) return h("span", { class: "muted" }, "—");
  return h("time", { datetime: iso, title: localTime(iso), class: "rel" }, relative(iso));
}

/** A <time> showing the local time, with the relative time after it. */
export function at(iso) {
  if (!iso) return h("span", { class: "muted" }, "—");
  return h(
    "span",
    { class: "at" },
    h("time", { datetime: iso, title: localTime(iso), class: "abs" }, shortLocalTime(iso)),
    " ",
    h("time", { datetime: iso, title: localTime(iso), class: "rel muted" }, relative(iso)),
  );
}

/** Update every relative time and running duration on the page (called on a timer). */
export function refreshTimes(root = document) {
  const now = Date.now();
  for (const element of root.querySelectorAll("time.rel")) {
    element.textContent = relative(element.getAttribute("datetime"), now);
  }
  for (const element of root.querySelectorAll(".elapsed[data-since]")) {
    element.textContent = duration(now - new Date(element.dataset.since).getTime());
  }
}

/** "340 ms", "4.2 s", "3 min 4 s", "2 h 5 min", "3 d 4 h". */
function duration(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "—";
  if (ms < 1000) return `${Math.max(0, Math.round(ms))} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s < 10 ? s.toFixed(1) : Math.round(s)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${Math.floor(s % 60)} s`;
  const hours = Math.floor(m / 60);
  if (hours < 24) return `${hours} h ${m % 60} min`;
  return `${Math.floor(hours / 24)} d ${hours % 24} h`;
}

/** The time from `start` to `end` (or to now, while it goes on), formatted; "—" before it starts. */
export function between(start, end) {
  if (!start) return "—";
  const stop = end ? new Date(end).getTime() : Date.now();
  return duration(stop - new Date(start).getTime());
}

/** The time from `start` to `end`; while there is no end, a span that refreshTimes keeps counting. */
export function elapsed(start, end) {
  return h("span", { class: "elapsed", "data-since": start && !end ? start : null }, between(start, end));
}

const FOLD_TEXT = 200;
const FOLD_ITEMS = 30;

/** A value pretty-printed as JSON, long strings and long arrays or objects folded behind a button. */
export function json(value) {
  return h("pre", { class: "json" }, jsonNode(value, 0));
}

function jsonNode(value, depth) {
  const pad = "  ".repeat(depth);
  if (value === null || typeof value !== "object") return scalar(value);
  const isArray = Array.isArray(value);
  const entries = isArray ? value.map((item, i) => [i, item]) : Object.entries(value);
  const [open, close] = isArray ? ["[", "]"] : ["{", "}"];
  if (entries.length === 0) return h("span", { class: "j-punct" }, open + close);
  const body = h("span");
  const line = ([key, item], last) => {
    const row = [`\n${pad}  `];
    if (!isArray) row.push(h("span", { class: "j-key" }, JSON.stringify(key)), ": ");
    row.push(jsonNode(item, depth + 1));
    if (!last) row.push(",");
    return row;
  };
  const shown = entries.length > FOLD_ITEMS ? entries.slice(0, FOLD_ITEMS) : entries;
  append(body, shown.map((entry, i) => line(entry, i === entries.length - 1)));
  if (shown.length < entries.length) {
    const rest = entries.slice(FOLD_ITEMS);
    const more = h(
      "button",
      {
        type: "button",
        class: "fold",
        onclick: () => more.replaceWith(h("span", {}, rest.map((entry, i) => line(entry, FOLD_ITEMS + i === entries.length - 1)))),
      },
      `… ${rest.length} more ${isArray ? "items" : "keys"}`,
    );
    append(body, [`\n${pad}  `, more]);
  }
  return h("span", {}, h("span", { class: "j-punct" }, open), body, `\n${pad}`, h("span", { class: "j-punct" }, close));
}

function scalar(value) {
  const kind = value === null ? "null" : typeof value;
  const text = JSON.stringify(value);
  if (kind !== "string" || text.length <= FOLD_TEXT) return h("span", { class: `j-${kind}` }, text);
  const head = text.slice(0, FOLD_TEXT - 40);
  const shown = h("span", { class: "j-string" }, head);
  const more = h(
    "button",
    {
      type: "button",
      class: "fold",
      onclick: () => {
        shown.textContent = text;
        more.remove();
      },
    },
    `… ${(text.length - head.length).toLocaleString()} more characters`,
  );
  return h("span", {}, shown, more);
}
