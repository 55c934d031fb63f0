// The protocol engine, driven with a fake clock and a scripted random source.

import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { backoffBound } from "../src/backoff.js";
import { Bench, delivered, event, JOB, JOB2, ofType, sent, seqs, snapshot, TRACE } from "./harness.js";

const HELLO = {
  type: "hello",
  protocol: "jobgate.v1",
  session_id: "6f1c2b1e-0c1a-4d7e-9a51-3b0f8f1e2a77",
  ping_interval_ms: 15_000,
  ping_timeout_ms: 30_000,
  token_expires_in_ms: null,
  limits: { max_subscriptions: 1000, messages_per_s: 50, max_message_bytes: 1_048_576, outbound_queue: 1024 },
};

describe("connecting", () => {
  it("opens at once without a token source and reports connected", () => {
    const bench = new Bench();
    const started = bench.run(bench.engine.start());
    assert.deepEqual(ofType(started, "open"), [{ type: "open", connection: 1, token: null }]);
    const opened = bench.opened();
    assert.equal(ofType(opened, "state")[0]!.change.state, "connected");
    assert.equal(bench.engine.connectionState, "connected");
  });

  it("asks for a token before the first connection and opens with it", () => {
    const bench = new Bench({ hasTokenSource: true });
    const started = bench.run(bench.engine.start());
    assert.equal(ofType(started, "need_token").length, 1);
    assert.equal(ofType(started, "open").length, 0);
    const arrived = bench.run(bench.engine.tokenArrived("t1"));
    assert.deepEqual(ofType(arrived, "open"), [{ type: "open", connection: 1, token: "t1" }]);
  });

  it("asks once while a token request is outstanding", () => {
    const bench = new Bench({ hasTokenSource: true });
    bench.run(bench.engine.start());
    bench.run(bench.engine.start());
    assert.equal(ofType(bench.log, "need_token").length, 1);
  });
});

describe("backoff", () => {
  it("waits a full-jitter delay within [0, min(max, initial * 2^n)) and grows per failure", () => {
    const backoff = { initialMs: 100, maxMs: 1_000 };
    const bench = new Bench({ backoff });
    bench.run(bench.engine.start());
    const delays: number[] = [];
    for (let n = 0; n < 8; n += 1) {
      bench.randoms = [0.999];
      const out = bench.closed(1006, "refused");
      const change = ofType(out, "state")[0]!.change;
      delays.push(change.retryInMs!);
      assert.ok(change.retryInMs! >= 0 && change.retryInMs! < backoffBound(backoff, n), `delay ${n}`);
      assert.equal(change.failures, n + 1);
      // Nothing opens before the delay is over.
      bench.now += change.retryInMs! - 1;
      assert.equal(ofType(bench.run(bench.engine.tick()), "open").length, 0);
      assert.equal(ofType(bench.advance(1), "open").length, 1);
    }
    assert.deepEqual(delays, [99, 199, 399, 799, 999, 999, 999, 999]);
  });

  it("draws from the injected random source (0 → at once)", () => {
    const bench = new Bench();
    bench.run(bench.engine.start());
    bench.randoms = [0];
    const out = bench.closed(1006);
    assert.equal(ofType(out, "state")[0]!.change.retryInMs, 0);
  });

  it("starts again from the first bound after a successful connection", () => {
    const bench = new Bench({ backoff: { initialMs: 100, maxMs: 10_000 } });
    bench.run(bench.engine.start());
    for (let n = 0; n < 4; n += 1) {
      bench.randoms = [0.999];
      const change = ofType(bench.closed(1006), "state")[0]!.change;
      bench.advance(change.retryInMs!);
    }
    bench.opened();
    bench.randoms = [0.999];
    const change = ofType(bench.closed(1011), "state")[0]!.change;
    assert.equal(change.retryInMs, 99);
    assert.equal(change.state, "reconnecting");
  });

  it("online() resets the backoff and reconnects at once", () => {
    const bench = new Bench({ backoff: { initialMs: 1_000, maxMs: 60_000 } });
    bench.run(bench.engine.start());
    for (let n = 0; n < 5; n += 1) {
      bench.randoms = [0.999];
      const change = ofType(bench.closed(1006), "state")[0]!.change;
      if (n < 4) bench.advance(change.retryInMs!);
    }
    const out = bench.run(bench.engine.online());
    assert.equal(ofType(out, "open").length, 1);
    bench.randoms = [0.999];
    assert.equal(ofType(bench.closed(1006), "state")[0]!.change.retryInMs, 999);
  });
});

describe("close codes", () => {
  it("4008 slow consumer: reconnects at once and resumes after the last delivered event", () => {
    const bench = new Bench();
    bench.connect();
    bench.run(bench.engine.watch(1, JOB));
    for (const seq of [1, 2, 3]) bench.frame(event(seq));
    const closed = bench.closed(4008, "slow consumer: resume with subscribe after");
    const change = ofType(closed, "state")[0]!.change;
    assert.equal(change.retryInMs, 0);
    assert.equal(change.code, 4008);
    assert.equal(change.state, "reconnecting");
    assert.equal(ofType(bench.advance(0), "open").length, 1);
    const reopened = bench.opened();
    assert.deepEqual(sent(reopened), [{ type: "subscribe", job_id: JOB, after: 3 }]);
  });

  it("1001 gateway restart: reconnects within the first backoff bound and resumes", () => {
    const bench = new Bench({ backoff: { initialMs: 200, maxMs: 5_000 } });
    bench.connect();
    bench.run(bench.engine.watch(1, JOB));
    bench.frame(event(1, "queued"));
    bench.frame(event(2, "started"));
    bench.randoms = [0.5];
    const change = ofType(bench.closed(1001, "server shutting down"), "state")[0]!.change;
    assert.equal(change.retryInMs, 100);
    bench.advance(100);
    const reopened = bench.opened();
    assert.deepEqual(sent(reopened), [{ type: "subscribe", job_id: JOB, after: 2 }]);
    // The replay after the restart repeats nothing the app already has.
    const replay = [event(2, "started"), event(3), event(4, "completed")].flatMap((e) => bench.frame(e));
    assert.deepEqual(seqs(replay, 1), [3, 4]);
    assert.deepEqual(ofType(replay, "watch_end"), [{ type: "watch_end", watch: 1, job_id: JOB }]);
  });

  it("4001 token expired: asks for a token, reconnects with it at once, resumes", () => {
    const bench = new Bench({ hasTokenSource: true });
    bench.run(bench.engine.start());
    bench.run(bench.engine.tokenArrived("old"));
    bench.opened();
    bench.run(bench.engine.watch(1, JOB));
    bench.frame(event(1, "queued"));
    const closed = bench.closed(4001, "token expired; send auth before it expires");
    assert.equal(ofType(closed, "state")[0]!.change.retryInMs, 0);
    const due = bench.advance(0);
    assert.equal(ofType(due, "need_token").length, 1);
    assert.equal(ofType(due, "open").length, 0);
    const arrived = bench.run(bench.engine.tokenArrived("new"));
    assert.deepEqual(ofType(arrived, "open"), [{ type: "open", connection: 2, token: "new" }]);
    assert.deepEqual(sent(bench.opened()), [{ type: "subscribe", job_id: JOB, after: 1 }]);
  });

  it("an upgrade refused with 401 fetches a token before the next try", () => {
    const bench = new Bench({ hasTokenSource: true });
    bench.run(bench.engine.start());
    bench.run(bench.engine.tokenArrived("stale"));
    bench.randoms = [0];
    bench.run(bench.engine.closed(bench.connection, 1006, "", 401));
    const due = bench.advance(0);
    assert.equal(ofType(due, "need_token").length, 1);
  });

  it("a socket that never opened counts as a failed attempt and stays 'connecting'", () => {
    const bench = new Bench();
    bench.run(bench.engine.start());
    const change = ofType(bench.closed(1006, "ECONNREFUSED"), "state")[0]!.change;
    assert.equal(change.state, "connecting");
    assert.match(change.reason, /could not connect/);
  });

  it("events of an old socket are ignored", () => {
    const bench = new Bench();
    bench.connect();
    bench.run(bench.engine.watch(1, JOB));
    bench.randoms = [0];
    bench.closed(1006);
    bench.advance(0);
    bench.opened();
    const stale = bench.run(bench.engine.frame(1, event(1)));
    assert.deepEqual(delivered(stale), []);
    const staleClose = bench.run(bench.engine.closed(1, 1006));
    assert.equal(ofType(staleClose, "state").length, 0);
  });

  it("close() ends watches, fails pending submits and reports closed", () => {
    const bench = new Bench();
    bench.connect();
    bench.run(bench.engine.watch(1, JOB));
    bench.run(bench.engine.submit("r1", { kind: "echo", params: {} }, { idempotencyKey: "k" }));
    const out = bench.run(bench.engine.close());
    assert.deepEqual(ofType(out, "close_socket")[0]!.code, 1000);
    assert.equal(ofType(out, "watch_end").length, 1);
    assert.equal(ofType(out, "submit_error")[0]!.error.code, "client_closed");
    assert.equal(ofType(out, "state")[0]!.change.state, "closed");
    assert.equal(ofType(bench.advance(100_000), "open").length, 0);
  });
});

describe("de-duplication and order", () => {
  it("delivers each (epoch, seq) once", () => {
    const bench = new Bench();
    bench.connect();
    bench.run(bench.engine.watch(1, JOB));
    const out = [1, 2, 2, 1, 3, 3].flatMap((seq) => bench.frame(event(seq)));
    assert.deepEqual(seqs(out, 1), [1, 2, 3]);
  });

  it("holds early events until the missing one arrives", () => {
    const bench = new Bench();
    bench.connect();
    bench.run(bench.engine.watch(1, JOB));
    const out = [1, 3, 4, 2, 5].flatMap((seq) => bench.frame(event(seq)));
    assert.deepEqual(seqs(out, 1), [1, 2, 3, 4, 5]);
  });

  it("reads the history again when a missing event does not come", () => {
    const bench = new Bench({ gapTimeoutMs: 2_000, pingIntervalMs: 60_000, pingTimeoutMs: 120_000 });
    bench.connect(null);
    bench.run(bench.engine.watch(1, JOB));
    bench.reset();
    bench.frame(event(1));
    bench.frame(event(3));
    assert.deepEqual(sent(bench.advance(1_999)), []);
    assert.deepEqual(sent(bench.advance(1)), [{ type: "subscribe", job_id: JOB, after: 1 }]);
    const replay = [event(2), event(3)].flatMap((e) => bench.frame(e));
    assert.deepEqual(seqs(replay, 1), [2, 3]);
  });

  it("an event of a higher epoch comes after every event of a lower one; lower epochs are void", () => {
    const bench = new Bench();
    bench.connect();
    bench.run(bench.engine.watch(1, JOB));
    const out = [event(1), event(2), event(3), event(2, "progress", 2), event(3, "progress", 1), event(3, "progress", 2)].flatMap(
      (e) => bench.frame(e),
    );
    assert.deepEqual(
      delivered(out, 1).map((item) => [item.epoch, item.seq]),
      [
        [1, 1],
        [1, 2],
        [1, 3],
        [2, 2],
        [2, 3],
      ],
    );
  });

  it("resumes with after_epoch once the job is past epoch 1", () => {
    const bench = new Bench();
    bench.connect();
    bench.run(bench.engine.watch(1, JOB));
    bench.frame(event(4, "progress", 2));
    bench.randoms = [0];
    bench.closed(1006);
    bench.advance(0);
    assert.deepEqual(sent(bench.opened()), [{ type: "subscribe", job_id: JOB, after: 4, after_epoch: 2 }]);
  });

  it("ends the watch at the terminal event and ignores what follows", () => {
    const bench = new Bench();
    bench.connect();
    bench.run(bench.engine.watch(1, JOB));
    const out = [event(1, "queued"), event(2, "completed"), event(3)].flatMap((e) => bench.frame(e));
    assert.deepEqual(seqs(out, 1), [1, 2]);
    assert.equal(ofType(out, "watch_end").length, 1);
    // A finished job is not subscribed again after a reconnect.
    bench.randoms = [0];
    bench.closed(1006);
    bench.advance(0);
    assert.deepEqual(sent(bench.opened()), []);
  });

  it("history_truncated: a snapshot, then the events from first_seq", () => {
    const bench = new Bench();
    bench.connect();
    bench.run(bench.engine.watch(1, JOB, { epoch: 1, seq: 2 }));
    const out = [
      { type: "history_truncated", job_id: JOB, after: 2, first_seq: 40, snapshot: snapshot(41) },
      event(40),
      event(41, "completed"),
    ].flatMap((frame) => bench.frame(frame));
    const items = delivered(out, 1);
    assert.equal(items[0]!.type, "snapshot");
    assert.equal(items[0]!.type === "snapshot" && items[0]!.first_seq, 40);
    assert.deepEqual(
      items.slice(1).map((item) => item.seq),
      [40, 41],
    );
  });

  it("watches of one job with different starting points each get their own events", () => {
    const bench = new Bench();
    bench.connect();
    bench.run(bench.engine.watch(1, JOB));
    bench.frame(event(1));
    bench.frame(event(2));
    const second = bench.run(bench.engine.watch(2, JOB, { epoch: 1, seq: 0 }));
    // The second watch needs the history again.
    assert.deepEqual(sent(second), [{ type: "subscribe", job_id: JOB, after: 0 }]);
    const out = [event(1), event(2), event(3)].flatMap((e) => bench.frame(e));
    assert.deepEqual(seqs(out, 1), [3]);
    assert.deepEqual(seqs(out, 2), [1, 2, 3]);
  });

  it("an error naming the job fails its watches", () => {
    const bench = new Bench();
    bench.connect();
    bench.run(bench.engine.watch(1, JOB));
    const out = bench.frame({ type: "error", job_id: JOB, code: "not_found", message: "no such job" });
    assert.deepEqual(ofType(out, "watch_error"), [{ type: "watch_error", watch: 1, error: { code: "not_found", message: "no such job" } }]);
  });

  it("unwatch sends unsubscribe when no reader of the job is left", () => {
    const bench = new Bench();
    bench.connect();
    bench.run(bench.engine.watch(1, JOB));
    bench.run(bench.engine.watch(2, JOB));
    assert.deepEqual(sent(bench.run(bench.engine.unwatch(1))), []);
    assert.deepEqual(sent(bench.run(bench.engine.unwatch(2))), [{ type: "unsubscribe", job_id: JOB }]);
  });
});

describe("submits", () => {
  const job = { kind: "echo", params: { hello: "world" } };

  it("sends the submit with its idempotency key and trace context; resolves on accepted", () => {
    const bench = new Bench();
    bench.connect();
    const out = bench.run(
      bench.engine.submit("r1", job, { idempotencyKey: "key-1", traceparent: `00-${TRACE}-00f067aa0ba902b7-01`, tracestate: "a=b" }),
    );
    assert.deepEqual(sent(out), [
      {
        type: "submit",
        request_id: "r1",
        job,
        idempotency_key: "key-1",
        traceparent: `00-${TRACE}-00f067aa0ba902b7-01`,
        tracestate: "a=b",
      },
    ]);
    const accepted = bench.frame({ type: "accepted", request_id: "r1", job_id: JOB, trace_id: TRACE });
    assert.deepEqual(ofType(accepted, "submitted"), [{ type: "submitted", submit: "r1", result: { job_id: JOB, trace_id: TRACE } }]);
  });

  it("waits for the connection, then sends", () => {
    const bench = new Bench();
    bench.run(bench.engine.start());
    assert.deepEqual(sent(bench.run(bench.engine.submit("r1", job, { idempotencyKey: "k" }))), []);
    assert.equal(sent(bench.opened()).length, 1);
  });

  it("re-sends a submit whose accepted never came, with the same key, after a reconnect", () => {
    const bench = new Bench();
    bench.connect();
    bench.run(bench.engine.submit("r1", job, { idempotencyKey: "key-1" }));
    bench.randoms = [0];
    bench.closed(1006);
    bench.advance(0);
    const resent = sent(bench.opened());
    assert.deepEqual(resent, [{ type: "submit", request_id: "r1", job, idempotency_key: "key-1" }]);
    // Accepted on the new session: resolved once, events delivered once.
    const out = [
      { type: "accepted", request_id: "r1", job_id: JOB, trace_id: TRACE },
      event(1, "queued"),
      event(2, "started"),
      event(1, "queued"),
    ].flatMap((frame) => bench.frame(frame));
    assert.equal(ofType(out, "submitted").length, 1);
    const watched = bench.run(bench.engine.watch(7, JOB));
    assert.deepEqual(seqs(watched, 7), [1, 2]);
  });

  it("does not re-send an accepted submit", () => {
    const bench = new Bench();
    bench.connect();
    bench.run(bench.engine.submit("r1", job, { idempotencyKey: "key-1" }));
    bench.frame({ type: "accepted", request_id: "r1", job_id: JOB, trace_id: TRACE });
    bench.randoms = [0];
    bench.closed(1006);
    bench.advance(0);
    // Only the job's resubscription, from where its buffer is.
    assert.deepEqual(sent(bench.opened()), [{ type: "subscribe", job_id: JOB, after: 0 }]);
  });

  it("an error for the request fails the submit", () => {
    const bench = new Bench();
    bench.connect();
    bench.run(bench.engine.submit("r1", { kind: "nope", params: {} }, { idempotencyKey: "k" }));
    const out = bench.frame({ type: "error", request_id: "r1", code: "unknown_kind", message: "no worker serves nope" });
    assert.deepEqual(ofType(out, "submit_error")[0]!.error, { code: "unknown_kind", message: "no worker serves nope" });
    bench.randoms = [0];
    bench.closed(1006);
    bench.advance(0);
    assert.deepEqual(sent(bench.opened()), []);
  });

  it("a watch after the submit gets the events that came before it, without a subscribe", () => {
    const bench = new Bench();
    bench.connect();
    bench.run(bench.engine.submit("r1", job, { idempotencyKey: "k" }));
    bench.frame({ type: "accepted", request_id: "r1", job_id: JOB, trace_id: TRACE });
    bench.frame(event(1, "queued"));
    bench.frame(event(2, "started"));
    const watched = bench.run(bench.engine.watch(1, JOB));
    assert.deepEqual(sent(watched), []);
    assert.deepEqual(seqs(watched, 1), [1, 2]);
    const rest = [event(3), event(4, "completed")].flatMap((e) => bench.frame(e));
    assert.deepEqual(seqs(rest, 1), [3, 4]);
    assert.equal(ofType(rest, "watch_end").length, 1);
  });

  it("a watch of a submitted job that already finished gets all of it and ends", () => {
    const bench = new Bench();
    bench.connect();
    bench.run(bench.engine.submit("r1", job, { idempotencyKey: "k" }));
    [
      { type: "accepted", request_id: "r1", job_id: JOB2, trace_id: TRACE },
      event(1, "queued", 1, JOB2),
      event(2, "completed", 1, JOB2),
    ].forEach((frame) => bench.frame(frame));
    const watched = bench.run(bench.engine.watch(1, JOB2));
    assert.deepEqual(seqs(watched, 1), [1, 2]);
    assert.equal(ofType(watched, "watch_end").length, 1);
  });
});

describe("liveness", () => {
  it("pings every ping_interval_ms of the hello", () => {
    const bench = new Bench();
    bench.connect();
    bench.frame(HELLO);
    bench.reset();
    assert.deepEqual(sent(bench.advance(14_999)), []);
    assert.deepEqual(sent(bench.advance(1)), [{ type: "ping" }]);
    bench.frame({ type: "pong" });
    assert.deepEqual(sent(bench.advance(15_000)), [{ type: "ping" }]);
  });

  it("closes and reconnects when nothing arrives for ping_timeout_ms", () => {
    const bench = new Bench();
    bench.connect();
    bench.frame(HELLO);
    bench.run(bench.engine.watch(1, JOB));
    bench.frame(event(1));
    bench.advance(15_000); // ping, never answered
    bench.randoms = [0];
    const dead = bench.advance(15_000);
    assert.deepEqual(ofType(dead, "close_socket").map((o) => o.code), [4000]);
    const change = ofType(dead, "state")[0]!.change;
    assert.equal(change.state, "reconnecting");
    assert.match(change.reason, /no frame/);
    assert.equal(ofType(bench.advance(0), "open").length, 1);
    assert.deepEqual(sent(bench.opened()), [{ type: "subscribe", job_id: JOB, after: 1 }]);
  });

  it("a quiet connection that answers pings stays open", () => {
    const bench = new Bench();
    bench.connect();
    bench.frame(HELLO);
    for (let i = 0; i < 10; i += 1) {
      const out = bench.advance(15_000);
      assert.deepEqual(sent(out), [{ type: "ping" }]);
      bench.frame({ type: "pong" });
      assert.equal(ofType(out, "close_socket").length, 0);
    }
  });

  it("uses the gateway's defaults without a hello (an older gateway)", () => {
    const bench = new Bench();
    bench.connect(null);
    assert.deepEqual(sent(bench.advance(20_000)), [{ type: "ping" }]);
    bench.advance(19_999);
    assert.deepEqual(ofType(bench.advance(1), "close_socket").map((o) => o.code), [4000]);
  });

  it("asks for the next tick with a timer output", () => {
    const bench = new Bench();
    const out = bench.connect();
    const timers = ofType(out, "timer");
    assert.equal(timers[timers.length - 1]!.at, bench.now + 20_000);
  });
});

describe("token refresh", () => {
  it("refreshes token_expires_in_ms minus the margin after hello, sends auth, takes auth_ok's new lifetime", () => {
    const bench = new Bench({ hasTokenSource: true, tokenRefreshMarginMs: 30_000 });
    bench.run(bench.engine.start());
    bench.run(bench.engine.tokenArrived("t1"));
    bench.opened();
    bench.frame({ ...HELLO, ping_interval_ms: 1_000_000, ping_timeout_ms: 2_000_000, token_expires_in_ms: 120_000 });
    bench.reset();
    assert.equal(ofType(bench.advance(89_999), "need_token").length, 0);
    assert.equal(ofType(bench.advance(1), "need_token").length, 1);
    const auth = sent(bench.run(bench.engine.tokenArrived("t2")));
    assert.deepEqual(auth, [{ type: "auth", token: "t2", request_id: "auth-1" }]);
    bench.frame({ type: "auth_ok", request_id: "auth-1", token_expires_in_ms: 60_000 });
    assert.equal(ofType(bench.advance(29_999), "need_token").length, 0);
    assert.equal(ofType(bench.advance(1), "need_token").length, 1);
  });

  it("a token shorter than twice the margin is refreshed half way", () => {
    const bench = new Bench({ hasTokenSource: true, tokenRefreshMarginMs: 30_000 });
    bench.run(bench.engine.start());
    bench.run(bench.engine.tokenArrived("t1"));
    bench.opened();
    bench.frame({ ...HELLO, token_expires_in_ms: 10_000 });
    assert.equal(ofType(bench.advance(4_999), "need_token").length, 0);
    assert.equal(ofType(bench.advance(1), "need_token").length, 1);
  });

  it("without a hello, refreshes from the token's own lifetime and sends auth without request_id", () => {
    const bench = new Bench({ hasTokenSource: true, tokenRefreshMarginMs: 5_000 });
    bench.run(bench.engine.start());
    bench.run(bench.engine.tokenArrived("t1", 20_000));
    bench.opened(null);
    assert.equal(ofType(bench.advance(14_999), "need_token").length, 0);
    assert.equal(ofType(bench.advance(1), "need_token").length, 1);
    assert.deepEqual(sent(bench.run(bench.engine.tokenArrived("t2", 20_000))), [{ type: "auth", token: "t2" }]);
  });

  it("a refused refresh asks again later, before the old token runs out", () => {
    const bench = new Bench({ hasTokenSource: true, tokenRefreshMarginMs: 30_000 });
    bench.run(bench.engine.start());
    bench.run(bench.engine.tokenArrived("t1"));
    bench.opened();
    bench.frame({ ...HELLO, ping_interval_ms: 1_000_000, ping_timeout_ms: 2_000_000, token_expires_in_ms: 120_000 });
    bench.advance(90_000);
    bench.run(bench.engine.tokenArrived("bad"));
    bench.frame({ type: "error", request_id: "auth-1", code: "unauthorized", message: "the token is for another owner" });
    assert.equal(ofType(bench.advance(5_000), "need_token").length, 1);
  });

  it("a reconnect after the token expired asks for a fresh one first", () => {
    const bench = new Bench({ hasTokenSource: true });
    bench.run(bench.engine.start());
    bench.run(bench.engine.tokenArrived("t1"));
    bench.opened();
    bench.frame({ ...HELLO, ping_interval_ms: 1_000_000, ping_timeout_ms: 2_000_000, token_expires_in_ms: 40_000 });
    bench.randoms = [0];
    bench.closed(1006);
    bench.now += 60_000;
    const out = bench.run(bench.engine.tick());
    assert.equal(ofType(out, "need_token").length, 1);
    assert.equal(ofType(out, "open").length, 0);
  });

  it("getToken failing before a connection counts as a failed attempt", () => {
    const bench = new Bench({ hasTokenSource: true });
    bench.run(bench.engine.start());
    bench.randoms = [0];
    const out = bench.run(bench.engine.tokenFailed("no session"));
    assert.equal(ofType(out, "state")[0]!.change.failures, 1);
    assert.equal(ofType(bench.advance(0), "need_token").length, 1);
  });
});

describe("handing over", () => {
  it("drain() returns unanswered submits and open watches with their positions", () => {
    const bench = new Bench();
    bench.connect();
    bench.run(bench.engine.watch(1, JOB));
    bench.frame(event(1));
    bench.frame(event(2));
    bench.run(bench.engine.submit("r1", { kind: "echo", params: {} }, { idempotencyKey: "k1" }));
    const { submits, watches } = bench.engine.drain();
    assert.deepEqual(submits.map((s) => s.idempotency_key), ["k1"]);
    assert.deepEqual(watches, [{ watch: 1, jobId: JOB, position: { epoch: 1, seq: 2 } }]);
  });
});

describe("timers", () => {
  it("a tick that came a little early names the same deadline again", () => {
    const bench = new Bench();
    bench.connect(null);
    const early = bench.advance(19_999);
    assert.deepEqual(ofType(early, "timer"), [{ type: "timer", at: bench.now + 1 }]);
  });
});

describe("errors with a field", () => {
  it("an invalid_params error keeps the field it names", () => {
    const bench = new Bench();
    bench.connect();
    bench.run(bench.engine.submit("r1", { kind: "mc_option_price", params: { strike: -1 } }, { idempotencyKey: "k" }));
    const out = bench.frame({
      type: "error",
      request_id: "r1",
      code: "invalid_params",
      message: "params.strike: -1 is less than the minimum of 0",
      field: "/strike",
    });
    assert.deepEqual(ofType(out, "submit_error")[0]!.error, {
      code: "invalid_params",
      message: "params.strike: -1 is less than the minimum of 0",
      field: "/strike",
    });
  });
});

describe("finished jobs", () => {
  const subscribed = (status: string, seq: number, epoch = 1, jobId = JOB) => ({
    type: "subscribed",
    job_id: jobId,
    status,
    epoch,
    seq,
  });

  it("a watch of a finished job from its last event ends at the gateway's subscribed", () => {
    const bench = new Bench();
    bench.connect();
    const watched = bench.run(bench.engine.watch(1, JOB, { epoch: 1, seq: 5 }));
    assert.deepEqual(sent(watched), [{ type: "subscribe", job_id: JOB, after: 5 }]);
    const out = bench.frame(subscribed("completed", 5));
    assert.deepEqual(ofType(out, "watch_end"), [{ type: "watch_end", watch: 1, job_id: JOB }]);
    assert.deepEqual(delivered(out), []);
    // The gateway does not watch the job: no unsubscribe, and nothing to
    // resume after a reconnect.
    assert.deepEqual(sent(bench.run(bench.engine.unwatch(1))), []);
    bench.randoms = [0];
    bench.closed(1006);
    bench.advance(0);
    assert.deepEqual(sent(bench.opened()), []);
  });

  it("a watch past the end, or in an earlier epoch than the end, ends too", () => {
    const bench = new Bench();
    bench.connect();
    bench.run(bench.engine.watch(1, JOB, { epoch: 1, seq: 9 }));
    bench.run(bench.engine.watch(2, JOB2, { epoch: 2, seq: 3 }));
    const out = [subscribed("failed", 5), subscribed("cancelled", 3, 2, JOB2)].flatMap((frame) => bench.frame(frame));
    assert.deepEqual(
      ofType(out, "watch_end").map((end) => end.watch),
      [1, 2],
    );
  });

  it("a finished job watched from before its end gets the rest and ends at the terminal event", () => {
    const bench = new Bench();
    bench.connect();
    bench.run(bench.engine.watch(1, JOB, { epoch: 1, seq: 2 }));
    const out = [subscribed("completed", 4), event(3), event(4, "completed")].flatMap((frame) => bench.frame(frame));
    assert.deepEqual(seqs(out, 1), [3, 4]);
    assert.equal(ofType(out, "watch_end").length, 1);
  });

  it("a job still going is followed as before", () => {
    const bench = new Bench();
    bench.connect();
    bench.run(bench.engine.watch(1, JOB, { epoch: 1, seq: 2 }));
    const out = [subscribed("running", 2), event(3)].flatMap((frame) => bench.frame(frame));
    assert.deepEqual(seqs(out, 1), [3]);
    assert.equal(ofType(out, "watch_end").length, 0);
  });

  it("a second watch past the end ends when the first one's replay reaches the terminal event", () => {
    const bench = new Bench();
    bench.connect();
    bench.run(bench.engine.watch(1, JOB));
    bench.frame(subscribed("completed", 2));
    // The session already streams the job: no subscribe of its own.
    assert.deepEqual(sent(bench.run(bench.engine.watch(2, JOB, { epoch: 1, seq: 2 }))), []);
    const out = [event(1, "queued"), event(2, "completed")].flatMap((frame) => bench.frame(frame));
    assert.deepEqual(seqs(out, 1), [1, 2]);
    assert.deepEqual(seqs(out, 2), []);
    assert.deepEqual(
      ofType(out, "watch_end").map((end) => end.watch),
      [1, 2],
    );
  });

  it("a submitted job's buffer that the gateway reports finished ends the watch that adopts it", () => {
    const bench = new Bench();
    bench.connect();
    bench.run(bench.engine.submit("r1", { kind: "echo", params: {} }, { idempotencyKey: "k" }));
    bench.frame({ type: "accepted", request_id: "r1", job_id: JOB, trace_id: TRACE });
    bench.frame(event(1, "queued"));
    bench.frame(event(2, "cancelled"));
    const watched = bench.run(bench.engine.watch(1, JOB, { epoch: 1, seq: 2 }));
    assert.deepEqual(seqs(watched, 1), []);
    assert.equal(ofType(watched, "watch_end").length, 1);
  });
});
