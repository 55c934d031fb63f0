// @jobgate/client against a real gateway (JOBGATE_TEST_URL) with a real
// Redis and the Python pricing worker (kinds echo, fail, mc_option_price).
// scripts/with-gateway.sh starts such a gateway; scripts/test.sh runs this.
//
// Env: JOBGATE_TEST_URL (required), JOBGATE_TEST_TOKEN (when the gateway
// checks tokens), JOBGATE_JWT_SECRET (mint short-lived tokens: the refresh
// test), JOBGATE_BIN + JOBGATE_REDIS_URL (start a second gateway on the same
// Redis and restart it mid-job). A test whose env is missing fails: it is
// not skipped.

import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { createServer } from "node:net";
import { describe, it } from "node:test";

import { WebSocket } from "ws";

import { JobgateClient, type JobgateClientOptions, type StateChange, type WatchItem } from "../src/index.js";

const url = process.env.JOBGATE_TEST_URL ?? "";
const token = process.env.JOBGATE_TEST_TOKEN;
const secret = process.env.JOBGATE_JWT_SECRET;

function requireEnv(name: string): string {
  const value = process.env[name];
  if (value === undefined || value === "") {
    throw new Error(`${name} is not set: run this through scripts/with-gateway.sh or scripts/test.sh`);
  }
  return value;
}

function client(extra: Partial<JobgateClientOptions> = {}): JobgateClient {
  const options: JobgateClientOptions = { url: requireEnv("JOBGATE_TEST_URL"), WebSocket: WebSocket as never, ...extra };
  if (token !== undefined && options.getToken === undefined) {
    options.getToken = async () => token;
  }
  return new JobgateClient(options);
}

/** An HS256 token as `jobgate token` makes it. */
function mint(sub: string, ttlS: number): string {
  const encode = (value: unknown) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const body = `${encode({ typ: "JWT", alg: "HS256" })}.${encode({ sub, exp: Math.floor(Date.now() / 1000) + ttlS })}`;
  const signature = createHmac("sha256", requireEnv("JOBGATE_JWT_SECRET")).update(body).digest("base64url");
  return `${body}.${signature}`;
}

async function collect(items: AsyncIterable<WatchItem>): Promise<WatchItem[]> {
  const all: WatchItem[] = [];
  for await (const item of items) all.push(item);
  return all;
}

/** Each seq once, in order, from 1, ending with a terminal event. */
function assertComplete(items: WatchItem[], terminal = "completed"): void {
  assert.deepEqual(
    items.map((item) => item.seq),
    items.map((_, index) => index + 1),
    `seqs ${items.map((item) => item.seq).join(",")}`,
  );
  assert.equal(items.at(-1)!.event, terminal);
}

const PRICING = { spot: 100, strike: 105, rate: 0.01, volatility: 0.2, maturity: 1, paths: 20_000, chunks: 4 };

describe("against a real gateway", { timeout: 120_000 }, () => {
  it("the README example: submit, watch to completion, close", async () => {
    assert.ok(url, "JOBGATE_TEST_URL is not set");
    const jobgate = client();
    try {
      const { job_id, trace_id } = await jobgate.submit({ kind: "echo", params: { hello: "world" } });
      assert.match(trace_id, /^[0-9a-f]{32}$/);
      const items = await collect(jobgate.watch(job_id));
      assertComplete(items);
      const last = items.at(-1)!;
      assert.deepEqual(last.event === "completed" && last.data.result, { hello: "world" });
    } finally {
      jobgate.close();
    }
  });

  it("mc_option_price over one session: progress, then the price; snapshot agrees", async () => {
    const jobgate = client();
    try {
      const { job_id } = await jobgate.submit({ kind: "mc_option_price", params: PRICING });
      const items = await collect(jobgate.watch(job_id));
      assertComplete(items);
      assert.ok(items.some((item) => item.event === "progress"));
      const snapshot = await jobgate.snapshot(job_id);
      assert.equal(snapshot.status, "completed");
      assert.equal(snapshot.seq, items.length);
    } finally {
      jobgate.close();
    }
  });

  it("many jobs at once on one session, each watched to its end", async () => {
    const jobgate = client();
    try {
      const submitted = await Promise.all(
        Array.from({ length: 10 }, (_, i) => jobgate.submit({ kind: "echo", params: { i } })),
      );
      const all = await Promise.all(submitted.map(({ job_id }) => collect(jobgate.watch(job_id))));
      all.forEach((items) => assertComplete(items));
    } finally {
      jobgate.close();
    }
  });

  it("a failing job ends the watch at failed; an unknown kind rejects the submit", async () => {
    const jobgate = client();
    try {
      const { job_id } = await jobgate.submit({ kind: "fail", params: { retryable: false }, max_attempts: 1 });
      assertComplete(await collect(jobgate.watch(job_id)), "failed");
      await assert.rejects(jobgate.submit({ kind: "no_such_kind", params: {} }), { code: "unknown_kind" });
    } finally {
      jobgate.close();
    }
  });

  it("kinds() lists the worker's kinds with their params schemas; params that break one are refused", async () => {
    const jobgate = client();
    try {
      const kinds = await jobgate.kinds();
      const names = kinds.map((kind) => kind.kind);
      assert.ok(names.includes("echo") && names.includes("mc_option_price"), names.join(","));
      const pricing = kinds.find((kind) => kind.kind === "mc_option_price")!;
      assert.equal(typeof pricing.params_schema, "object");
      await assert.rejects(jobgate.submit({ kind: "mc_option_price", params: { ...PRICING, strike: -1 } }), (error: unknown) => {
        const failure = error as { code?: string; field?: string; message?: string };
        assert.equal(failure.code, "invalid_params");
        assert.match(failure.message ?? "", /strike/);
        return true;
      });
    } finally {
      jobgate.close();
    }
  });

  it("the session speaks jobgate.v1 (hello) with a gateway that offers it", async () => {
    const jobgate = client();
    try {
      await jobgate.submit({ kind: "echo", params: {} });
      assert.equal((jobgate as unknown as { engine: { sessionProtocol: string | null } }).engine.sessionProtocol, "jobgate.v1");
    } finally {
      jobgate.close();
    }
  });

  it("the same idempotency key twice is one job", async () => {
    const jobgate = client();
    try {
      const key = `it-${Date.now()}`;
      const first = await jobgate.submit({ kind: "echo", params: { n: 1 } }, { idempotencyKey: key });
      const second = await jobgate.submit({ kind: "echo", params: { n: 1 } }, { idempotencyKey: key });
      assert.equal(second.job_id, first.job_id);
      assertComplete(await collect(jobgate.watch(first.job_id)));
    } finally {
      jobgate.close();
    }
  });

  it("traceparent is passed through: the job's trace id is the app's", async () => {
    const jobgate = client();
    try {
      const traceId = "4bf92f3577b34da6a3ce929d0e0e4736";
      const { trace_id } = await jobgate.submit(
        { kind: "echo", params: {} },
        { traceparent: `00-${traceId}-00f067aa0ba902b7-01` },
      );
      assert.equal(trace_id, traceId);
    } finally {
      jobgate.close();
    }
  });

  it("cancel, jobs() and watch from after a seq", async () => {
    const jobgate = client();
    try {
      const { job_id } = await jobgate.submit({ kind: "echo", params: {}, delay_ms: 60_000 });
      const cancelled = await jobgate.cancel(job_id);
      assert.equal(cancelled.status, "cancelled");
      const items = await collect(jobgate.watch(job_id, { after: 1 }));
      assert.deepEqual(
        items.map((item) => [item.seq, item.event]),
        [[2, "cancelled"]],
      );
      const page = await jobgate.jobs({ limit: 50 });
      assert.ok(page.jobs.some((job) => job.job_id === job_id));
    } finally {
      jobgate.close();
    }
  });

  it("a watch of a finished job from its last event ends at once (the gateway's subscribed)", async () => {
    const submitter = client();
    const watcher = client();
    try {
      const { job_id } = await submitter.submit({ kind: "echo", params: { n: 1 } });
      const all = await collect(submitter.watch(job_id));
      assertComplete(all);
      const last = all.at(-1)!;
      // Another session, which has none of the job buffered: it subscribes.
      const signal = AbortSignal.timeout(10_000);
      const rest = await collect(watcher.watch(job_id, { after: last.seq, afterEpoch: last.epoch, signal }));
      assert.deepEqual(rest, []);
      const tail = await collect(watcher.watch(job_id, { after: last.seq - 1, signal }));
      assert.deepEqual(
        tail.map((item) => [item.seq, item.event]),
        [[last.seq, "completed"]],
      );
    } finally {
      submitter.close();
      watcher.close();
    }
  });

  it("kinds() keeps the worker's order of a schema's properties", async () => {
    const jobgate = client();
    try {
      const pricing = (await jobgate.kinds()).find((kind) => kind.kind === "mc_option_price")!;
      const properties = Object.keys((pricing.params_schema as { properties: Record<string, unknown> }).properties);
      assert.deepEqual(properties.slice(0, 5), ["spot", "strike", "rate", "volatility", "maturity"]);
    } finally {
      jobgate.close();
    }
  });

  it("transport sse: submit over HTTP, watch over SSE; events() sees the caller's new job", async () => {
    const jobgate = client({ transport: "sse" });
    const feed = new AbortController();
    try {
      const seen: string[] = [];
      const events = jobgate.events({ signal: feed.signal });
      const reading = (async () => {
        for await (const ev of events) {
          seen.push(`${ev.job_id}:${ev.seq}:${ev.event}`);
          if (ev.event === "completed") return;
        }
      })().catch(() => undefined);
      await new Promise((resolve) => setTimeout(resolve, 300)); // the feed is open
      const { job_id } = await jobgate.submit({ kind: "mc_option_price", params: PRICING });
      const items = await collect(jobgate.watch(job_id));
      assertComplete(items);
      await Promise.race([reading, new Promise((resolve) => setTimeout(resolve, 10_000))]);
      assert.ok(seen.includes(`${job_id}:1:queued`), seen.join(" "));
      assert.ok(seen.some((entry) => entry.startsWith(`${job_id}:`) && entry.endsWith(":completed")));
      assert.equal(new Set(seen).size, seen.length, "the owner feed repeated an event");
    } finally {
      feed.abort();
      jobgate.close();
    }
  });

  it("a token that expires in 4 s is refreshed on the session before it runs out", async () => {
    requireEnv("JOBGATE_JWT_SECRET");
    let calls = 0;
    const states: StateChange[] = [];
    const jobgate = client({
      getToken: async () => {
        calls += 1;
        return mint("ts-client-test", 4);
      },
      tokenRefreshMarginMs: 2_000,
    });
    jobgate.onStateChange((change) => states.push(change));
    try {
      const { job_id } = await jobgate.submit({ kind: "echo", params: {}, delay_ms: 6_000 });
      const items = await collect(jobgate.watch(job_id));
      assertComplete(items);
      assert.ok(calls >= 3, `getToken called ${calls} times`);
      assert.ok(
        !states.some((change) => change.code === 4001),
        `the session expired: ${JSON.stringify(states)}`,
      );
    } finally {
      jobgate.close();
    }
  });

  it("a gateway restart mid-job: the watch reconnects and every event arrives once", async () => {
    assert.ok(secret !== undefined || token === undefined);
    const bin = requireEnv("JOBGATE_BIN");
    requireEnv("JOBGATE_REDIS_URL");
    const port = await freePort();
    const gateway = new GatewayProcess(bin, port);
    await gateway.start();
    const states: StateChange[] = [];
    const jobgate = client({ url: `http://127.0.0.1:${port}`, backoff: { initialMs: 100, maxMs: 1_000 } });
    jobgate.onStateChange((change) => states.push(change));
    try {
      const { job_id } = await jobgate.submit({
        kind: "mc_option_price",
        params: { ...PRICING, paths: 3_000_000, chunks: 30 },
      });
      const items: WatchItem[] = [];
      let restarted = false;
      for await (const item of jobgate.watch(job_id)) {
        items.push(item);
        if (!restarted && item.event === "progress") {
          restarted = true;
          await gateway.restart();
        }
      }
      assert.ok(restarted, "the job ended before a restart");
      assertComplete(items);
      assert.ok(states.some((change) => change.state === "reconnecting" && change.code === 1001), JSON.stringify(states));
      assert.equal(states.at(-1)!.state, "connected");
    } finally {
      jobgate.close();
      await gateway.stop();
    }
  });
});

class GatewayProcess {
  private child: ChildProcess | null = null;
  constructor(
    private readonly bin: string,
    private readonly port: number,
  ) {}

  async start(): Promise<void> {
    this.child = spawn(this.bin, [], {
      env: { ...process.env, JOBGATE_LISTEN: `127.0.0.1:${this.port}` },
      stdio: ["ignore", "ignore", "inherit"],
    });
    const deadline = Date.now() + 30_000;
    for (;;) {
      try {
        const response = await fetch(`http://127.0.0.1:${this.port}/readyz`);
        if (response.ok) return;
      } catch {
        // not listening yet
      }
      if (Date.now() > deadline) throw new Error("the second gateway did not get ready");
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }

  async stop(): Promise<void> {
    const child = this.child;
    this.child = null;
    if (child === null || child.exitCode !== null) return;
    const exited = new Promise((resolve) => child.once("exit", resolve));
    child.kill("SIGTERM");
    await Promise.race([exited, new Promise((resolve) => setTimeout(resolve, 15_000))]);
    if (child.exitCode === null) child.kill("SIGKILL");
  }

  async restart(): Promise<void> {
    await this.stop();
    await this.start();
  }
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      server.close(() => (typeof address === "object" && address !== null ? resolve(address.port) : reject(new Error("no port"))));
    });
  });
}
