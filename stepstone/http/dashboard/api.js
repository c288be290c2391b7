// Calls to the HTTP API: the bearer token on every request, answers unwrapped from the
// envelope, and live streams read with fetch() (a browser EventSource cannot send the
// Authorization header). URLs are relative to the page, so the dashboard works wherever
// the app is mounted.

const TOKEN_KEY = "stepstone.token";

/** A failed call: the HTTP status, the API's stable error code, and its message. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  sessionStorage.setItem(TOKEN_KEY, value);
}

export function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

let askForToken = async () => {
  throw new ApiError(401, "unauthorized", "this server needs an API token");
};

/** Register what asks the user for a token: an async function that resolves once a new one is stored. */
export function onUnauthorized(ask) {
  askForToken = ask;
}

/** The API path for these parts, each encoded: path("workflows", name, "instances"). */
export function path(...parts) {
  return parts.map((part) => encodeURIComponent(part)).join("/");
}

function headers(accept) {
  const out = { Accept: accept };
  const current = token();
  if (current) out.Authorization = `Bearer ${current}`;
  return out;
}

async function failure(response) {
  try {
    const envelope = await response.json();
    const [error] = envelope.errors ?? [];
    if (error) return new ApiError(response.status, error.code, error.message);
  } catch {
    // not our envelope: a proxy's page, say
  }
  return new ApiError(response.status, "http_error", `the server answered ${response.status} ${response.statusText}`);
}

async function refused(response, sent) {
  const error = await failure(response);
  await askForToken(sent ? "The server refused that token." : error.message);
}

/**
 * One API call; resolves to {result, info} (info: the list's result_info).
 * `body` is sent as is when it is a string (already JSON text), else as JSON.
 * On 401 the user is asked for a token, and the call is made again with it.
 */
export async function call(method, url, body) {
  for (;;) {
    const sent = token();
    const init = { method, headers: headers("application/json"), cache: "no-store" };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = typeof body === "string" ? body : JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(url, init);
    } catch (error) {
      throw new ApiError(0, "network", `cannot reach the server (${error.message})`);
    }
    if (response.status === 401) {
      await refused(response, sent);
      continue;
    }
    if (!response.ok) throw await failure(response);
    const envelope = await response.json();
    return { result: envelope.result, info: envelope.result_info };
  }
}

/**
 * `fn` paced: a call runs it after `delay` ms, and at most once every `gap` ms; calls
 * made meanwhile fold into the one pending. `.cancel()` drops the pending one.
 */
export function paced(fn, { delay = 300, gap = 2000 } = {}) {
  let timer = null;
  let last = -Infinity;
  const run = () => {
    timer = null;
    last = Date.now();
    fn();
  };
  const call = () => {
    if (timer === null) timer = setTimeout(run, Math.max(delay, last + gap - Date.now()));
  };
  call.cancel = () => {
    clearTimeout(timer);
    timer = null;
  };
  return call;
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

/** Split SSE text into messages; returns [messages, the unfinished rest]. */
function parseEvents(text) {
  const messages = [];
  const blocks = text.split(/\r?\n\r?\n/);
  const rest = blocks.pop();
  for (const block of blocks) {
    let event = "message";
    const data = [];
    for (const line of block.split(/\r?\n/)) {
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (field === "event") event = value;
      else if (field === "data") data.push(value);
    }
    if (data.length) messages.push({ event, data: JSON.parse(data.join("\n")) });
  }
  return [messages, rest];
}

const FIRST_RETRY_MS = 1000;
const LAST_RETRY_MS = 15000;

/** Resolves once the page is visible (at once if it is), or when `signal` aborts. */
function visible(signal) {
  return new Promise((resolve) => {
    if (!document.hidden || signal.aborted) return resolve();
    const done = () => {
      if (document.hidden && !signal.aborted) return;
      document.removeEventListener("visibilitychange", done);
      resolve();
    };
    document.addEventListener("visibilitychange", done);
    signal.addEventListener("abort", done, { once: true });
  });
}

/**
 * Follow a live stream: `on[event](data)` for each message. When the stream ends or
 * breaks, it is opened again after a wait that doubles up to 15 s. `state(s)` is told
 * "live", "reconnecting", "stopped" or "idle". A 4xx other than 401 ends it
 * (`on.failed(error)`). Returns a function that stops it.
 *
 * A hidden tab lets go of its stream and opens it again when shown: a browser opens at
 * most six connections to one server over HTTP/1.1, and each open stream holds one. The
 * first message of every stream is the whole current state, so nothing is missed.
 */
export function follow(url, on, report = () => {}) {
  const stopper = new AbortController();
  const stopped = stopper.signal;
  const state = (value) => stopped.aborted || report(value); // a stopped stream no longer speaks
  let connection = null;
  const letGo = () => {
    if (document.hidden && connection) connection.abort();
  };
  document.addEventListener("visibilitychange", letGo);
  (async () => {
    let wait = FIRST_RETRY_MS;
    while (!stopped.aborted) {
      if (document.hidden) {
        state("idle");
        await visible(stopped);
        continue;
      }
      connection = new AbortController();
      const { signal } = connection;
      try {
        const sent = token();
        const response = await fetch(url, { headers: headers("text/event-stream"), cache: "no-store", signal });
        if (response.status === 401) {
          await refused(response, sent);
          continue;
        }
        if (response.status >= 400 && response.status < 500) {
          state("stopped");
          on.failed?.(await failure(response));
          return;
        }
        if (!response.ok) throw await failure(response);
        state("live");
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          const [messages, rest] = parseEvents(buffer + value);
          buffer = rest;
          for (const { event, data } of messages) {
            wait = FIRST_RETRY_MS;
            on[event]?.(data);
            if (event === "deleted") {
              state("stopped");
              return;
            }
          }
        }
      } catch (error) {
        if (stopped.aborted) return;
        if (signal.aborted) continue; // let go while hidden
        // A network error or a server error: try again. Anything else is a bug worth seeing.
        if (!(error instanceof TypeError || error instanceof ApiError)) console.error(error);
      }
      state("reconnecting");
      await sleep(wait, stopped);
      wait = Math.min(wait * 2, LAST_RETRY_MS);
    }
  })();
  return () => {
    stopper.abort();
    connection?.abort();
    document.removeEventListener("visibilitychange", letGo);
    report("idle");
  };
}
