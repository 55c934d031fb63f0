// The dashboard driven in headless Chromium against a real Redis, gateway
// and Python worker. scripts/test-dashboard.sh starts Redis and the worker
// and passes BASE_URL, ADMIN_TOKEN, USER_TOKEN, REDIS_PORT, SCREENSHOT_DIR;
// this file starts the gateway itself (GATEWAY_BIN, with the environment it
// was given, its log appended to GATEWAY_LOG and its pid written to
// GATEWAY_PID_FILE) so that it can stop it with SIGTERM mid-job and start it
// again on the same port.
//
// The user's page: submits a pricing job from the form drawn from its
// params schema and watches it to completion; submits a job of a kind whose
// events this test writes with the job script (redis-cli), restarts the
// gateway in the middle of it and sees it finish with every event once;
// cancels a job; reloads and sees its jobs, one still running with live
// progress, and "Load more"; and never polls: every request is recorded and
// none may repeat between two user actions, nor any be made while the page
// sits idle. Then the admin views, and a job through a lost write (a new
// epoch). Prints "N passed, M failed".
import { execFileSync, spawn } from "node:child_process";
import { mkdtempSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync, closeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const { BASE_URL, ADMIN_TOKEN, USER_TOKEN, SCREENSHOT_DIR, REDIS_PORT, GATEWAY_BIN, GATEWAY_LOG, GATEWAY_PID_FILE } = process.env;
const STEP_TIMEOUT_MS = 20000;
// A dead-lettering waits out the fail kind's retry backoff, which grows with the attempt.
const DEAD_LETTER_TIMEOUT_MS = 30000;
// How long a page must sit idle without a single request: more than twice
// the period of any poll worth the name.
const IDLE_MS = 12000;
// The same request this many times between two user actions is a poll.
const MAX_REPEATS = 3;
// ... except while the gateway restarts, when the client retries its two
// connections with a backoff.
const MAX_REPEATS_WHILE_RESTARTING = 12;
let passed = 0;
let failed = 0;

function check(name, ok, detail) {
  if (ok) passed += 1;
  else failed += 1;
  console.log((ok ? "ok   " : "FAIL ") + name + (ok || detail === undefined ? "" : " — " + detail));
}

// ---- the gateway, as a child this test can restart ----
let gateway = null;
async function startGateway() {
  const log = openSync(GATEWAY_LOG, "a");
  gateway = spawn(GATEWAY_BIN, [], { env: process.env, stdio: ["ignore", log, log] });
  closeSync(log);
  writeFileSync(GATEWAY_PID_FILE, String(gateway.pid));
  const exited = new Promise((resolve) => gateway.once("exit", resolve));
  gateway.exited = exited;
  await until("the gateway's /readyz", async () => {
    try { return (await fetch(BASE_URL + "/readyz")).ok; } catch (_) { return false; }
  }, 30000);
}
async function stopGateway() {
  if (!gateway || gateway.exitCode !== null) return;
  gateway.kill("SIGTERM");
  const timer = setTimeout(() => gateway.kill("SIGKILL"), 15000);
  await gateway.exited;
  clearTimeout(timer);
}
process.on("SIGTERM", () => { gateway?.kill("SIGTERM"); process.exit(1); });

// ---- HTTP and Redis from the test's side ----
async function apiCall(method, path, token, body) {
  const res = await fetch(BASE_URL + path, {
    method,
    headers: { Authorization: "Bearer " + token, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : null };
}

/// A finished job's whole history, read from its SSE stream (which ends
/// after the terminal event).
async function history(id, token) {
  const res = await fetch(BASE_URL + "/v1/jobs/" + id + "/events", {
    headers: { Authorization: "Bearer " + token }, signal: AbortSignal.timeout(STEP_TIMEOUT_MS),
  });
  const text = await res.text();
  return text.split("\n").filter((line) => line.startsWith("data:")).map((line) => JSON.parse(line.slice(5)));
}

// Polls fn until it returns a truthy value, for at most timeoutMs.
async function until(what, fn, timeoutMs = STEP_TIMEOUT_MS) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await fn();
    if (value) return value;
    if (Date.now() > deadline) throw new Error("timed out waiting for " + what);
    await new Promise((r) => setTimeout(r, 200));
  }
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function redis(...args) {
  return execFileSync("redis-cli", ["-p", REDIS_PORT, ...args], { encoding: "utf8" }).trim();
}
const JOB_SCRIPT = readFileSync("proto-schemas/redis/jobgate.lua", "utf8");
/// The worker's side of a job of a kind no worker serves, written here.
function jobScript(id) {
  const keys = ["2", "jobgate:job:{" + id + "}", "jobgate:events:{" + id + "}"];
  return (...args) => redis("EVAL", JOB_SCRIPT, ...keys, ...args);
}

// A kind no worker serves, registered with a params schema that has one
// field of each kind the form draws; this test writes its jobs' events.
const HELD_SCHEMA = {
  type: "object",
  properties: {
    steps: { type: "integer", title: "Steps", minimum: 1, maximum: 10, default: 4 },
    label: { type: "string", maxLength: 40, description: "shown nowhere; any text" },
    urgent: { type: "boolean", default: false },
    mode: { enum: ["fast", "slow"], default: "slow" },
    // Drawn as a JSON field; only the gateway checks maxItems.
    tags: { type: "array", items: { type: "string" }, maxItems: 2 },
  },
  required: ["steps"],
  additionalProperties: false,
};
function registerHeldKind() {
  redis("HSET", "jobgate:kinds:v2", "held",
    JSON.stringify({ queue: "held", worker: "dashboard-test", seen_at: 0, params_schema: HELD_SCHEMA }));
}

async function openPage(context, token) {
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (err) => errors.push(String(err)));
  // The browser also logs each failed request as an error: the admin probe's
  // 403 for a user, refused connections while the gateway restarts. Only
  // the page's own errors count.
  page.on("console", (msg) => {
    if (msg.type() === "error" && !/^Failed to load resource|^WebSocket connection to/.test(msg.text())) {
      errors.push("console: " + msg.text());
    }
  });
  page.on("dialog", (dialog) => dialog.accept());
  const requests = recordRequests(page);
  return { page, errors, requests };
}

// ---- the request log: what the page asked, between which user actions ----
function recordRequests(page) {
  const log = { entries: [], segment: "open", segments: ["open"] };
  page.on("request", (request) => log.entries.push({ segment: log.segment, key: request.method() + " " + request.url(), at: Date.now() }));
  page.on("websocket", (socket) => log.entries.push({ segment: log.segment, key: "WS " + socket.url(), at: Date.now() }));
  log.action = (name) => { log.segment = name + " #" + log.segments.length; log.segments.push(log.segment); };
  return log;
}
/// Requests repeated within one segment (between two user actions) more
/// often than a user or a reconnect explains.
function repeats(log) {
  const counts = new Map();
  for (const entry of log.entries) {
    const key = entry.segment + " | " + entry.key;
    counts.set(key, (counts.get(key) || 0) + 1);
  }
  return [...counts].filter(([key, n]) => n > (key.startsWith("gateway restart") ? MAX_REPEATS_WHILE_RESTARTING : MAX_REPEATS))
    .map(([key, n]) => n + "× " + key.replace(/access_token=[^&\s]+/, "access_token=…"));
}
async function checkIdle(name, log) {
  log.action("idle");
  const segment = log.segment;
  await sleep(IDLE_MS);
  const during = log.entries.filter((entry) => entry.segment === segment).map((entry) => entry.key);
  check(name + " makes no request while it sits idle for " + IDLE_MS / 1000 + " s", during.length === 0, during.join(", "));
  const repeated = repeats(log);
  check(name + " repeats no request without a user action (no polling)", repeated.length === 0, repeated.join("; "));
}

// ---- the page as the test reads it ----
const jobRow = (page, id) => page.locator(`#jobs tr.job[data-job-id="${id}"]`);
const eventItems = (page, id) => page.locator(`ol[data-events-for="${id}"] > li`);
async function submittedJobId(page) {
  const text = await page.locator("#submit-result").textContent();
  const match = /Job ([0-9a-f-]{36}) accepted/.exec(text || "");
  if (!match) throw new Error("no job id in the submit result: " + text);
  return match[1];
}
async function submitFromForm(page) {
  const before = await page.locator("#submit-result").textContent();
  await page.locator("#submit-button").click();
  await until("the submit to be answered", async () => {
    const text = await page.locator("#submit-result").textContent();
    return text !== before && !/Submitting/.test(text) && text;
  });
  return submittedJobId(page);
}
/// The page's events of a finished job against its history: each once, in order.
async function checkEventsOnce(name, page, id, token) {
  const shown = await eventItems(page, id).evaluateAll((items) =>
    items.map((item) => (item.dataset.epoch || "1") + ":" + item.dataset.seq + ":" + item.dataset.event));
  const expected = (await history(id, token)).map((e) => (e.epoch || 1) + ":" + e.seq + ":" + e.event);
  check(name + ": the page shows each of its " + expected.length + " events once, in order",
    JSON.stringify(shown) === JSON.stringify(expected), "page " + JSON.stringify(shown) + " history " + JSON.stringify(expected));
  const duplicates = await jobRow(page, id).getAttribute("data-duplicates");
  check(name + ": the client delivered no event twice", duplicates === "0", "duplicates " + duplicates);
}

async function userScenario(context) {
  registerHeldKind();
  const { page, errors, requests } = await openPage(context, USER_TOKEN);
  await page.goto(BASE_URL + "/?access_token=" + encodeURIComponent(USER_TOKEN));
  await page.locator("#conn[data-state=connected]").waitFor({ timeout: STEP_TIMEOUT_MS });
  check("the page connects and says so", true);

  // The pricing form, drawn from the kind's schema.
  await page.locator("#kind").selectOption("mc_option_price");
  const field = (name) => page.locator(`#params [data-field="${name}"] :is(input, select, textarea)`);
  await field("paths").waitFor({ timeout: STEP_TIMEOUT_MS });
  const drawn = {
    option: await field("option").evaluate((n) => n.tagName + ":" + [...n.options].map((o) => o.textContent).join("|")),
    paths: await field("paths").evaluate((n) => n.type + " step=" + n.step + " value=" + n.value),
    spot: await field("spot").evaluate((n) => n.type + " step=" + n.step + " required=" + n.required),
  };
  check("the pricing form draws an enum as a select, an integer and a number as number inputs with defaults",
    drawn.option === "SELECT:call|put" && drawn.paths === "number step=1 value=200000" && drawn.spot === "number step=any required=true",
    JSON.stringify(drawn));

  requests.action("invalid submit");
  for (const [name, value] of [["spot", "100"], ["strike", "95"], ["rate", "0.03"], ["volatility", "0.2"], ["maturity", "1"]]) {
    await field(name).fill(value);
  }
  await field("chunks").fill("0");
  await page.locator("#submit-button").click();
  check("a value below the schema's minimum is refused at the form, naming the field",
    /must be at least 1\./.test(await page.locator("#submit-result").textContent()) &&
    (await field("chunks").getAttribute("aria-invalid")) === "true" && (await page.locator("#jobs tr.job").count()) === 0,
    await page.locator("#submit-result").textContent());

  requests.action("pricing submit");
  await field("chunks").fill("16");
  await field("paths").fill("1600000");
  await field("option").selectOption("put");
  const pricing = await submitFromForm(page);
  const pricingRow = jobRow(page, pricing);
  await pricingRow.waitFor({ timeout: STEP_TIMEOUT_MS });
  await pricingRow.locator('.status[data-status="completed"]').waitFor({ timeout: 60000 });
  const pricingText = await pricingRow.innerText();
  const snapshot = (await apiCall("GET", "/v1/jobs/" + pricing, USER_TOKEN)).body;
  check("the pricing job runs to completion on the page with its progress, price and trace id",
    pricingText.includes("16/16") && /\d+\.\d{4} ± /.test(pricingText) && pricingText.includes(snapshot.trace_id)
      && snapshot.status === "completed",
    pricingText);
  await checkEventsOnce("the pricing job", page, pricing, USER_TOKEN);
  requests.action("show events");
  await pricingRow.locator("xpath=following-sibling::tr[1]").locator("summary").click();
  mkdirSync(SCREENSHOT_DIR, { recursive: true });
  await page.screenshot({ path: join(SCREENSHOT_DIR, "dashboard.png"), fullPage: true });

  // A job through a gateway restart.
  requests.action("held submit");
  await page.locator("#kind").selectOption("held");
  await field("steps").waitFor({ timeout: STEP_TIMEOUT_MS });
  const heldDrawn = {
    steps: await field("steps").evaluate((n) => n.type + " min=" + n.min + " max=" + n.max + " value=" + n.value),
    label: await field("label").evaluate((n) => n.type + " required=" + n.required),
    urgent: await field("urgent").evaluate((n) => n.type + " checked=" + n.checked),
    mode: await field("mode").evaluate((n) => n.tagName + " " + n.selectedOptions[0].textContent),
  };
  check("a kind's form draws integer bounds, an optional string, a boolean and an enum default",
    JSON.stringify(heldDrawn) === JSON.stringify({
      steps: "number min=1 max=10 value=4", label: "text required=false", urgent: "checkbox checked=false", mode: "SELECT slow",
    }), JSON.stringify(heldDrawn));
  requests.action("refused submit");
  await field("tags").fill('["a", "b", "c"]');
  await page.locator("#submit-button").click();
  await page.getByText("Not submitted — invalid_params").waitFor({ timeout: STEP_TIMEOUT_MS });
  check("params the gateway refuses (422 invalid_params) are reported at the field it names",
    (await field("tags").getAttribute("aria-invalid")) === "true" && /tags/.test(await page.locator("#submit-result").textContent()),
    await page.locator("#submit-result").textContent());
  requests.action("held submit");
  await field("tags").fill("");
  await field("urgent").check();
  const held = await submitFromForm(page);
  const heldParams = (await apiCall("GET", "/v1/jobs/" + held, USER_TOKEN)).body.params;
  if (heldParams !== undefined) {
    check("the form sent the params as typed", JSON.stringify(heldParams) === JSON.stringify({ steps: 4, urgent: true, mode: "slow" }),
      JSON.stringify(heldParams));
  }
  const heldRow = jobRow(page, held);
  const op = jobScript(held);
  op("start", "dashboard-test");
  op("progress", "1", JSON.stringify({ done: 1, total: 4 }));
  await heldRow.getByText("1/4").waitFor({ timeout: STEP_TIMEOUT_MS });
  check("the held job shows progress 1/4", true);

  requests.action("gateway restart");
  await stopGateway();
  await page.locator("#conn[data-state=reconnecting]").waitFor({ timeout: STEP_TIMEOUT_MS });
  check("with the gateway stopped the page says it is reconnecting", true);
  op("progress", "1", JSON.stringify({ done: 2, total: 4, message: "written while the gateway was down" }));
  await startGateway();
  op("progress", "1", JSON.stringify({ done: 3, total: 4 }));
  await page.locator('#conn[data-state=connected][data-reconnects="1"]').waitFor({ timeout: STEP_TIMEOUT_MS });
  check("the page reconnects to the restarted gateway and counts one reconnect",
    /live · 1 reconnect/.test(await page.locator("#conn").textContent()), await page.locator("#conn").textContent());
  await heldRow.getByText("3/4").waitFor({ timeout: STEP_TIMEOUT_MS });
  op("progress", "1", JSON.stringify({ done: 4, total: 4 }));
  op("complete", "1", JSON.stringify({ steps: 4 }));
  await heldRow.locator('.status[data-status="completed"]').waitFor({ timeout: STEP_TIMEOUT_MS });
  check("the held job finishes on the page after the restart", (await heldRow.innerText()).includes("4/4"));
  await checkEventsOnce("the job across the restart", page, held, USER_TOKEN);
  requests.action("show events");
  await heldRow.locator("xpath=following-sibling::tr[1]").locator("summary").click();
  await page.screenshot({ path: join(SCREENSHOT_DIR, "restart.png"), fullPage: true });

  // Cancel.
  requests.action("cancel submit");
  const doomed = await submitFromForm(page);
  requests.action("cancel");
  await jobRow(page, doomed).getByRole("button", { name: "cancel job " + doomed }).click();
  await jobRow(page, doomed).locator('.status[data-status="cancelled"]').waitFor({ timeout: STEP_TIMEOUT_MS });
  check("Cancel cancels a queued job", true);

  // Reload: enough jobs for a second page, the newest one running.
  for (let i = 0; i < 20; i += 1) {
    const echo = await apiCall("POST", "/v1/jobs", USER_TOKEN, { kind: "echo", params: { n: i } });
    if (echo.status !== 202) throw new Error("echo submit: " + JSON.stringify(echo));
  }
  const running = (await apiCall("POST", "/v1/jobs", USER_TOKEN, { kind: "held", params: { steps: 3 } })).body.job_id;
  const runningOp = jobScript(running);
  runningOp("start", "dashboard-test");
  runningOp("progress", "1", JSON.stringify({ done: 1, total: 3 }));
  await until("the echo jobs to complete", async () =>
    (await apiCall("GET", "/v1/jobs?status=queued,running&kind=echo", USER_TOKEN)).body.jobs.length === 0);
  requests.action("reload");
  await page.reload();
  await page.locator("#conn[data-state=connected]").waitFor({ timeout: STEP_TIMEOUT_MS });
  const runningRow = jobRow(page, running);
  await runningRow.getByText("1/3").waitFor({ timeout: STEP_TIMEOUT_MS });
  check("after a reload the running job is listed with its progress", (await runningRow.getAttribute("data-status")) === "running");
  runningOp("progress", "1", JSON.stringify({ done: 2, total: 3 }));
  await runningRow.getByText("2/3").waitFor({ timeout: STEP_TIMEOUT_MS });
  check("and its progress is live", true);
  check("the first page holds 20 jobs and offers Load more",
    (await page.locator("#jobs tr.job").count()) === 20 && (await page.locator("#load-more").isVisible()));
  await page.screenshot({ path: join(SCREENSHOT_DIR, "reload.png"), fullPage: true });
  requests.action("load more");
  await page.locator("#load-more").click();
  await until("the second page", async () => (await page.locator("#jobs tr.job").count()) > 20);
  await jobRow(page, pricing).waitFor({ timeout: STEP_TIMEOUT_MS });
  check("Load more lists the older jobs, the pricing job among them",
    (await jobRow(page, pricing).locator('.status[data-status="completed"]').count()) === 1);
  requests.action("show events");
  await jobRow(page, pricing).locator("xpath=following-sibling::tr[1]").locator("summary").click();
  await until("the finished job's events", async () => (await eventItems(page, pricing).count()) > 0);
  await checkEventsOnce("a finished job's events, read when shown", page, pricing, USER_TOKEN);
  runningOp("progress", "1", JSON.stringify({ done: 3, total: 3 }));
  runningOp("complete", "1", "{}");
  await runningRow.locator('.status[data-status="completed"]').waitFor({ timeout: STEP_TIMEOUT_MS });
  await checkEventsOnce("the job followed after the reload", page, running, USER_TOKEN);

  await checkIdle("the user's page", requests);
  check("no script error on the user's page", errors.length === 0, errors.join("; "));
  await page.close();
}

async function jobStatus(id) {
  return (await apiCall("GET", "/v1/jobs/" + id, ADMIN_TOKEN)).body.status;
}
async function isDeadLettered(id) {
  return (await apiCall("GET", "/v1/admin/dead-letters/" + id, ADMIN_TOKEN)).status === 200;
}

async function adminScenario(context) {
  const submitted = await apiCall("POST", "/v1/jobs", ADMIN_TOKEN,
    { kind: "fail", params: { retryable: true }, max_attempts: 2 });
  check("a fail job is accepted", submitted.status === 202, JSON.stringify(submitted));
  const id = submitted.body.job_id;
  await until("the job to fail and be dead-lettered",
    async () => (await jobStatus(id)) === "failed" && (await isDeadLettered(id)), DEAD_LETTER_TIMEOUT_MS);

  const { page, errors, requests } = await openPage(context, ADMIN_TOKEN);
  await page.goto(BASE_URL + "/?access_token=" + encodeURIComponent(ADMIN_TOKEN));

  const admin = page.locator("section#admin");
  await admin.waitFor({ timeout: STEP_TIMEOUT_MS });
  check("an admin token shows the Admin section", await admin.isVisible());

  const queues = await apiCall("GET", "/v1/admin/queues", ADMIN_TOKEN);
  const listed = queues.body.queues || [];
  const queue = listed.find((q) => (q.workers || []).some((w) => w.state === "live"));
  check("GET /v1/admin/queues lists a queue with a live worker", queue !== undefined, JSON.stringify(queues.body));
  if (queue) {
    const block = page.locator(`#admin-panel-queues .queue[data-queue="${queue.queue}"]`);
    await block.waitFor({ timeout: STEP_TIMEOUT_MS });
    check("the Queues panel shows queue " + queue.queue + " with a live worker",
      (await block.locator('.status:text-is("live")').count()) === 1);
  }

  requests.action("dead letters tab");
  await page.getByRole("tab", { name: "Dead letters" }).click();
  const row = page.locator(`#dead-letters tr[data-job-id="${id}"]`);
  await row.waitFor({ timeout: STEP_TIMEOUT_MS });
  const rowText = await row.innerText();
  check("the Dead letters panel lists the job with its error and attempts",
    rowText.includes("fail") && rowText.includes("max_attempts_exceeded") && /\b2\b/.test(rowText), rowText);

  const seqBefore = (await apiCall("GET", "/v1/jobs/" + id, ADMIN_TOKEN)).body.seq;
  requests.action("re-run");
  await row.getByRole("button", { name: "re-run job " + id }).click();
  await row.waitFor({ state: "detached", timeout: STEP_TIMEOUT_MS });
  check("after Re-run the row is gone from the panel", (await row.count()) === 0);
  const after = (await apiCall("GET", "/v1/jobs/" + id, ADMIN_TOKEN)).body;
  check("the job was re-run (new events after its failed one)", after.seq > seqBefore, JSON.stringify(after));

  const mine = jobRow(page, id);
  await mine.locator('.status[data-status="queued"], .status[data-status="running"]').waitFor({ timeout: STEP_TIMEOUT_MS });
  check("the re-run job of the caller's own comes alive in Your jobs through the owner feed", await mine.isVisible());

  await until("the re-run job to fail and be dead-lettered again",
    async () => (await jobStatus(id)) === "failed" && (await isDeadLettered(id)), DEAD_LETTER_TIMEOUT_MS);
  await mine.locator('.status[data-status="failed"]').waitFor({ timeout: STEP_TIMEOUT_MS });
  check("the re-run job ended failed (on the page too) and dead-lettered again", true);
  requests.action("refresh");
  await page.locator("#admin-panel-dead").getByRole("button", { name: "Refresh" }).click();
  await row.waitFor({ timeout: STEP_TIMEOUT_MS });
  check("Refresh lists it again", (await row.count()) === 1);

  mkdirSync(SCREENSHOT_DIR, { recursive: true });
  await page.screenshot({ path: join(SCREENSHOT_DIR, "admin.png"), fullPage: true });

  // Re-run all and Purge ask first (confirm(), accepted by openPage).
  const dead = page.locator("#admin-panel-dead");
  requests.action("re-run all");
  await dead.getByRole("button", { name: "Re-run all" }).click();
  await dead.getByText("Re-ran 1 of 1 dead letters.").waitFor({ timeout: STEP_TIMEOUT_MS });
  check("Re-run all re-runs the dead letter", (await row.count()) === 0);
  await until("the job to be dead-lettered a third time",
    async () => (await jobStatus(id)) === "failed" && (await isDeadLettered(id)), DEAD_LETTER_TIMEOUT_MS);
  requests.action("purge");
  await dead.getByRole("button", { name: "Purge" }).click();
  await dead.getByText("Purged 1 dead letter.").waitFor({ timeout: STEP_TIMEOUT_MS });
  check("Purge empties the panel and the dead letters",
    (await row.count()) === 0 && (await dead.getByText("No dead letters.").isVisible()) && !(await isDeadLettered(id)));
  requests.action("queues tab");
  await page.getByRole("tab", { name: "Queues & workers" }).click();
  await checkIdle("the admin page (Queues panel open)", requests);
  check("no script error on the admin page", errors.length === 0, errors.join("; "));
  await page.close();

  const user = await openPage(context, USER_TOKEN);
  const adminProbe = user.page.waitForResponse((r) => r.url().includes("/v1/admin/dead-letters?limit=1"));
  await user.page.goto(BASE_URL + "/?access_token=" + encodeURIComponent(USER_TOKEN));
  const probe = await adminProbe;
  await user.page.locator("#conn[data-state=connected]").waitFor({ timeout: STEP_TIMEOUT_MS });
  check("a token without the admin scope is answered 403", probe.status() === 403, String(probe.status()));
  check("a token without the admin scope sees no Admin section", (await user.page.locator("section#admin").count()) === 0);
  check("and no notice about it", await user.page.locator("#notice").isHidden());
  check("no script error on the user's page", user.errors.length === 0, user.errors.join("; "));
  await user.page.close();
}

// Undoes a job's last write as a failover can: the history loses its last
// event, the record's seq goes back by one and was last written under another
// replication id, so the script's next write starts epoch 2 at the lost seq.
const LOSE_LAST_WRITE = `
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq'))
local kept = redis.call('XRANGE', KEYS[2], '-', (seq - 1) .. '-0')
redis.call('DEL', KEYS[2])
for _, entry in ipairs(kept) do redis.call('XADD', KEYS[2], entry[1], unpack(entry[2])) end
redis.call('HSET', KEYS[1], 'seq', seq - 1, 'replid', '0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c')
return seq - 1`;

// A job submitted elsewhere while the page is open (it arrives through the
// owner feed), driven through a lost write.
async function epochScenario(context) {
  const { page, errors } = await openPage(context, ADMIN_TOKEN);
  await page.goto(BASE_URL + "/?access_token=" + encodeURIComponent(ADMIN_TOKEN));
  await page.locator("#conn[data-state=connected]").waitFor({ timeout: STEP_TIMEOUT_MS });

  const submitted = await apiCall("POST", "/v1/jobs", ADMIN_TOKEN, { kind: "held", params: { steps: 2 } });
  check("a job of a kind no worker serves is accepted", submitted.status === 202, JSON.stringify(submitted));
  const id = submitted.body.job_id;
  const op = jobScript(id);
  const keys = ["2", "jobgate:job:{" + id + "}", "jobgate:events:{" + id + "}"];
  const row = jobRow(page, id);
  op("start", "dashboard-test");
  op("progress", "1", JSON.stringify({ done: 1, total: 2 }));
  await row.getByText("1/2").waitFor({ timeout: STEP_TIMEOUT_MS });
  check("the page shows the job at (1, 3): progress 1/2", true);

  check("the last write is lost", redis("EVAL", LOSE_LAST_WRITE, ...keys) === "2");
  op("progress", "1", JSON.stringify({ done: 2, total: 2 }));
  op("complete", "1", JSON.stringify({ n: 1 }));
  const after = (await apiCall("GET", "/v1/jobs/" + id, ADMIN_TOKEN)).body;
  check("the job went on in epoch 2", after.epoch === 2 && after.seq === 4, JSON.stringify(after));
  await row.locator('.status[data-status="completed"]').waitFor({ timeout: STEP_TIMEOUT_MS });
  const text = await row.innerText();
  check("the page applied (2, 3), whose seq it had seen, and (2, 4)", text.includes("2/2"), text);
  check("no script error on the page", errors.length === 0, errors.join("; "));
  await page.close();
}

const profile = mkdtempSync(join(tmpdir(), "jobgate-chromium-"));
let context;
try {
  await startGateway();
  // A persistent context is Playwright's way to give Chromium a fresh --user-data-dir.
  context = await chromium.launchPersistentContext(profile, {
    executablePath: "/usr/bin/chromium",
    headless: true,
    viewport: { width: 1280, height: 1000 },
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
      "--disable-sync", "--no-first-run"],
  });
  await userScenario(context);
  await adminScenario(context);
  await epochScenario(context);
} catch (err) {
  check("the scenario ran to its end", false, err && err.stack ? err.stack : String(err));
} finally {
  if (context) await context.close();
  rmSync(profile, { recursive: true, force: true });
  await stopGateway();
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 && passed > 0 ? 0 : 1);
