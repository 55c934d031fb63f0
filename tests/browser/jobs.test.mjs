// A job's events and state as the dashboard keeps them
// (examples/dashboard/jobs.js), in Node.
import assert from "node:assert/strict";
import { test } from "node:test";
import { addEvent, laterSnapshot, progressOf, summarize } from "../../examples/dashboard/jobs.js";

const ev = (seq, event, data = {}, epoch = 1) => ({ type: "event", job_id: "j", seq, epoch, event, data, trace_id: "t" });

test("events are kept once each, in (epoch, seq) order whatever order they come in", () => {
  const events = [];
  for (const e of [ev(2, "started"), ev(1, "queued"), ev(2, "started"), ev(4, "progress"), ev(3, "progress"), ev(3, "progress", {}, 2)]) {
    addEvent(events, e);
  }
  assert.deepEqual(events.map((e) => e.epoch + ":" + e.seq), ["1:1", "1:2", "1:3", "1:4", "2:3"]);
  assert.equal(addEvent(events, ev(4, "progress")), false);
  assert.equal(addEvent(events, { ...ev(1, "queued"), epoch: undefined }), false, "no epoch is epoch 1");
});

test("the state is the snapshot and the events after it", () => {
  const events = [ev(1, "queued", { kind: "k" }), ev(2, "started", { attempt: 1 }), ev(3, "progress", { done: 1, total: 4 })];
  assert.deepEqual(
    (({ kind, status, attempt, progress }) => ({ kind, status, attempt, progress }))(summarize(null, events)),
    { kind: "k", status: "running", attempt: 1, progress: { done: 1, total: 4 } },
  );
  const snapshot = { seq: 4, epoch: 1, kind: "k", status: "running", attempt: 1, progress: { done: 2, total: 4 }, result: null,
    error: null, trace_id: "t", cancel_requested: true };
  const state = summarize(snapshot, events);
  assert.deepEqual(state.progress, { done: 2, total: 4 }, "events the snapshot already holds are not applied again");
  assert.equal(state.cancel_requested, true);
  const done = summarize(snapshot, [...events, ev(5, "completed", { result: { price: 1 } })]);
  assert.equal(done.status, "completed");
  assert.deepEqual(done.result, { price: 1 });
  assert.deepEqual(progressOf(done), { done: 2, total: 4 });
  assert.deepEqual(progressOf(summarize(null, [ev(1, "completed", { result: 1 })])), { done: 1, total: 1 });
  assert.equal(progressOf(summarize(null, [ev(1, "queued")])), null);
});

test("a later epoch comes after every event of an earlier one", () => {
  const events = [];
  for (const e of [ev(3, "progress", { done: 1, total: 2 }), ev(3, "progress", { done: 2, total: 2 }, 2), ev(4, "completed", {}, 2)]) {
    addEvent(events, e);
  }
  const state = summarize(null, events);
  assert.equal(state.status, "completed");
  assert.deepEqual(state.progress, { done: 2, total: 2 });
});

test("the later snapshot wins", () => {
  const a = { seq: 3, epoch: 1 };
  const b = { seq: 2, epoch: 2 };
  assert.equal(laterSnapshot(null, a), a);
  assert.equal(laterSnapshot(a, b), b);
  assert.equal(laterSnapshot(b, a), b);
});
