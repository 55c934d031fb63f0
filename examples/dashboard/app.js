// The dashboard page (served at /dashboard/app.js, loaded by the page at /),
// built on @jobgate/client (its bundle, /dashboard/jobgate-client.js):
//
// - the caller's jobs from GET /v1/jobs (newest first, "Load more" for the
//   next page), each with a live progress bar, its trace id, its events and
//   a Cancel button;
// - a submit form per kind, drawn from the kind's params_schema (form.js);
// - a connection indicator fed by client.onStateChange, counting reconnects.
//
// Live data comes only through the client: one WebSocket session watches
// every unfinished job the page shows (client.watch, which resumes after a
// reconnect with no event lost or repeated), and the owner feed
// (client.events) brings jobs started elsewhere, such as an admin's re-run.
// Nothing here repeats a request on a timer.
import { JobgateClient } from "./jobgate-client.js";
import { describeForm, fieldOfPointer, initialText, readParams } from "./form.js";
import { TERMINAL, addEvent, laterSnapshot, progressOf, summarize } from "./jobs.js";

const PAGE_SIZE = 20;
const KIND_KEY = "jobgate.dashboard.kind";
const $ = (id) => document.getElementById(id);
const token = new URLSearchParams(location.search).get("access_token");

// ---- small DOM helpers: text only, never HTML ----
export function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value !== undefined && value !== null && value !== false) node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}
function showNotice(text) { const notice = $("notice"); notice.textContent = text; notice.hidden = !text; }
const errorText = (err) => (err && err.code ? err.code + ": " : "") + (err && err.message ? err.message : String(err));
const shortId = (id) => id.slice(0, 8) + "…" + id.slice(-4);

// Without a token (a gateway with JOBGATE_AUTH=none) the client asks for none.
const client = new JobgateClient({ url: location.origin, ...(token ? { getToken: () => token } : {}) });

// An HTTP helper for admin.js (whose admin API the client does not cover).
async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = "Bearer " + token;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (_) {
    throw Object.assign(new Error("the gateway cannot be reached"), { code: "network" });
  }
  let data = null;
  try { data = await response.json(); } catch (_) { /* empty or not JSON */ }
  if (!response.ok) {
    throw Object.assign(new Error(data && typeof data.message === "string" ? data.message : response.statusText || "request failed"),
      { code: data && typeof data.code === "string" ? data.code : "http_" + response.status, status: response.status });
  }
  return data;
}

// ---- connection indicator ----
const connection = { state: client.state || "connecting", reason: "", reconnects: 0 };
function renderConnection() {
  const conn = $("conn");
  conn.dataset.state = connection.state;
  conn.dataset.reconnects = String(connection.reconnects);
  const label = { connecting: "connecting…", connected: "live", reconnecting: "reconnecting…", closed: "closed" }[connection.state]
    || connection.state;
  const count = connection.reconnects === 0 ? "" : " · " + connection.reconnects + (connection.reconnects === 1 ? " reconnect" : " reconnects");
  conn.textContent = label + count;
  conn.title = connection.reason ? "last change: " + connection.reason : "";
}
// Called on each change and on each attempt while reconnecting: one
// reconnect is counted per stretch of "reconnecting".
client.onStateChange((change) => {
  if (change.state === "reconnecting" && connection.state !== "reconnecting") connection.reconnects += 1;
  connection.state = change.state;
  connection.reason = change.reason ? String(change.reason) : "";
  if (change.state === "reconnecting" && typeof change.retryInMs === "number") {
    connection.reason += " (next try in " + Math.round(change.retryInMs) + " ms)";
  }
  renderConnection();
});
renderConnection();

// ---- jobs ----
const jobs = new Map(); // job_id -> {id, snapshot, events, watching, duplicates, order, row, eventsRow}

function ensureJob(id, order) {
  let job = jobs.get(id);
  if (!job) {
    job = { id, snapshot: null, events: [], watching: false, duplicates: 0, order: order ?? Date.now(), fallback: {} };
    jobs.set(id, job);
  }
  return job;
}

function onSnapshot(snapshot) {
  const job = ensureJob(snapshot.job_id, snapshot.created_at);
  job.snapshot = laterSnapshot(job.snapshot, snapshot);
  if (snapshot.created_at) job.order = snapshot.created_at;
  render(job);
  return job;
}

/// An event from a watch or from the owner feed (which may overlap a watch).
const activityListeners = new Set();
function onEvent(job, event) {
  if (!addEvent(job.events, event)) return;
  render(job);
  for (const listener of activityListeners) listener(job.id, event);
}

/// Follows one job through the client's WebSocket session from its first
/// event: its history, then live until its terminal event.
async function follow(job) {
  if (job.watching) return;
  job.watching = true;
  render(job);
  // What this watch delivered: the client promises each event once, so a
  // repeat is counted (data-duplicates on the row; the browser test reads it).
  const delivered = new Set();
  try {
    for await (const item of client.watch(job.id, { after: 0 })) {
      if (item.type === "snapshot") { onSnapshot({ ...item.snapshot, job_id: job.id }); continue; }
      const key = (item.epoch || 1) + ":" + item.seq;
      if (delivered.has(key)) job.duplicates += 1;
      delivered.add(key);
      onEvent(job, item);
    }
  } catch (err) {
    if (err && (err.code === "not_found" || err.code === "history_expired")) job.gone = err.code;
    else showNotice("Stopped following job " + job.id + " — " + errorText(err));
  } finally {
    job.watching = false;
    render(job);
  }
}

function state(job) { return summarize(job.snapshot, job.events, job.fallback); }

// ---- rendering ----
function describeResult(view) {
  if (view.status === "failed" || (view.error && view.status !== "completed")) {
    if (!view.error) return { text: "failed", error: true };
    const prefix = view.status === "failed" ? "" : view.status === "queued" ? "retrying after " : "previous attempt: ";
    return { text: prefix + view.error.code + ": " + view.error.message, error: view.status === "failed" };
  }
  const result = view.result;
  if (result === undefined) return { text: view.cancel_requested && !TERMINAL.has(view.status) ? "cancel requested" : "" };
  if (result && typeof result.price === "number") {
    const se = typeof result.std_error === "number" ? " ± " + result.std_error.toFixed(4) : "";
    return { text: result.price.toFixed(4) + se, nowrap: true };
  }
  const text = JSON.stringify(result);
  return { text: text.length > 80 ? text.slice(0, 79) + "…" : text };
}

function progressCell(view) {
  const progress = progressOf(view);
  if (!progress) return el("span", { class: "muted" }, view.status === "running" ? "running…" : "—");
  const pct = Math.round((100 * progress.done) / progress.total);
  const label = view.progress && view.progress.total > 0 ? progress.done + "/" + progress.total : "100%";
  const wrap = el("div", { class: "progress" },
    el("progress", { max: progress.total, value: progress.done, "aria-label": "progress " + pct + "%" }),
    el("span", { class: "muted" }, label));
  if (view.progress && view.progress.message) wrap.title = view.progress.message;
  return wrap;
}

function eventText(event) {
  const data = event.data || {};
  switch (event.event) {
    case "queued": return "queued on " + (data.queue || "?") + (data.priority !== undefined ? ", priority " + data.priority : "")
      + (typeof data.run_at === "number" ? ", due " + new Date(data.run_at).toLocaleTimeString() : "");
    case "started": return "started, attempt " + data.attempt + (data.worker ? " on " + data.worker : "");
    case "progress": return "progress " + data.done + "/" + data.total + (data.message ? " — " + data.message : "");
    case "retrying": return "retrying (attempt " + data.next_attempt + ")" + (data.error ? " after " + data.error.code : "");
    case "completed": return "completed";
    case "failed": return "failed" + (data.error ? ": " + data.error.code + " — " + data.error.message : "");
    case "cancelled": return "cancelled" + (data.reason ? " (" + data.reason + ")" : "");
    default: return event.event;
  }
}

function eventItem(event) {
  const time = typeof event.ts === "number" ? new Date(event.ts).toISOString().slice(11, 23) : "";
  return el("li", { "data-epoch": event.epoch || 1, "data-seq": event.seq, "data-event": event.event },
    el("span", { class: "seq" }, (event.epoch > 1 ? event.epoch + ":" : "") + event.seq),
    el("span", { class: "muted nowrap" }, time),
    el("span", {}, eventText(event)));
}

function insertRows(job) {
  job.row = el("tr", { class: "job", "data-job-id": job.id });
  job.list = el("ol", { class: "events", "data-events-for": job.id });
  job.summary = el("summary");
  job.details = el("details", {}, job.summary, job.list);
  job.details.addEventListener("toggle", () => {
    // A finished job's events are read when first shown.
    if (job.details.open && !job.watching && job.events.length === 0) follow(job);
  });
  job.eventsRow = el("tr", { class: "job-events", "data-events-row": job.id }, el("td", { colspan: 8 }, job.details));
  const body = $("jobs");
  const next = [...body.querySelectorAll("tr.job")].find((row) => jobs.get(row.dataset.jobId).order < job.order);
  body.insertBefore(job.row, next || null);
  body.insertBefore(job.eventsRow, next || null);
}

function render(job) {
  if (!job.row) insertRows(job);
  const view = state(job);
  const status = view.status || "loading";
  const result = describeResult(view);
  const cancellable = (status === "queued" || status === "running") && !view.cancel_requested;
  const cancel = el("button", { class: "small", type: "button", "aria-label": "cancel job " + job.id }, "Cancel");
  cancel.disabled = !cancellable;
  cancel.hidden = !view.status || TERMINAL.has(status);
  cancel.addEventListener("click", () => cancelJob(job, cancel));
  job.row.dataset.status = status;
  job.row.dataset.duplicates = String(job.duplicates);
  job.row.dataset.watching = String(job.watching);
  job.row.replaceChildren(
    el("td", { class: "nowrap" }, el("code", { title: job.id }, shortId(job.id))),
    el("td", {}, view.kind || "—"),
    el("td", {}, el("span", { class: "status", "data-status": status },
      view.cancel_requested && !TERMINAL.has(status) ? status + " (cancelling)" : status)),
    el("td", {}, progressCell(view)),
    el("td", {}, view.attempt ? String(view.attempt) : "—"),
    el("td", { class: result.error ? "error-text" : result.nowrap ? "nowrap" : null }, result.text || "—"),
    el("td", { class: "trace" }, view.trace_id ? el("code", { title: "trace id" }, view.trace_id) : "—"),
    el("td", {}, cancel));
  // The event list only grows (in order), so it is patched, not redrawn.
  const items = job.list.children;
  job.events.forEach((event, index) => {
    const item = items[index];
    if (item && Number(item.dataset.seq) === event.seq && Number(item.dataset.epoch) === (event.epoch || 1)) return;
    job.list.insertBefore(eventItem(event), item || null);
  });
  const total = job.snapshot && Number.isInteger(job.snapshot.seq) ? job.snapshot.seq : 0;
  job.summary.textContent = job.events.length > 0
    ? "Events (" + job.events.length + ")" + (job.watching ? " · live" : "")
    : total > 0 ? "Events (" + total + ", show)" : "Events";
  $("empty").hidden = jobs.size > 0;
}

async function cancelJob(job, button) {
  button.disabled = true;
  $("action-result").textContent = "";
  try {
    onSnapshot(await client.cancel(job.id));
  } catch (err) {
    $("action-result").textContent = "Could not cancel job " + job.id + " — " + errorText(err);
    render(job);
  }
}

// ---- the jobs list, a page at a time ----
let nextCursor = null;
async function loadJobs(cursor) {
  const more = $("load-more");
  more.disabled = true;
  try {
    const page = await client.jobs({ limit: PAGE_SIZE, cursor: cursor || undefined });
    for (const snapshot of page.jobs) {
      const job = onSnapshot(snapshot);
      if (!TERMINAL.has(snapshot.status)) follow(job);
    }
    nextCursor = page.next_cursor || null;
  } catch (err) {
    if (err.code === "unauthorized" || err.status === 401) $("token-form").hidden = false;
    showNotice("Could not list your jobs — " + errorText(err));
  } finally {
    more.hidden = !nextCursor;
    more.disabled = false;
    $("empty").hidden = jobs.size > 0;
  }
}
$("load-more").addEventListener("click", () => { if (nextCursor) loadJobs(nextCursor); });

// ---- the owner feed: jobs of the caller's started elsewhere ----
async function followOwnerFeed() {
  try {
    for await (const item of client.events()) {
      if (item.type !== "event" || typeof item.job_id !== "string") continue;
      const job = ensureJob(item.job_id);
      onEvent(job, item);
      if (!TERMINAL.has(item.event) && !job.watching) follow(job);
    }
  } catch (err) {
    showNotice("The live feed of your jobs stopped — " + errorText(err));
  }
}

// ---- the submit form ----
let kinds = [];
let form = { mode: "raw" };

function fieldInput(field, index) {
  const id = "param-" + index;
  const common = { id, name: field.name, "aria-describedby": field.description ? id + "-help" : null };
  let input;
  if (field.type === "boolean") {
    input = el("input", { ...common, type: "checkbox" });
    input.checked = field.default === true;
  } else if (field.type === "enum") {
    // An optional enum without a default may be left out: its empty choice.
    const optional = !field.required && field.default === undefined;
    input = el("select", common, optional ? el("option", { value: "" }, "—") : null,
      ...field.options.map((option, i) => el("option", { value: i }, typeof option === "string" ? option : JSON.stringify(option))));
    input.value = field.default !== undefined ? initialText(field) : optional ? "" : "0";
  } else if (field.type === "json") {
    input = el("textarea", { ...common, rows: 2, spellcheck: "false", placeholder: "JSON" });
    input.value = initialText(field);
  } else {
    const numeric = field.type === "number" || field.type === "integer";
    input = el("input", {
      ...common,
      type: numeric ? "number" : "text",
      step: field.type === "integer" ? (field.multipleOf || 1) : numeric ? "any" : null,
      min: field.minimum ?? null, max: field.maximum ?? null,
      minlength: field.minLength ?? null, maxlength: field.maxLength ?? null,
      required: field.required, placeholder: field.required ? null : "optional",
    });
    input.value = initialText(field);
  }
  const label = el("label", { for: id, class: field.type === "boolean" ? "check" : null },
    field.label, field.required ? el("span", { class: "required", "aria-hidden": "true" }, " *") : null);
  const parts = field.type === "boolean" ? [el("span", { class: "check-row" }, input, label)] : [label, input];
  if (field.description) parts.push(el("small", { id: id + "-help", class: "muted" }, field.description));
  return el("div", { class: "field" + (field.type === "json" ? " wide" : ""), "data-field": field.name }, ...parts);
}

function drawForm() {
  const kind = kinds.find((k) => k.kind === $("kind").value);
  const params = $("params");
  form = describeForm(kind && kind.params_schema);
  $("kind-info").textContent = kind
    ? "Queue " + kind.queue + (form.mode === "raw" ? " · this kind registers no parameter schema: params as JSON." : "")
    : "";
  if (form.mode === "fields") {
    params.replaceChildren(...form.fields.map(fieldInput));
  } else {
    const area = el("textarea", { id: "param-raw", name: "params", rows: 4, spellcheck: "false", class: "raw" });
    area.value = "{}";
    params.replaceChildren(el("div", { class: "field wide", "data-field": "params" },
      el("label", { for: "param-raw" }, "Params (JSON object)"), area));
  }
  $("submit-button").disabled = !kind;
  $("submit-result").textContent = "";
}

function markInvalid(name, message) {
  for (const node of $("params").querySelectorAll("[aria-invalid]")) node.removeAttribute("aria-invalid");
  const out = $("submit-result");
  out.className = "message error";
  out.textContent = message;
  const input = name && $("params").querySelector(`[data-field="${CSS.escape(name)}"] :is(input, select, textarea)`);
  if (input) {
    input.setAttribute("aria-invalid", "true");
    input.focus();
  }
}

async function loadKinds() {
  try {
    kinds = [...(await client.kinds())].sort((a, b) => a.kind.localeCompare(b.kind));
  } catch (err) {
    $("kind-info").textContent = "Could not read the job kinds — " + errorText(err);
    if (err.code === "unauthorized" || err.status === 401) $("token-form").hidden = false;
    return;
  }
  const select = $("kind");
  select.replaceChildren(...kinds.map((k) => el("option", { value: k.kind }, k.kind)));
  let preferred = null;
  try { preferred = localStorage.getItem(KIND_KEY); } catch (_) { /* storage off */ }
  const initial = kinds.find((k) => k.kind === preferred) || kinds.find((k) => k.kind === "mc_option_price") || kinds[0];
  if (initial) select.value = initial.kind;
  if (kinds.length === 0) $("kind-info").textContent = "No worker has registered a job kind yet.";
  drawForm();
}

$("kind").addEventListener("change", () => {
  try { localStorage.setItem(KIND_KEY, $("kind").value); } catch (_) { /* storage off */ }
  drawForm();
});

$("submit-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const kind = $("kind").value;
  const values = {};
  for (const input of $("params").querySelectorAll("input, select, textarea")) {
    values[input.name] = input.type === "checkbox" ? input.checked : input.value;
  }
  const read = readParams(form, values);
  if (read.error) { markInvalid(read.error.field, read.error.message); return; }
  for (const node of $("params").querySelectorAll("[aria-invalid]")) node.removeAttribute("aria-invalid");
  const button = $("submit-button");
  const out = $("submit-result");
  button.disabled = true;
  out.className = "message";
  out.textContent = "Submitting…";
  try {
    const accepted = await client.submit({ kind, params: read.params });
    const job = ensureJob(accepted.job_id);
    job.fallback = { kind, status: "queued", trace_id: accepted.trace_id };
    render(job);
    follow(job);
    out.textContent = "Job " + accepted.job_id + " accepted (trace " + accepted.trace_id + ")";
  } catch (err) {
    markInvalid(fieldOfPointer(err.field), "Not submitted — " + errorText(err));
  } finally {
    button.disabled = false;
  }
});

$("clear-finished").addEventListener("click", () => {
  for (const job of [...jobs.values()]) {
    if (!TERMINAL.has(state(job).status)) continue;
    job.row.remove();
    job.eventsRow.remove();
    jobs.delete(job.id);
  }
  $("empty").hidden = jobs.size > 0;
});

$("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const value = $("token").value.trim();
  if (!value) return;
  const url = new URL(location.href);
  url.searchParams.set("access_token", value);
  location.assign(url);
});

// ---- start ----
// The admin views (admin.js) use the same helpers and token.
window.jobgateDashboard = Object.freeze({
  el, api, showNotice,
  /// Calls back with (job_id, event) for each new event the page shows.
  onActivity: (listener) => { activityListeners.add(listener); return () => activityListeners.delete(listener); },
});
window.dispatchEvent(new Event("jobgate:dashboard-ready"));
showNotice(""); // the page's notice for a copy opened without the gateway
client.connect(); // the session opens now, so the indicator tells the truth from the start
loadKinds();
loadJobs(null);
followOwnerFeed();
