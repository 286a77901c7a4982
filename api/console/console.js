// Hodei's web console: reads and acts through the same /v1 API as everyone else.
// With API tokens configured, open /ui?token=<token> once: the token moves to this tab's
// sessionStorage and out of the address bar (and out of the history and any Referer).
"use strict";

const TOKEN_KEY = "hodei-token";
const PAGE = 25;
const REFRESH_MS = 3000;
const FINAL = new Set(["succeeded", "failed", "timed_out", "cancelled"]);

(function takeTokenFromAddress() {
  const params = new URLSearchParams(location.search);
  if (!params.has("token")) return;
  sessionStorage.setItem(TOKEN_KEY, params.get("token"));
  params.delete("token");
  const query = params.toString();
  history.replaceState(null, "", location.pathname + (query ? `?${query}` : "") + location.hash);
})();

function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

class ApiError extends Error {
  constructor(status, code, message) {
    super(`${code}: ${message} (HTTP ${status})`);
    this.status = status;
    this.code = code;
  }
}

async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: { ...authHeaders(), ...(options.headers || {}) },
  });
  if (!response.ok) {
    let code = "http_error";
    let message = response.statusText;
    try {
      const body = await response.json();
      code = body.error.code;
      message = body.error.message;
    } catch (_) { /* not the contract's error body */ }
    if (response.status === 401) showLogin();
    throw new ApiError(response.status, code, message);
  }
  const type = response.headers.get("Content-Type") || "";
  return type.includes("json") ? response.json() : response.text();
}

// What this token may do: the console offers only the actions it may take.
const can = { invoke: false, admin: false };

async function probeScopes() {
  const who = document.getElementById("who");
  try {
    const me = await api("/v1/whoami");
    can.admin = me.scopes.includes("admin");
    can.invoke = can.admin || me.scopes.includes("invoke");
    who.textContent = can.admin ? "admin" : can.invoke ? "can invoke and cancel" : "read-only";
    who.textContent += me.auth ? " token" : " (no tokens on this gateway)";
  } catch (exc) {
    can.admin = can.invoke = false;
    who.textContent = "";
  }
}

function showLogin() {
  document.getElementById("login").hidden = false;
}

document.getElementById("login").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, document.getElementById("login-token").value.trim());
  document.getElementById("login").hidden = true;
  probeScopes().then(route);
});

// -- small DOM helpers (textContent only: nothing from the API is parsed as HTML) ------
function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function link(text, href) {
  const a = el("a", text);
  a.href = href;
  return a;
}

function cell(content, cls) {
  const td = el("td", null, cls);
  if (content instanceof Node) td.appendChild(content);
  else td.textContent = content === undefined || content === null ? "" : String(content);
  return td;
}

function slot(root, name) {
  return root.querySelector(`[data-slot="${name}"]`);
}

function fill(body, items, render) {
  body.replaceChildren(...items.map((item) => {
    const tr = document.createElement("tr");
    tr.append(...render(item));
    return tr;
  }));
}

function showError(exc) {
  document.getElementById("error").textContent = exc ? String(exc.message || exc) : "";
}

function fmtTime(seconds) {
  return seconds ? new Date(seconds * 1000).toLocaleString() : "";
}

function fmtDuration(ms) {
  if (ms === null || ms === undefined) return "";
  return ms < 10000 ? `${ms} ms` : `${(ms / 1000).toFixed(1)} s`;
}

function meter(used, total, unit, ratio) {
  const wrap = el("div", null, "meter");
  const outer = el("div", null, "bar" + (ratio > 0.85 ? " over" : ratio >= 0.6 ? " band" : ""));
  outer.title = "target band 60-85 %";
  const inner = el("span");
  inner.style.width = `${Math.min(100, ratio * 100)}%`;
  outer.appendChild(inner);
  wrap.append(outer, el("small", `${used}/${total}${unit} · ${Math.round(ratio * 100)} %`));
  return wrap;
}

function statusCell(inv) {
  const td = cell(inv.status, `status-${inv.status}`);
  if (inv.parked) td.appendChild(el("span", "parked", "parked"));
  return td;
}

function waitingText(inv) {
  const reason = inv.pending_reason || "";
  if (inv.parked) return reason ? `parked: ${reason}` : "parked";
  return reason;
}

function invocationCells(inv) {
  return [
    cell(link(inv.id, `#/invocations/${encodeURIComponent(inv.id)}`)),
    cell(link(inv.function, `#/invocations?function=${encodeURIComponent(inv.function)}`)),
    statusCell(inv),
    cell(inv.attempt),
    cell(inv.worker_id ? link(inv.worker_id, `#/workers/${encodeURIComponent(inv.worker_id)}`) : ""),
    cell(fmtDuration(inv.duration_ms)),
    cell(fmtTime(inv.created_at)),
    cell(inv.error || (inv.status === "queued" ? waitingText(inv) : "")),
  ];
}

function template(id) {
  return document.getElementById(id).content.cloneNode(true);
}

// -- the invocation list: filters, paging, refresh of the first page -------------------
function invocationList(root, filter) {
  root.appendChild(template("tpl-invocations"));
  const form = slot(root, "filters");
  const body = slot(root, "invocations");
  const more = slot(root, "more");
  form.elements.function.value = filter.function || "";
  form.elements.status.value = filter.status || "";
  const size = Math.max(1, Number(filter.limit) || PAGE);
  let shown = [];
  let cursor = null;
  let cursorsSupported = false;
  let full = false;

  async function load(next) {
    const query = new URLSearchParams({ limit: String(size) });
    if (filter.function) query.set("function", filter.function);
    if (filter.status) query.set("status", filter.status);
    if (next && cursor) query.set("cursor", cursor);
    else if (next) query.set("limit", String(shown.length + size)); // a gateway without cursors
    const page = await api(`/v1/invocations?${query}`);
    cursorsSupported = cursorsSupported || "next_cursor" in page;
    cursor = page.next_cursor || null;
    shown = next && query.has("cursor") ? shown.concat(page.invocations) : page.invocations;
    full = page.invocations.length >= Number(query.get("limit"));
    fill(body, shown, invocationCells);
    more.hidden = cursorsSupported ? !cursor : !full;
    slot(root, "count").textContent = `${shown.length} shown`;
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const query = new URLSearchParams();
    for (const key of ["function", "status"]) {
      const value = form.elements[key].value.trim();
      if (value) query.set(key, value);
    }
    location.hash = `#/invocations${query.toString() ? `?${query}` : ""}`;
  });
  more.addEventListener("click", () => load(true).catch(showError));
  api("/v1/functions").then((found) => {
    document.getElementById("function-names").replaceChildren(
      ...found.functions.map((f) => { const o = el("option"); o.value = f.name; return o; }),
    );
  }).catch(() => {});
  return {
    refresh: () => (shown.length > size ? Promise.resolve() : load(false)),
  };
}

// -- views ------------------------------------------------------------------------------
function every(ms, work) {
  let timer = null;
  let stopped = false;
  const tick = async () => {
    try {
      await work();
      showError(null);
      document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    } catch (exc) {
      showError(exc);
    }
    if (!stopped) timer = setTimeout(tick, ms);
  };
  tick();
  return () => { stopped = true; clearTimeout(timer); };
}

function overview(view, params) {
  view.appendChild(template("tpl-overview"));
  const list = invocationList(slot(view, "invocations-section"), params);
  const stop = every(REFRESH_MS, async () => {
    const [fleet, queue] = await Promise.all([
      api("/v1/workers").catch((exc) => ({ error: exc })),
      api("/v1/queue"),
      list.refresh(),
    ]);
    const note = slot(view, "workers-note");
    if (fleet.error) {
      note.textContent = fleet.error.status === 403
        ? "this token may not list the workers on this gateway"
        : String(fleet.error.message);
    } else {
      note.textContent = fleet.workers.length ? "" : "no workers connected";
      fill(slot(view, "workers"), fleet.workers, (w) => [
        cell(link(w.id, `#/workers/${encodeURIComponent(w.id)}`)),
        cell(w.state, `state-${w.state}`),
        cell(meter(w.allocated.cpu_millicores, w.capacity.cpu_millicores, "m", w.utilisation.cpu_millicores)),
        cell(meter(w.allocated.memory_mb, w.capacity.memory_mb, " MB", w.utilisation.memory_mb)),
        cell(meter(w.allocated.job_slots, w.capacity.job_slots, "", w.utilisation.job_slots)),
        cell(`${Math.round(w.cpu_usage_percent)} %`),
        cell(w.runtimes.join(", ")),
        cell(Object.entries(w.labels).map(([k, v]) => `${k}=${v}`).join(" ")),
      ]);
    }
    const depth = Object.entries(queue.depth).map(([p, n]) => `${p} ${n}`).join(", ");
    slot(view, "queue").textContent =
      `waiting: ${depth}; retrying: ${queue.retrying}; oldest ${queue.oldest_age_s.toFixed(1)} s`;
    fill(slot(view, "pending"), queue.pending, (p) => [
      cell(link(p.id, `#/invocations/${encodeURIComponent(p.id)}`)),
      cell(p.function), cell(p.priority),
      cell(waitingText(p), p.parked ? "parked" : ""),
    ]);
  });
  return stop;
}

function invocationsView(view, params) {
  const list = invocationList(view, params);
  return every(REFRESH_MS, () => list.refresh());
}

function functionsView(view) {
  view.appendChild(template("tpl-functions"));
  return every(REFRESH_MS * 2, async () => {
    const found = (await api("/v1/functions")).functions;
    const recent = await Promise.all(found.map((f) =>
      api(`/v1/invocations?function=${encodeURIComponent(f.name)}&limit=8`)
        .then((page) => page.invocations).catch(() => [])));
    fill(slot(view, "functions"), found.map((f, i) => [f, recent[i]]), ([f, invs]) => {
      const chips = el("span", null, "chips");
      chips.append(...invs.map((inv) => {
        const a = link(inv.status, `#/invocations/${encodeURIComponent(inv.id)}`);
        a.className = `status-${inv.status}`;
        a.title = `${inv.id} ${fmtTime(inv.created_at)}`;
        return a;
      }));
      if (!invs.length) chips.textContent = "none yet";
      const r = f.resources || {};
      return [
        cell(link(f.name, `#/invocations?function=${encodeURIComponent(f.name)}`)),
        cell(f.runtime),
        cell(f.image || (f.command || []).join(" ")),
        cell(`${r.cpu_millicores}m, ${r.memory_mb} MB${r.gpus ? `, ${r.gpus} GPU` : ""}`),
        cell(`${f.timeout_s} s`),
        cell(chips),
      ];
    });
  });
}

function recordRows(body, rows) {
  fill(body, rows.filter(([, value]) => value !== "" && value !== null && value !== undefined),
    ([name, value, cls]) => [el("th", name), cell(value, cls)]);
}

function invocationView(view, params, id) {
  view.appendChild(template("tpl-invocation"));
  slot(view, "id").textContent = id;
  const logs = slot(view, "logs");
  const logState = slot(view, "log-state");
  const outcome = slot(view, "action-result");
  const abort = new AbortController();
  let record = null;
  let stopped = false;

  async function showRecord() {
    record = await api(`/v1/invocations/${encodeURIComponent(id)}`);
    const status = el("span", record.status, `status-${record.status}`);
    if (record.parked) status.appendChild(el("span", "parked", "parked"));
    recordRows(slot(view, "record"), [
      ["function", link(record.function, `#/invocations?function=${encodeURIComponent(record.function)}`)],
      ["status", status],
      ["waiting because", record.status === "queued" ? waitingText(record) : ""],
      ["attempt", record.attempt],
      ["priority", record.priority],
      ["worker", record.worker_id ? link(record.worker_id, `#/workers/${encodeURIComponent(record.worker_id)}`) : ""],
      ["exit code", record.exit_code],
      ["error", record.error, "status-failed"],
      ["created", fmtTime(record.created_at)],
      ["started", fmtTime(record.started_at)],
      ["finished", fmtTime(record.finished_at)],
      ["duration", fmtDuration(record.duration_ms)],
      ["cold start", record.cold_start === undefined || record.cold_start === null ? "" :
        (record.cold_start ? `yes (init ${fmtDuration(record.init_ms)})` : "no")],
      ["trace id", record.trace_id],
    ]);
    const final = FINAL.has(record.status);
    slot(view, "cancel").hidden = !can.invoke || final;
    slot(view, "replay").hidden = !can.invoke || record.status !== "failed";
    if (final) {
      const result = await api(`/v1/invocations/${encodeURIComponent(id)}/result`);
      slot(view, "result").textContent = result === "" ? "(no output)" : result;
    } else {
      slot(view, "result").textContent = "(not finished)";
    }
    return final;
  }

  // EventSource cannot send an Authorization header: read the event stream with fetch.
  async function followLogs() {
    logState.textContent = "following…";
    const response = await fetch(`/v1/invocations/${encodeURIComponent(id)}/logs?follow=true`,
      { headers: authHeaders(), signal: abort.signal });
    if (!response.ok) throw new ApiError(response.status, "logs", response.statusText);
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let event = "message";
        let data = "";
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) event = line.slice(6).trim();
          else if (line.startsWith("data:")) data += line.slice(5).trim();
        }
        if (event === "log") {
          logs.textContent += `${JSON.parse(data).line}\n`;
          logs.scrollTop = logs.scrollHeight;
        } else if (event === "end") {
          logState.textContent = `ended: ${JSON.parse(data).status}`;
          await showRecord();
          return;
        }
      }
    }
    logState.textContent = "stream closed";
  }

  async function act(button, method, path, done) {
    button.disabled = true;
    try {
      const answer = await api(path, { method });
      outcome.textContent = done(answer);
      await showRecord();
    } catch (exc) {
      outcome.textContent = String(exc.message);
    } finally {
      button.disabled = false;
    }
  }

  slot(view, "cancel").addEventListener("click", (event) => act(event.target, "DELETE",
    `/v1/invocations/${encodeURIComponent(id)}`, (a) => `cancel: ${a.status}`));
  slot(view, "replay").addEventListener("click", (event) => act(event.target, "POST",
    `/v1/invocations/${encodeURIComponent(id)}/replay`, (a) => {
      location.hash = `#/invocations/${encodeURIComponent(a.id)}`;
      return `replayed as ${a.id}`;
    }));

  showRecord().then(() => followLogs()).catch((exc) => {
    if (!stopped) showError(exc);
  });
  // The record changes while the invocation waits or runs (attempt, worker, parked...).
  const stopRefresh = every(REFRESH_MS, async () => {
    if (record && !FINAL.has(record.status)) await showRecord();
  });
  return () => { stopped = true; abort.abort(); stopRefresh(); };
}

function workerView(view, params, id) {
  view.appendChild(template("tpl-worker"));
  slot(view, "id").textContent = id;
  const drain = slot(view, "drain");
  drain.addEventListener("click", async () => {
    drain.disabled = true;
    try {
      const worker = await api(`/v1/workers/${encodeURIComponent(id)}/drain`, { method: "POST" });
      slot(view, "action-result").textContent = `now ${worker.state}`;
    } catch (exc) {
      slot(view, "action-result").textContent = String(exc.message);
    } finally {
      drain.disabled = false;
    }
  });
  return every(REFRESH_MS, async () => {
    const w = await api(`/v1/workers/${encodeURIComponent(id)}`);
    drain.hidden = !can.admin || ["draining", "terminated", "failed"].includes(w.state);
    recordRows(slot(view, "record"), [
      ["state", w.state, `state-${w.state}`],
      ["host", w.hostname],
      ["version", w.version],
      ["server", w.server_id],
      ["CPU reserved", meter(w.allocated.cpu_millicores, w.capacity.cpu_millicores, "m", w.utilisation.cpu_millicores)],
      ["memory reserved", meter(w.allocated.memory_mb, w.capacity.memory_mb, " MB", w.utilisation.memory_mb)],
      ["slots", meter(w.allocated.job_slots, w.capacity.job_slots, "", w.utilisation.job_slots)],
      ["GPUs", `${w.allocated.gpus}/${w.capacity.gpus}`],
      ["node CPU", `${Math.round(w.cpu_usage_percent)} %`],
      ["node memory", `${Math.round(w.memory_usage_percent)} %`],
      ["runtimes", w.runtimes.join(", ")],
      ["labels", Object.entries(w.labels).map(([k, v]) => `${k}=${v}`).join(" ")],
      ["warm instances", (w.instances || []).map((p) =>
        `${p.function}: ${p.idle} idle, ${p.busy} busy, ${p.starting} starting`).join("; ")],
      ["last heartbeat", fmtTime(w.last_heartbeat)],
    ]);
    const jobs = await Promise.all((w.jobs || []).map((job) =>
      api(`/v1/invocations/${encodeURIComponent(job)}`).catch(() => null)));
    fill(slot(view, "jobs"), jobs.filter(Boolean), invocationCells);
  });
}

// -- routing: #/, #/functions, #/invocations?function=&status=&limit=, #/invocations/<id>,
// #/workers/<id>
const ROUTES = [
  [/^\/?$/, overview, "nav-overview"],
  [/^\/functions$/, functionsView, "nav-functions"],
  [/^\/invocations$/, invocationsView, "nav-invocations"],
  [/^\/invocations\/([^/]+)$/, invocationView, "nav-invocations"],
  [/^\/workers\/([^/]+)$/, workerView, "nav-overview"],
];
let stopCurrent = null;

function route() {
  if (stopCurrent) stopCurrent();
  showError(null);
  const [path, query] = location.hash.replace(/^#/, "").split("?");
  const params = Object.fromEntries(new URLSearchParams(query || ""));
  const view = document.getElementById("view");
  view.replaceChildren();
  for (const [pattern, render, nav] of ROUTES) {
    const match = pattern.exec(path);
    if (!match) continue;
    for (const a of document.querySelectorAll("nav a")) a.classList.toggle("current", a.id === nav);
    stopCurrent = render(view, params, ...match.slice(1).map(decodeURIComponent));
    return;
  }
  view.appendChild(el("p", "nothing here"));
  stopCurrent = null;
}

window.addEventListener("hashchange", route);
probeScopes().finally(route);
