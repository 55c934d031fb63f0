// The conformance driver of @jobgate/client: the client behind the
// language-neutral driver protocol of proto-schemas/conformance/README.md.
// JSON-line commands come on stdin, what the client delivered goes to
// stdout as JSON lines; the suite's fake gateway (or the real one behind a
// fault-injecting relay) plays the server side.
//
// The client runs on a jumpable clock: `advance_clock` moves it forward and
// fires every timer that became due, so "30 s of silence" takes no time.
//
//   node dist/conformance/driver.js

import { createInterface } from "node:readline";

import WebSocket from "ws";

import { JobgateClient } from "../src/index.js";

type Json = Record<string, unknown>;

/** A clock that real time moves and `advance()` jumps, with timers on it. */
class JumpClock {
  private offset = 0;
  private nextId = 1;
  private readonly pending = new Map<number, { due: number; fire: () => void; real: ReturnType<typeof setTimeout> }>();

  now = (): number => Date.now() + this.offset;

  setTimeout = (callback: () => void, ms: number): number => {
    const id = this.nextId++;
    const fire = () => {
      if (this.pending.delete(id)) {
        callback();
      }
    };
    const real = setTimeout(fire, Math.max(0, ms));
    this.pending.set(id, { due: this.now() + Math.max(0, ms), fire, real });
    return id;
  };

  clearTimeout = (handle: unknown): void => {
    const entry = this.pending.get(handle as number);
    if (entry !== undefined) {
      clearTimeout(entry.real);
      this.pending.delete(handle as number);
    }
  };

  /** Jumps forward; the timers now due fire in due order. */
  advance(ms: number): void {
    this.offset += ms;
    const due = [...this.pending.entries()]
      .filter(([, entry]) => entry.due <= this.now())
      .sort((left, right) => left[1].due - right[1].due);
    for (const [, entry] of due) {
      clearTimeout(entry.real);
      entry.fire();
    }
  }
}

function emit(output: Json): void {
  process.stdout.write(`${JSON.stringify(output)}\n`);
}

function errorOutput(ref: unknown, error: unknown): Json {
  const body = error as { code?: unknown; message?: unknown } | null;
  return {
    out: "error",
    ref,
    code: typeof body?.code === "string" ? body.code : "client_error",
    message: typeof body?.message === "string" ? body.message : String(error),
  };
}

const clock = new JumpClock();
let client: JobgateClient | null = null;
let token = "";
let tokenRequests = 0;

function started(): JobgateClient {
  if (client === null) {
    throw new Error("no client: send start first");
  }
  return client;
}

function start(command: Json): void {
  const options = (command.options ?? {}) as Json;
  token = String(command.token ?? "");
  const backoff: { initialMs?: number; maxMs?: number } = {};
  if (typeof options.backoff_initial_ms === "number") {
    backoff.initialMs = options.backoff_initial_ms;
  }
  if (typeof options.backoff_max_ms === "number") {
    backoff.maxMs = options.backoff_max_ms;
  }
  const config: ConstructorParameters<typeof JobgateClient>[0] = {
    url: String(command.url),
    getToken: async () => {
      tokenRequests += 1;
      emit({ out: "get_token", n: tokenRequests });
      return token;
    },
    WebSocket: WebSocket as unknown as NonNullable<ConstructorParameters<typeof JobgateClient>[0]["WebSocket"]>,
    transport: "websocket",
    backoff,
    clock: clock.now,
    timers: { setTimeout: clock.setTimeout, clearTimeout: clock.clearTimeout },
  };
  if (typeof options.token_refresh_margin_ms === "number") {
    config.tokenRefreshMarginMs = options.token_refresh_margin_ms;
  }
  client = new JobgateClient(config);
  client.onStateChange((change) => {
    emit({ out: "state", state: change.state, reason: change.reason, code: change.code ?? null });
    if (change.retryInMs !== undefined) {
      emit({ out: "reconnect_delay", ms: change.retryInMs });
    }
  });
  // Connect now, as an app does when it opens: scenarios script the
  // connection before the first submit.
  client.connect();
  emit({ out: "ready" });
}

function submit(command: Json): void {
  const ref = command.ref;
  const options: { idempotencyKey?: string } = {};
  if (typeof command.idempotency_key === "string") {
    options.idempotencyKey = command.idempotency_key;
  }
  started()
    .submit(command.job as Parameters<JobgateClient["submit"]>[0], options)
    .then((result) => emit({ out: "submitted", ref, job_id: result.job_id, trace_id: result.trace_id }))
    .catch((error: unknown) => emit(errorOutput(ref, error)));
}

function watch(command: Json): void {
  const ref = command.ref;
  const jobId = String(command.job_id);
  const options: { after?: number; afterEpoch?: number } = {};
  if (typeof command.after === "number") {
    options.after = command.after;
  }
  if (typeof command.after_epoch === "number") {
    options.afterEpoch = command.after_epoch;
  }
  const iterate = async () => {
    for await (const item of started().watch(jobId, options)) {
      if (item.type === "snapshot") {
        emit({ out: "snapshot", ref, job_id: item.job_id, first_seq: item.first_seq, status: item.snapshot.status });
      } else {
        emit({ out: "event", ref, job_id: item.job_id, epoch: item.epoch, seq: item.seq, event: item.event, data: item.data });
      }
    }
    emit({ out: "watch_end", ref, job_id: jobId });
  };
  iterate().catch((error: unknown) => emit(errorOutput(ref, error)));
}

function snapshotOf(command: Json, call: (id: string) => Promise<{ job_id: string; status: string; seq: number }>): void {
  const ref = command.ref;
  call(String(command.job_id))
    .then((snapshot) => emit({ out: "snapshot", ref, job_id: snapshot.job_id, first_seq: null, status: snapshot.status }))
    .catch((error: unknown) => emit(errorOutput(ref, error)));
}

function handle(command: Json): void {
  switch (command.cmd) {
    case "start":
      start(command);
      break;
    case "set_token":
      token = String(command.token);
      break;
    case "submit":
      submit(command);
      break;
    case "watch":
      watch(command);
      break;
    case "cancel":
      snapshotOf(command, (id) => started().cancel(id));
      break;
    case "snapshot":
      snapshotOf(command, (id) => started().snapshot(id));
      break;
    case "advance_clock":
      clock.advance(Number(command.ms));
      break;
    case "online":
      started().online();
      break;
    case "close":
      client?.close();
      emit({ out: "closed" });
      break;
    default:
      emit({ out: "error", ref: command.ref ?? null, code: "unknown_command", message: `unknown command ${String(command.cmd)}` });
  }
}

const input = createInterface({ input: process.stdin });
input.on("line", (line) => {
  if (line.trim() === "") {
    return;
  }
  let command: Json;
  try {
    command = JSON.parse(line) as Json;
  } catch {
    emit({ out: "error", ref: null, code: "bad_command", message: `not JSON: ${line}` });
    return;
  }
  try {
    handle(command);
  } catch (error) {
    emit(errorOutput(command.ref ?? null, error));
  }
});
input.on("close", () => {
  client?.close();
  // Sockets close in the background; nothing is left to report.
  setTimeout(() => process.exit(0), 50).unref();
});
