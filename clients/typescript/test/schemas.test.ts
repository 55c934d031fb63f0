// The hand-written wire types against the protocol's golden examples: every
// example of proto-schemas/examples goes through the engine's frame parser
// and the type guards, and the invalid ones that break what the guards
// check are refused.

import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";

import { EventOrder } from "../src/order.js";
import { isHistoryTruncated, isJobEvent, isJobSnapshot, parseServerFrame } from "../src/types.js";
import { Bench, delivered, ofType } from "./harness.js";

const examples = fileURLToPath(new URL("../../../../proto-schemas/examples/", import.meta.url));

function load(folder: string): [string, unknown][] {
  const dir = join(examples, folder);
  return readdirSync(dir)
    .filter((name) => name.endsWith(".json"))
    .sort()
    .map((name) => [name, JSON.parse(readFileSync(join(dir, name), "utf8")) as unknown]);
}

describe("golden examples", () => {
  it("every ws_server_message example parses as the frame its type names", () => {
    const found = load("ws_server_message");
    assert.ok(found.length >= 7);
    for (const [name, value] of found) {
      const frame = parseServerFrame(value);
      assert.notEqual(frame, null, name);
      assert.equal(frame!.type, (value as { type: string }).type, name);
    }
  });

  it("every event example is a JobEvent and goes through the order", () => {
    for (const [name, value] of load("event")) {
      assert.ok(isJobEvent(value), name);
      const frame = parseServerFrame(value);
      assert.equal(frame?.type, "event", name);
      const order = new EventOrder();
      assert.equal(order.offer(frame as never).length, (value as { epoch: number }).epoch > 1 || (value as { seq: number }).seq === 1 ? 1 : 0, name);
    }
  });

  it("every job snapshot example is a JobSnapshot", () => {
    for (const [name, value] of load("job_snapshot")) {
      assert.ok(isJobSnapshot(value), name);
    }
    for (const [name, value] of load("job_list")) {
      for (const job of (value as { jobs: unknown[] }).jobs) {
        assert.ok(isJobSnapshot(job), name);
      }
    }
  });

  it("hello and auth_ok examples set the session's timers", () => {
    const names = load("ws_server_message").map(([name]) => name);
    assert.ok(names.includes("hello.json") && names.includes("auth_ok.json"), names.join(","));
    for (const [name, value] of load("ws_server_message")) {
      const frame = parseServerFrame(value);
      if (frame?.type === "hello") {
        assert.equal(frame.protocol, "jobgate.v1", name);
        assert.ok(frame.ping_interval_ms < frame.ping_timeout_ms, name);
      }
      if (frame?.type === "error" && (value as { field?: string }).field !== undefined) {
        assert.equal(frame.field, (value as { field?: string }).field, name);
      }
    }
  });

  it("the kinds examples are lists of Kind", () => {
    for (const [name, value] of load("kinds")) {
      const kinds = (value as { kinds: unknown[] }).kinds;
      assert.ok(Array.isArray(kinds), name);
      for (const kind of kinds as Record<string, unknown>[]) {
        assert.equal(typeof kind.kind, "string", name);
        assert.equal(typeof kind.queue, "string", name);
        assert.ok(kind.params_schema === null || typeof kind.params_schema === "object", name);
      }
    }
  });

  it("both history_truncated examples (WebSocket and SSE) are read", () => {
    for (const [name, value] of load("history_truncated")) {
      assert.ok(isHistoryTruncated(value), name);
    }
  });

  it("the engine takes every server example on a session without failing", () => {
    const bench = new Bench();
    bench.connect();
    for (const [, value] of load("event")) {
      const jobId = (value as { job_id: string }).job_id;
      bench.run(bench.engine.watch(bench.log.length + 100, jobId));
    }
    for (const [, value] of load("ws_server_message")) {
      bench.frame(value);
    }
    const events = delivered(bench.log);
    assert.ok(events.length > 0);
    assert.ok(ofType(bench.log, "close_socket").length === 0);
  });

  it("invalid server frames that break what the parser checks are ignored", () => {
    const invalid = load("invalid/ws_server_message");
    let refused = 0;
    for (const [, value] of invalid) {
      if (parseServerFrame(value) === null) {
        refused += 1;
      }
    }
    // The parser checks structure, not every pattern and bound of the
    // schemas; most invalid examples break the structure.
    assert.ok(refused > 0, "no invalid example was refused");
  });
});
