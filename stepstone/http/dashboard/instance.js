// One instance: its status and times, params, output or error, the timeline of its
// steps (every attempt of each `do`, sleeps and waits with their due times, results on
// demand), and the actions: pause, resume, terminate, restart, send an event. Live from
// the instance's change stream; the forms keep what was typed across updates.

import * as api from "./api.js";
import { at, badge, between, elapsed, fill, h, json, when } from "./format.js";

const ACTIONS = {
  pause: { label: "Pause", from: ["queued", "running", "waiting", "unknown"], done: "Paused" },
  resume: { label: "Resume", from: ["paused", "waitingForPause"], done: "Resumed" },
  terminate: {
    label: "Terminate",
    from: ["queued", "running", "waiting", "paused", "waitingForPause", "unknown"],
    done: "Terminated",
    confirm: "Terminate this instance? It ends for good.",
  },
  restart: {
    label: "Restart",
    from: null,
    done: "Restarted",
    confirm: "Restart this instance from the start? Its step history is discarded.",
  },
};
const LATEST_STEPS = 200;
const KIND_LABELS = { do: "step", sleep: "sleep", wait_for_event: "wait for event" };

export function instanceView({ main, notify, setLive, setCrumbs }, workflow, id) {
  const base = `#/workflows/${encodeURIComponent(workflow)}`;
  const apiPath = api.path("workflows", workflow, "instances", id);
  setCrumbs(["Workflows", "#/"], [workflow, base], [id, null]);
  let stopped = false;
  let current = null;
  const openResults = new Set();

  const statusSlot = h("span", { class: "status-slot" });
  const meta = h("dl", { class: "meta" });
  const buttons = Object.entries(ACTIONS).map(([action, spec]) =>
    h("button", { type: "button", "data-action": action, class: action === "terminate" ? "danger" : null, onclick: () => act(action) }, spec.label),
  );
  const eventType = h("input", { id: "event-type", name: "type", required: true, placeholder: "approval", autocomplete: "off", pattern: "[A-Za-z0-9_][A-Za-z0-9_\\-]*", maxlength: 100 });
  const eventPayload = h("textarea", { id: "event-payload", name: "payload", rows: 3, spellcheck: "false", placeholder: "null" });
  const eventForm = h(
    "form",
    { class: "event-form", onsubmit: (event) => { event.preventDefault(); sendEvent(); } },
    h("label", { for: "event-type" }, "Event type"),
    eventType,
    h("label", { for: "event-payload" }, "Payload ", h("span", { class: "muted" }, "(JSON; empty: null)")),
    eventPayload,
    h("div", { class: "row" }, h("button", { type: "submit", class: "primary" }, "Send event")),
  );
  const body = h("div", { class: "instance-body" });
  const timeline = h("ol", { class: "timeline" });

  fill(
    main,
    h("div", { class: "title-row together" }, h("h1", { class: "mono" }, id), statusSlot),
    meta,
    h("section", { class: "panel actions" }, h("h2", {}, "Actions"), h("div", { class: "buttons" }, buttons), h("details", { class: "send-event" }, h("summary", {}, "Send an event"), eventForm)),
    body,
    h("section", {}, h("h2", {}, "Timeline"), timeline),
  );

  async function act(action, fromStep) {
    const spec = ACTIONS[action];
    const question = fromStep
      ? `Restart this instance from step "${fromStep.name}"? What was recorded from that step on is discarded.`
      : spec.confirm;
    if (question && !window.confirm(question)) return;
    const body = fromStep ? { status: action, from: fromStep } : { status: action };
    // One action at a time: a second click while the first is on its way would only be refused.
    for (const button of buttons) button.disabled = true;
    try {
      const { result } = await api.call("PATCH", `${apiPath}/status`, body);
      const from = fromStep ? ` from step "${fromStep.name}"` : "";
      notify("ok", `${spec.done} ${id}${from}: it is now ${result.status}.`);
      if (!stopped && current) {
        render({ ...current, ...result, steps: action === "restart" && !fromStep ? [] : current.steps });
      }
    } catch (error) {
      notify("error", `Could not ${action} ${id}: ${error.message}`);
      if (current) enableActions(current.status);
    }
  }

  function enableActions(status) {
    for (const button of buttons) {
      const { from } = ACTIONS[button.dataset.action];
      button.disabled = from !== null && !from.includes(status);
      button.title = button.disabled ? `not possible while ${status}` : "";
    }
  }

  async function sendEvent() {
    const type = eventType.value.trim();
    const text = eventPayload.value.trim() || "null";
    try {
      JSON.parse(text);
    } catch (error) {
      notify("error", `The payload is not valid JSON: ${error.message}`);
      eventPayload.focus();
      return;
    }
    try {
      await api.call("POST", `${apiPath}/events/${encodeURIComponent(type)}`, text);
      notify("ok", `Sent event "${type}" to ${id}.`);
    } catch (error) {
      notify("error", `Could not send the event: ${error.message}`);
    }
  }

  function render(instance) {
    current = instance;
    fill(statusSlot, badge(instance.status));
    const rows = [
      ["Workflow", h("a", { href: base }, workflow)],
      ["Created", at(instance.created)],
      ["Started", at(instance.started)],
      [instance.ended ? "Ended" : "Last update", at(instance.ended ?? instance.updated)],
      ["Duration", elapsed(instance.started, instance.ended)],
    ];
    if (instance.wake && !instance.ended) rows.push(["Next run", at(instance.wake)]);
    fill(meta, rows.map(([term, value]) => h("div", {}, h("dt", {}, term), h("dd", {}, value))));
    enableActions(instance.status);
    const sections = [h("section", { class: "panel", "data-section": "params" }, h("h2", {}, "Params"), json(instance.params))];
    if (instance.error) {
      sections.push(
        h(
          "section",
          { class: "panel error-panel", "data-section": "error" },
          h("h2", {}, "Error"),
          h("p", { class: "error-text" }, h("strong", { class: "mono" }, instance.error.name), ": ", instance.error.message),
          instance.error.step ? h("p", { class: "muted" }, "in step ", h("span", { class: "mono" }, instance.error.step)) : null,
        ),
      );
    }
    if (instance.status === "complete") {
      sections.push(h("section", { class: "panel", "data-section": "output" }, h("h2", {}, "Output"), json(instance.output)));
    }
    fill(body, sections);
    renderTimeline(instance.steps ?? []);
  }

  // An instance may have thousands of steps: show the latest ones unless asked for all.
  let showAll = false;

  function renderTimeline(steps) {
    if (!steps.length) {
      fill(timeline, h("li", { class: "empty" }, "No steps recorded yet."));
      return;
    }
    const hidden = showAll ? 0 : Math.max(0, steps.length - LATEST_STEPS);
    const earlier = h(
      "li",
      { class: "earlier" },
      h(
        "button",
        {
          type: "button",
          onclick: () => {
            showAll = true;
            renderTimeline(current.steps);
          },
        },
        `Show the ${hidden.toLocaleString()} earlier steps`,
      ),
    );
    fill(timeline, hidden ? earlier : null, steps.slice(hidden).map(stepItem));
  }

  function stepItem(step) {
    const key = `${step.kind}:${step.name}:${step.count}`;
    const name = step.count > 1 ? `${step.name} #${step.count}` : step.name;
    const details = [];
    if (step.kind === "sleep") {
      details.push(h("p", {}, step.status === "waiting" ? "Wakes at " : "Slept until ", at(step.due ?? step.ended)));
    } else if (step.kind === "wait_for_event") {
      if (step.status === "waiting") details.push(h("p", {}, "Waiting; times out at ", at(step.due)));
      else if (step.status === "complete") details.push(h("p", {}, "Event received at ", at(step.ended)));
    } else if (step.status === "waiting" && step.due) {
      details.push(h("p", { class: "retry" }, `Attempt ${step.attempts.length + 1} at `, at(step.due)));
    }
    if (step.error) {
      details.push(h("p", { class: "error-text" }, h("strong", { class: "mono" }, step.error.name), ": ", step.error.message));
    }
    // One attempt that succeeded says nothing the step's own line does not; show the table otherwise.
    const eventful = step.attempts.length > 1 || step.attempts.some((attempt) => attempt.outcome !== "ok");
    if (step.kind === "do" && eventful) details.push(attemptsTable(step.attempts));
    if (step.status === "complete" && step.kind !== "sleep") {
      const holder = h("div", { class: "result" });
      const toggle = h("button", { type: "button", class: "small", "aria-expanded": "false" });
      const show = (open) => {
        toggle.textContent = open ? "Hide result" : "Show result";
        toggle.setAttribute("aria-expanded", String(open));
        fill(holder, open ? json(step.result) : null);
        if (open) openResults.add(key);
        else openResults.delete(key);
      };
      toggle.addEventListener("click", () => show(!openResults.has(key)));
      show(openResults.has(key));
      details.push(h("div", { class: "step-actions" }, toggle), holder);
    }
    const restart = h(
      "button",
      {
        type: "button",
        class: "quiet small restart-here",
        title: "Keep what was recorded before this step and run again from it",
        onclick: () => act("restart", { name: step.name, count: step.count, type: step.kind }),
      },
      "Restart from here",
    );
    return h(
      "li",
      { class: `step step-${step.status} kind-${step.kind}`, "data-step": name, "data-kind": step.kind },
      h(
        "div",
        { class: "step-head" },
        h("span", { class: "kind" }, KIND_LABELS[step.kind] ?? step.kind),
        h("span", { class: "step-name mono" }, name),
        h("span", { class: `step-status step-status-${step.status}` }, step.status),
        h("span", { class: "step-time muted" }, when(step.started), " · ", elapsed(step.started, step.ended)),
        restart,
      ),
      details,
    );
  }

  const stop = api.follow(
    `${apiPath}/stream`,
    {
      instance: (instance) => !stopped && render(instance),
      deleted: () => {
        if (stopped) return;
        notify("error", `Instance ${id} was deleted.`);
        for (const button of buttons) button.disabled = true;
      },
      failed: (error) => {
        if (stopped) return;
        fill(main, h("h1", { class: "mono" }, id), h("p", { class: "notice notice-error", role: "alert" }, error.message), h("p", {}, h("a", { href: base }, `Back to ${workflow}`)));
      },
    },
    setLive,
  );
  return () => {
    stopped = true;
    stop();
  };
}

function attemptsTable(attempts) {
  return h(
    "table",
    { class: "attempts" },
    h("thead", {}, h("tr", {}, h("th", {}, "#"), h("th", {}, "Started"), h("th", {}, "Duration"), h("th", {}, "Outcome"), h("th", {}, "Error"))),
    h(
      "tbody",
      {},
      attempts.map((attempt) =>
        h(
          "tr",
          { "data-outcome": attempt.outcome },
          h("td", { class: "num" }, attempt.attempt),
          h("td", {}, when(attempt.started)),
          h("td", { class: "num" }, between(attempt.started, attempt.ended)),
          h("td", {}, h("span", { class: `outcome outcome-${attempt.outcome}` }, attempt.outcome)),
          h("td", { class: "error-cell" }, attempt.error ? [h("strong", { class: "mono" }, attempt.error.name), ": ", attempt.error.message] : "—"),
        ),
      ),
    ),
  );
}
