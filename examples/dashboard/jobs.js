// A job as the dashboard shows it, without the DOM: its events kept once
// each in (epoch, seq) order whatever order they arrive in (a watch and the
// owner feed may both deliver one), and its state folded from its latest
// snapshot and the events after it. tests/browser/jobs.test.mjs tests it.

export const TERMINAL = new Set(["completed", "failed", "cancelled"]);

/// An event or snapshot without `epoch` (written by protocol 1) is of epoch 1.
export function epochOf(x) {
  return Number.isInteger(x.epoch) && x.epoch >= 1 ? x.epoch : 1;
}

/// Negative when a comes before b in a job's (epoch, seq) order.
export function compare(a, b) {
  return epochOf(a) - epochOf(b) || a.seq - b.seq;
}

/// Inserts the event into the sorted list; false when it is already there.
export function addEvent(events, event) {
  let index = events.length;
  while (index > 0 && compare(events[index - 1], event) > 0) index -= 1;
  if (index > 0 && compare(events[index - 1], event) === 0) return false;
  events.splice(index, 0, event);
  return true;
}

/// The later of two snapshots by position (the second wins a tie: it was read later).
export function laterSnapshot(current, next) {
  if (!current) return next;
  return compare(next, current) >= 0 ? next : current;
}

function apply(state, event) {
  const data = event.data || {};
  if (event.trace_id) state.trace_id = event.trace_id;
  switch (event.event) {
    case "queued": state.status = "queued"; state.kind = data.kind || state.kind; break;
    case "started": state.status = "running"; state.attempt = data.attempt; state.error = null; break;
    case "progress": state.status = "running"; state.progress = data; break;
    case "retrying": state.status = "queued"; state.attempt = data.attempt; state.error = data.error || null; break;
    case "completed": state.status = "completed"; state.result = data.result; state.error = null; break;
    case "failed": state.status = "failed"; state.error = data.error || null; break;
    case "cancelled": state.status = "cancelled"; break;
    default:
  }
}

/// What the row shows: the snapshot, then every event after its position.
export function summarize(snapshot, events, fallback) {
  const state = {
    kind: null, status: null, attempt: 0, progress: null, result: undefined, error: null,
    trace_id: null, cancel_requested: false, ...fallback,
  };
  let base = { epoch: 1, seq: 0 };
  if (snapshot) {
    Object.assign(state, {
      kind: snapshot.kind, status: snapshot.status, attempt: snapshot.attempt, progress: snapshot.progress,
      result: snapshot.result === null ? undefined : snapshot.result, error: snapshot.error,
      trace_id: snapshot.trace_id || state.trace_id, cancel_requested: snapshot.cancel_requested === true,
    });
    if (Number.isInteger(snapshot.seq)) base = snapshot;
  }
  for (const event of events) if (compare(event, base) > 0) apply(state, event);
  return state;
}

/// How far along: `{done, total}` or null when the job reports no progress.
export function progressOf(state) {
  if (state.progress && state.progress.total > 0) {
    return { done: Math.min(state.progress.done, state.progress.total), total: state.progress.total };
  }
  return state.status === "completed" ? { done: 1, total: 1 } : null;
}
