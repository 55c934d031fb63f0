// The dashboard's admin views (served at /dashboard/admin.js, loaded by the
// page at /): queues and workers, and dead letters with re-run and purge.
// They live apart from the page's script (app.js) so that each file stays
// readable; they use its helpers (window.jobgateDashboard: el, api,
// showNotice, onActivity) and its token, once it announces them with the
// "jobgate:dashboard-ready" event (app.js is a module: it runs after this
// classic script).
//
// Whether the token is admin is asked once, not guessed: GET
// /v1/admin/dead-letters?limit=1 answers 200 to an admin and 403 otherwise.
// Without the scope nothing is shown and nothing is said.
//
// Job events arrive through the page's client; a re-run job of the caller's
// own shows up in "Your jobs" through its owner feed. Queue figures (depth,
// running, workers) have no event stream, and nothing here reads them on a
// timer: the Queues & workers panel is read when it opens, when the tab
// comes back into view, on Refresh, and after the page sees job activity
// (at most once per QUEUES_MIN_INTERVAL_MS, so a burst of events is one read).
"use strict";
function startAdminViews() {
  const { el, api, showNotice, onActivity } = window.jobgateDashboard;
  const QUEUES_MIN_INTERVAL_MS = 2000;
  const DEAD_LETTERS_PAGE = 20;
  const BULK_RETRY_LIMIT = 1000;

  const fmtTime = (ms) => (typeof ms === "number" ? new Date(ms).toLocaleString() : "—");
  function fmtAge(ms) {
    if (typeof ms !== "number") return "—";
    if (ms < 1000) return ms + " ms";
    const s = Math.round(ms / 1000);
    if (s < 120) return s + " s";
    const m = Math.round(s / 60);
    return m < 120 ? m + " min" : Math.round(m / 60) + " h";
  }
  const errorText = (err) => err.code + ": " + err.message;
  const th = (text) => el("th", { scope: "col" }, text);
  function table(caption, headers, rows) {
    return el("div", { class: "table-wrap" },
      el("table", {}, el("caption", { class: "visually-hidden" }, caption),
        el("thead", {}, el("tr", {}, ...headers.map(th))),
        el("tbody", {}, ...rows)));
  }

  // ---- the section, its tabs and panels ----
  const queuesStatus = el("p", { class: "message", role: "status", "aria-live": "polite" });
  const queuesBody = el("div", { id: "queues" });
  const deadStatus = el("p", { class: "message", role: "status", "aria-live": "polite" });
  const deadBody = el("tbody", { id: "dead-letters" });
  const deadEmpty = el("p", { class: "empty", hidden: "" }, "No dead letters.");
  const prevButton = el("button", { class: "small", type: "button" }, "← Previous");
  const nextButton = el("button", { class: "small", type: "button" }, "Next →");

  function button(text, onClick, attrs) {
    const b = el("button", Object.assign({ class: "small", type: "button" }, attrs || {}), text);
    b.addEventListener("click", () => onClick(b));
    return b;
  }

  const panels = {
    queues: el("div", { role: "tabpanel", id: "admin-panel-queues", "aria-labelledby": "admin-tab-queues" },
      el("div", { class: "actions toolbar" }, button("Refresh", () => refreshQueues()), queuesStatus),
      queuesBody),
    dead: el("div", { role: "tabpanel", id: "admin-panel-dead", "aria-labelledby": "admin-tab-dead", hidden: "" },
      el("div", { class: "actions toolbar" },
        button("Refresh", () => loadDeadLetters(currentCursor())),
        button("Re-run all", retryAll),
        button("Purge", purgeAll, { class: "small danger" }),
        deadStatus),
      table("Dead letters", ["Job", "Kind", "Queue", "Owner", "Error", "Attempts", "Dead-lettered", "Action"], [])),
  };
  panels.dead.querySelector("tbody").replaceWith(deadBody);
  panels.dead.append(deadEmpty, el("div", { class: "actions" }, prevButton, nextButton));

  const tabs = {
    queues: el("button", { role: "tab", id: "admin-tab-queues", type: "button", "aria-controls": "admin-panel-queues",
      "aria-selected": "true" }, "Queues & workers"),
    dead: el("button", { role: "tab", id: "admin-tab-dead", type: "button", "aria-controls": "admin-panel-dead",
      "aria-selected": "false", tabindex: "-1" }, "Dead letters"),
  };
  let openPanel = "queues";
  function open(name) {
    openPanel = name;
    for (const [key, tab] of Object.entries(tabs)) {
      const selected = key === name;
      tab.setAttribute("aria-selected", String(selected));
      tab.tabIndex = selected ? 0 : -1;
      panels[key].hidden = !selected;
    }
    if (name === "queues") refreshQueues();
    else loadDeadLetters(currentCursor());
  }
  for (const [key, tab] of Object.entries(tabs)) {
    tab.addEventListener("click", () => open(key));
    tab.addEventListener("keydown", (ev) => {
      if (ev.key !== "ArrowLeft" && ev.key !== "ArrowRight") return;
      const other = key === "queues" ? "dead" : "queues";
      open(other);
      tabs[other].focus();
    });
  }

  const section = el("section", { id: "admin", "aria-labelledby": "admin-title" },
    el("h2", { id: "admin-title" }, "Admin"),
    el("div", { role: "tablist", "aria-label": "Admin views", class: "tabs" }, tabs.queues, tabs.dead),
    panels.queues, panels.dead);

  // ---- queues & workers ----
  let queuesInFlight = false;
  let queuesReadAt = 0;
  let activityTimer = null;
  const panelInView = () => section.isConnected && openPanel === "queues" && document.visibilityState === "visible";
  document.addEventListener("visibilitychange", () => { if (panelInView()) refreshQueues(); });
  // Job activity may have moved the figures: one read, no sooner than
  // QUEUES_MIN_INTERVAL_MS after the last.
  onActivity(() => {
    if (!panelInView() || activityTimer) return;
    const wait = Math.max(0, queuesReadAt + QUEUES_MIN_INTERVAL_MS - Date.now());
    activityTimer = setTimeout(() => { activityTimer = null; if (panelInView()) refreshQueues(); }, wait);
  });

  async function refreshQueues() {
    if (queuesInFlight) return;
    queuesInFlight = true;
    queuesReadAt = Date.now();
    try {
      const data = await api("GET", "/v1/admin/queues");
      const queues = Array.isArray(data) ? data : (data && (data.queues || data.items)) || [];
      renderQueues(queues);
      queuesStatus.className = "message muted";
      queuesStatus.textContent = "Updated " + new Date().toLocaleTimeString() + " (again after your jobs change, or on Refresh).";
    } catch (err) {
      if (err.status === 404) {
        queuesStatus.className = "message muted";
        queuesStatus.textContent = "";
        queuesBody.replaceChildren(el("p", { class: "empty" },
          "This gateway has no queues API (GET /v1/admin/queues is not served), so queues and workers cannot be shown."));
        return; // nothing to refresh
      }
      showNotice("Could not read the queues — " + errorText(err));
    } finally {
      queuesInFlight = false;
    }
  }

  function renderQueues(queues) {
    if (queues.length === 0) {
      queuesBody.replaceChildren(el("p", { class: "empty" }, "No queues: no worker has registered a job kind yet."));
      return;
    }
    queuesBody.replaceChildren(...queues.map(queueBlock));
  }

  function queueBlock(q) {
    const bands = q.bands || {};
    const action = q.paused ? "resume" : "pause";
    const toggle = button(q.paused ? "Resume" : "Pause", (b) => setPaused(q.queue, action, b),
      { "aria-label": (q.paused ? "resume" : "pause") + " queue " + q.queue });
    const workers = Array.isArray(q.workers) ? q.workers : [];
    const inHand = (w) => (Array.isArray(w.in_hand) ? w.in_hand.length : w.in_hand);
    const workerRows = workers.map((w) => el("tr", {},
      el("td", {}, el("code", {}, w.consumer)),
      el("td", {}, w.host || "—", w.pid ? el("span", { class: "muted" }, " (pid " + w.pid + ")") : ""),
      el("td", {}, Array.isArray(w.kinds) ? w.kinds.join(", ") : "—"),
      el("td", {}, w.concurrency ?? "—"),
      el("td", { title: Array.isArray(w.in_hand) ? w.in_hand.join("\n") : null }, inHand(w) ?? "—"),
      el("td", {}, el("span", { class: "status", "data-status": w.state === "live" ? "completed" : "failed" }, w.state || "?"),
        w.state === "gone" ? el("span", { class: "muted" }, " last seen " + fmtTime(w.seen_at)) : "")));
    return el("div", { class: "queue", "data-queue": q.queue },
      el("h3", {}, "Queue ", el("code", {}, q.queue), " ",
        el("span", { class: "status", "data-status": q.paused ? "cancelled" : "running" }, q.paused ? "paused" : "active"),
        " ", toggle),
      table("Queue " + q.queue, ["High", "Normal", "Low", "Oldest waiting", "Running", "Dead letters"],
        [el("tr", {}, el("td", {}, bands.high ?? 0), el("td", {}, bands.normal ?? 0), el("td", {}, bands.low ?? 0),
          el("td", {}, fmtAge(q.oldest_age_ms)), el("td", {}, q.running ?? 0), el("td", {}, q.dead_letters ?? 0))]),
      workers.length === 0
        ? el("p", { class: "empty" }, "No workers.")
        : table("Workers of queue " + q.queue, ["Worker", "Host", "Kinds", "Concurrency", "Jobs in hand", "State"], workerRows));
  }

  async function setPaused(queue, action, b) {
    b.disabled = true;
    try {
      await api("POST", "/v1/admin/queues/" + encodeURIComponent(queue) + "/" + action);
      queuesStatus.className = "message";
      queuesStatus.textContent = "Queue " + queue + (action === "pause" ? " paused." : " resumed.");
    } catch (err) {
      showNotice("Could not " + action + " queue " + queue + " — " + errorText(err));
    }
    refreshQueues();
  }

  // ---- dead letters ----
  const cursors = [null]; // the cursor of each page seen, the current one last
  const currentCursor = () => cursors[cursors.length - 1];
  prevButton.addEventListener("click", () => { if (cursors.length > 1) { cursors.pop(); loadDeadLetters(currentCursor()); } });
  let nextCursor = null;
  nextButton.addEventListener("click", () => { if (nextCursor) { cursors.push(nextCursor); loadDeadLetters(nextCursor); } });

  async function loadDeadLetters(cursor) {
    const query = "?limit=" + DEAD_LETTERS_PAGE + (cursor ? "&cursor=" + encodeURIComponent(cursor) : "");
    try {
      const page = await api("GET", "/v1/admin/dead-letters" + query);
      nextCursor = page.next_cursor || null;
      deadBody.replaceChildren(...page.items.map(deadLetterRow));
      deadEmpty.hidden = page.items.length > 0;
      prevButton.disabled = cursors.length <= 1;
      nextButton.disabled = !nextCursor;
    } catch (err) {
      showNotice("Could not read the dead letters — " + errorText(err));
    }
  }

  function deadLetterRow(d) {
    const error = d.error && typeof d.error === "object" ? (d.error.code || "") + ": " + (d.error.message || "") : d.reason;
    const row = el("tr", { "data-job-id": d.job_id },
      el("td", { class: "nowrap" }, el("code", { title: d.job_id }, d.job_id.slice(0, 8) + "…" + d.job_id.slice(-4))),
      el("td", {}, d.kind),
      el("td", {}, d.queue),
      el("td", {}, d.owner || "—"),
      el("td", { class: "error-text" }, error),
      el("td", {}, d.attempts ?? "—"),
      el("td", { class: "nowrap" }, fmtTime(d.dead_lettered_at)));
    row.append(el("td", {}, button("Re-run", (b) => retryOne(d.job_id, row, b), { "aria-label": "re-run job " + d.job_id })));
    return row;
  }

  async function retryOne(id, row, b) {
    b.disabled = true;
    try {
      const job = await api("POST", "/v1/admin/dead-letters/" + encodeURIComponent(id) + "/retry");
      row.remove();
      deadEmpty.hidden = deadBody.children.length > 0;
      deadStatus.className = "message";
      deadStatus.textContent = "Job " + id + " re-run: " + job.status + ".";
    } catch (err) {
      b.disabled = false;
      showNotice("Could not re-run job " + id + " — " + errorText(err));
    }
  }

  async function retryAll() {
    if (!confirm("Re-run every dead letter (up to " + BULK_RETRY_LIMIT + ")? Each job gets a new attempt.")) return;
    let done = "";
    try {
      const { results } = await api("POST", "/v1/admin/dead-letters/retry", { limit: BULK_RETRY_LIMIT });
      const requeued = results.filter((r) => r.outcome === "requeued").length;
      done = "Re-ran " + requeued + " of " + results.length + " dead letters" +
        (results.length === BULK_RETRY_LIMIT ? "; more may remain." : ".");
    } catch (err) {
      showNotice("Could not re-run the dead letters — " + errorText(err));
    }
    await reloadFirstPage(done);
  }

  // Shows the first page again, then says what was done (so what the
  // message says is what the table shows).
  async function reloadFirstPage(done) {
    cursors.splice(1);
    await loadDeadLetters(null);
    deadStatus.className = "message";
    deadStatus.textContent = done;
  }

  async function purgeAll() {
    if (!confirm("Purge every dead letter? The jobs stay failed and can no longer be re-run from here.")) return;
    let done = "";
    try {
      const { purged } = await api("POST", "/v1/admin/dead-letters/purge", {});
      done = "Purged " + purged + (purged === 1 ? " dead letter." : " dead letters.");
    } catch (err) {
      showNotice("Could not purge the dead letters — " + errorText(err));
    }
    await reloadFirstPage(done);
  }

  // ---- start: show the section only to an admin ----
  async function start() {
    try {
      await api("GET", "/v1/admin/dead-letters?limit=1");
    } catch (err) {
      // 401/403: not an admin (or no token), which is not an error here.
      if (err.status !== 401 && err.status !== 403) console.warn("admin views unavailable:", err.code, err.message);
      return;
    }
    document.querySelector("main").append(section);
    open("queues");
  }
  start();
}

if (window.jobgateDashboard) startAdminViews();
else window.addEventListener("jobgate:dashboard-ready", startAdminViews, { once: true });
