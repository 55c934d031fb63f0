// The dashboard's admin views driven in headless Chromium against a running
// gateway, Redis and Python worker (scripts/test-dashboard.sh starts them and
// passes BASE_URL, ADMIN_TOKEN, USER_TOKEN, SCREENSHOT). A fail job is
// dead-lettered, listed in the Dead letters panel, re-run from it and
// dead-lettered again; a token without the admin scope sees no admin section;
// where the gateway has GET /v1/admin/queues, the Queues panel shows the
// worker's queue with a live worker. A job driven here with the job script
// (redis-cli on REDIS_PORT) through a lost write, as a failover leaves one,
// shows its new epoch's events although their seqs repeat. Prints
// "N passed, M failed".
import { execFileSync } from "node:child_process";
import { mkdtempSync, mkdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { chromium } from "playwright-core";

const { BASE_URL, ADMIN_TOKEN, USER_TOKEN, SCREENSHOT, REDIS_PORT } = process.env;
const STEP_TIMEOUT_MS = 20000;
// A dead-lettering waits out the fail kind's retry backoff, which grows with the attempt.
const DEAD_LETTER_TIMEOUT_MS = 30000;
let passed = 0;
let failed = 0;

function check(name, ok, detail) {
  if (ok) passed += 1;
  else failed += 1;
  console.log((ok ? "ok   " : "FAIL ") + name + (ok || detail === undefined ? "" : " — " + detail));
}

async function apiCall(method, path, token, body) {
  const res = await fetch(BASE_URL + path, {
    method,
    headers: { Authorization: "Bearer " + token, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : null };
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

async function jobStatus(id) {
  return (await apiCall("GET", "/v1/jobs/" + id, ADMIN_TOKEN)).body.status;
}
async function isDeadLettered(id) {
  return (await apiCall("GET", "/v1/admin/dead-letters/" + id, ADMIN_TOKEN)).status === 200;
}

async function scenario(context) {
  const submitted = await apiCall("POST", "/v1/jobs", ADMIN_TOKEN,
    { kind: "fail", params: { retryable: true }, max_attempts: 2 });
  check("a fail job is accepted", submitted.status === 202, JSON.stringify(submitted));
  const id = submitted.body.job_id;
  await until("the job to fail and be dead-lettered",
    async () => (await jobStatus(id)) === "failed" && (await isDeadLettered(id)), DEAD_LETTER_TIMEOUT_MS);

  const page = await context.newPage();
  const pageErrors = [];
  page.on("pageerror", (err) => pageErrors.push(String(err)));
  page.on("dialog", (dialog) => dialog.accept());
  await page.goto(BASE_URL + "/?access_token=" + encodeURIComponent(ADMIN_TOKEN));

  const admin = page.locator("section#admin");
  await admin.waitFor({ timeout: STEP_TIMEOUT_MS });
  check("an admin token shows the Admin section", await admin.isVisible());

  const queues = await apiCall("GET", "/v1/admin/queues", ADMIN_TOKEN);
  if (queues.status === 404) {
    await page.getByText("This gateway has no queues API").waitFor({ timeout: STEP_TIMEOUT_MS });
    check("without a queues API the Queues panel says so", true);
  } else {
    const listed = Array.isArray(queues.body) ? queues.body : queues.body.queues || queues.body.items || [];
    const queue = listed.find((q) => (q.workers || []).some((w) => w.state === "live"));
    check("GET /v1/admin/queues lists a queue with a live worker", queue !== undefined, JSON.stringify(queues.body));
    if (queue) {
      const block = page.locator(`#admin-panel-queues .queue[data-queue="${queue.queue}"]`);
      await block.waitFor({ timeout: STEP_TIMEOUT_MS });
      check("the Queues panel shows queue " + queue.queue + " with a live worker",
        (await block.locator('.status:text-is("live")').count()) === 1);
    }
  }

  await page.getByRole("tab", { name: "Dead letters" }).click();
  const row = page.locator(`#dead-letters tr[data-job-id="${id}"]`);
  await row.waitFor({ timeout: STEP_TIMEOUT_MS });
  const rowText = await row.innerText();
  check("the Dead letters panel lists the job with its error and attempts",
    rowText.includes("fail") && rowText.includes("max_attempts_exceeded") && /\b2\b/.test(rowText), rowText);

  const seqBefore = (await apiCall("GET", "/v1/jobs/" + id, ADMIN_TOKEN)).body.seq;
  await row.getByRole("button", { name: "re-run job " + id }).click();
  await row.waitFor({ state: "detached", timeout: STEP_TIMEOUT_MS });
  check("after Re-run the row is gone from the panel", (await row.count()) === 0);
  const after = (await apiCall("GET", "/v1/jobs/" + id, ADMIN_TOKEN)).body;
  check("the job was re-run (new events after its failed one)", after.seq > seqBefore, JSON.stringify(after));

  const mine = page.locator(`#jobs tr[data-job-id="${id}"]`);
  await mine.waitFor({ timeout: STEP_TIMEOUT_MS });
  check("the re-run job of the caller's own appears in Your jobs through the event stream", await mine.isVisible());

  await until("the re-run job to fail and be dead-lettered again",
    async () => (await jobStatus(id)) === "failed" && (await isDeadLettered(id)), DEAD_LETTER_TIMEOUT_MS);
  check("the re-run job ended failed and dead-lettered again", true);
  await page.locator("#admin-panel-dead").getByRole("button", { name: "Refresh" }).click();
  await row.waitFor({ timeout: STEP_TIMEOUT_MS });
  check("Refresh lists it again", (await row.count()) === 1);

  mkdirSync(dirname(SCREENSHOT), { recursive: true });
  await page.screenshot({ path: SCREENSHOT, fullPage: true });

  // Re-run all and Purge ask first (confirm(), accepted above).
  const dead = page.locator("#admin-panel-dead");
  await dead.getByRole("button", { name: "Re-run all" }).click();
  await dead.getByText("Re-ran 1 of 1 dead letters.").waitFor({ timeout: STEP_TIMEOUT_MS });
  check("Re-run all re-runs the dead letter", (await row.count()) === 0);
  await until("the job to be dead-lettered a third time",
    async () => (await jobStatus(id)) === "failed" && (await isDeadLettered(id)), DEAD_LETTER_TIMEOUT_MS);
  await dead.getByRole("button", { name: "Purge" }).click();
  await dead.getByText("Purged 1 dead letter.").waitFor({ timeout: STEP_TIMEOUT_MS });
  check("Purge empties the panel and the dead letters",
    (await row.count()) === 0 && (await dead.getByText("No dead letters.").isVisible()) && !(await isDeadLettered(id)));
  check("no script error on the admin page", pageErrors.length === 0, pageErrors.join("; "));
  await page.close();

  const userPage = await context.newPage();
  const userErrors = [];
  userPage.on("pageerror", (err) => userErrors.push(String(err)));
  const adminProbe = userPage.waitForResponse((r) => r.url().includes("/v1/admin/dead-letters?limit=1"));
  await userPage.goto(BASE_URL + "/?access_token=" + encodeURIComponent(USER_TOKEN));
  const probe = await adminProbe;
  await userPage.locator("#conn[data-state=connected]").waitFor({ timeout: STEP_TIMEOUT_MS });
  check("a token without the admin scope is answered 403", probe.status() === 403, String(probe.status()));
  check("a token without the admin scope sees no Admin section", (await userPage.locator("section#admin").count()) === 0);
  check("and no notice about it", await userPage.locator("#notice").isHidden());
  check("no script error on the user's page", userErrors.length === 0, userErrors.join("; "));
  await userPage.close();
}

function redis(...args) {
  return execFileSync("redis-cli", ["-p", REDIS_PORT, ...args], { encoding: "utf8" }).trim();
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

// A job of a kind no worker serves, its events made here with the job script.
async function epochScenario(context) {
  redis("HSET", "jobgate:kinds:v2", "held",
    JSON.stringify({ queue: "held", worker: "dashboard-test", seen_at: 0 }));
  const page = await context.newPage();
  const pageErrors = [];
  page.on("pageerror", (err) => pageErrors.push(String(err)));
  await page.goto(BASE_URL + "/?access_token=" + encodeURIComponent(ADMIN_TOKEN));
  await page.locator("#conn[data-state=connected]").waitFor({ timeout: STEP_TIMEOUT_MS });

  const submitted = await apiCall("POST", "/v1/jobs", ADMIN_TOKEN, { kind: "held", params: {} });
  check("a job of a kind no worker serves is accepted", submitted.status === 202, JSON.stringify(submitted));
  const id = submitted.body.job_id;
  const script = readFileSync("proto-schemas/redis/jobgate.lua", "utf8");
  const keys = ["2", "jobgate:job:{" + id + "}", "jobgate:events:{" + id + "}"];
  const op = (...args) => redis("EVAL", script, ...keys, ...args);
  const row = page.locator(`#jobs tr[data-job-id="${id}"]`);
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
  check("no script error on the page", pageErrors.length === 0, pageErrors.join("; "));
  await page.close();
}

const profile = mkdtempSync(join(tmpdir(), "jobgate-chromium-"));
let context;
try {
  // A persistent context is Playwright's way to give Chromium a fresh --user-data-dir.
  context = await chromium.launchPersistentContext(profile, {
    executablePath: "/usr/bin/chromium",
    headless: true,
    viewport: { width: 1280, height: 1000 },
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
      "--disable-sync", "--no-first-run"],
  });
  await scenario(context);
  await epochScenario(context);
} catch (err) {
  check("the scenario ran to its end", false, err && err.stack ? err.stack : String(err));
} finally {
  if (context) await context.close();
  rmSync(profile, { recursive: true, force: true });
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 && passed > 0 ? 0 : 1);
