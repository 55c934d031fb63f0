// A test bench for the engine: a fake clock, a scripted random source, and
// helpers that pick outputs apart. No socket, no timer.

import { Engine, type EngineOptions, type Output } from "../src/engine.js";
import type { ClientFrame, JobEvent, WatchItem } from "../src/types.js";

export const JOB = "01936f3e-8a7c-7b21-9f4e-2d5c8a1b3e90";
export const JOB2 = "01936f3e-8a7c-7b21-9f4e-2d5c8a1b3e91";
export const TRACE = "4bf92f3577b34da6a3ce929d0e0e4736";

export function event(seq: number, name = "progress", epoch = 1, jobId = JOB): JobEvent {
  const data: Record<string, unknown> =
    name === "completed"
      ? { result: { seq } }
      : name === "queued"
        ? { kind: "echo", queue: "default", priority: 5 }
        : name === "started"
          ? { attempt: 1, worker: "w1" }
          : name === "failed"
            ? { attempt: 1, error: { code: "x", message: "y" } }
            : name === "cancelled"
              ? { reason: "requested" }
              : { done: seq, total: 10 };
  return { type: "event", job_id: jobId, seq, epoch, event: name, data, ts: 1_796_000_000_000 + seq, trace_id: TRACE } as JobEvent;
}

export function snapshot(seq: number, status = "running", jobId = JOB) {
  return {
    job_id: jobId,
    kind: "echo",
    queue: "default",
    status,
    priority: 5,
    attempt: 1,
    max_attempts: 3,
    timeout_s: 600,
    seq,
    epoch: 1,
    progress: null,
    result: null,
    error: null,
    created_at: 1,
    started_at: 2,
    finished_at: null,
    updated_at: 3,
    trace_id: TRACE,
  };
}

export class Bench {
  now = 1_000_000;
  randoms: number[] = [];
  readonly engine: Engine;
  /** Every output so far, in order. */
  readonly log: Output[] = [];

  constructor(options: Partial<EngineOptions> = {}) {
    this.engine = new Engine({
      clock: () => this.now,
      random: () => this.randoms.shift() ?? 0.5,
      ...options,
    });
  }

  /** Runs one engine call; returns (and records) its outputs. */
  run(outputs: Output[]): Output[] {
    this.log.push(...outputs);
    for (const output of outputs) {
      if (output.type === "open") {
        this.connection = output.connection;
      }
    }
    return outputs;
  }

  /** Moves the clock forward and ticks. */
  advance(ms: number): Output[] {
    this.now += ms;
    return this.run(this.engine.tick());
  }

  /** The connection id of the last `open`. */
  connection = 0;

  /** Starts the engine and opens its first session. */
  connect(protocol: string | null = "jobgate.v1"): Output[] {
    this.run(this.engine.start());
    return this.opened(protocol);
  }

  /** The last opened socket opened (protocol: the negotiated subprotocol, or null). */
  opened(protocol: string | null = "jobgate.v1"): Output[] {
    return this.run(this.engine.opened(this.connection, protocol));
  }

  frame(value: unknown): Output[] {
    return this.run(this.engine.frame(this.connection, value));
  }

  closed(code: number, reason = ""): Output[] {
    return this.run(this.engine.closed(this.connection, code, reason));
  }

  /** Clears the recorded outputs. */
  reset(): void {
    this.log.length = 0;
  }
}

export function sent(outputs: Output[]): ClientFrame[] {
  return outputs.filter((o): o is Extract<Output, { type: "send" }> => o.type === "send").map((o) => o.frame);
}

export function delivered(outputs: Output[], watch?: number): WatchItem[] {
  return outputs
    .filter((o): o is Extract<Output, { type: "deliver" }> => o.type === "deliver" && (watch === undefined || o.watch === watch))
    .map((o) => o.item);
}

export function seqs(outputs: Output[], watch?: number): number[] {
  return delivered(outputs, watch).map((item) => item.seq);
}

export function ofType<T extends Output["type"]>(outputs: Output[], type: T): Extract<Output, { type: T }>[] {
  return outputs.filter((o): o is Extract<Output, { type: T }> => o.type === type);
}
