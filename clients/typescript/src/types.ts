// The wire types of jobgate's protocol, written from the JSON Schemas in
// proto-schemas/schemas (test/schemas.test.ts feeds every golden example
// there through the guards below, so the two cannot drift apart silently).

/** A job status (common.json#/$defs/status). */
export type JobStatus = "queued" | "running" | "completed" | "failed" | "cancelled";

/** The type of a job event (common.json#/$defs/event_type). */
export type EventType =
  | "queued"
  | "started"
  | "progress"
  | "retrying"
  | "completed"
  | "failed"
  | "cancelled";

export const TERMINAL_EVENTS: ReadonlySet<string> = new Set(["completed", "failed", "cancelled"]);

const JOB_STATUSES: ReadonlySet<string> = new Set(["queued", "running", "completed", "failed", "cancelled"]);
/** The statuses of a job that is over: nothing follows its last event. */
export const TERMINAL_STATUSES: ReadonlySet<string> = new Set(["completed", "failed", "cancelled"]);

/** common.json#/$defs/job_error */
export interface JobErrorInfo {
  code: string;
  message: string;
}

/** common.json#/$defs/job_progress */
export interface JobProgress {
  done: number;
  total: number;
  message?: string;
}

/** The `data` of each event type (event.json#/$defs). */
export interface EventDataMap {
  queued: { kind: string; queue: string; priority: number; run_at?: number };
  started: { attempt: number; worker: string };
  progress: JobProgress;
  retrying: {
    attempt: number;
    next_attempt: number;
    delay_ms?: number;
    requested_by?: string;
    error: JobErrorInfo;
  };
  completed: { result: unknown };
  failed: { attempt: number; error: JobErrorInfo };
  cancelled: { reason: string; attempt?: number };
}

/** One state change of a job (event.json). */
export type JobEvent = {
  [E in EventType]: {
    type: "event";
    job_id: string;
    seq: number;
    epoch: number;
    event: E;
    data: EventDataMap[E];
    ts: number;
    trace_id: string;
  };
}[EventType];

/** The state of a job (job_snapshot.json). */
export interface JobSnapshot {
  job_id: string;
  kind: string;
  queue: string;
  status: JobStatus;
  priority: number;
  attempt: number;
  max_attempts: number;
  timeout_s: number;
  seq: number;
  epoch: number;
  progress: JobProgress | null;
  result: unknown;
  error: JobErrorInfo | null;
  created_at: number;
  started_at: number | null;
  finished_at: number | null;
  updated_at: number | null;
  trace_id: string;
  cancel_requested?: boolean;
  run_at?: number;
}

/** history_truncated.json: the history no longer holds what was asked. */
export interface HistoryTruncated {
  type?: "history_truncated";
  job_id: string;
  after: number;
  first_seq: number;
  snapshot: JobSnapshot;
}

/**
 * What a watch delivers in place of events the history no longer holds:
 * the job's current state; the events from `first_seq` on follow.
 */
export interface SnapshotEvent {
  type: "snapshot";
  job_id: string;
  snapshot: JobSnapshot;
  first_seq: number;
  /** So `ev.seq` / `ev.event` read naturally in a loop over a watch. */
  seq: number;
  epoch: number;
  event: "snapshot";
  data: JobSnapshot;
}

/** What `watch()` yields. */
export type WatchItem = JobEvent | SnapshotEvent;

/** submit_request.json */
export interface JobRequest {
  kind: string;
  params: Record<string, unknown>;
  priority?: number;
  max_attempts?: number;
  timeout_s?: number;
  delay_ms?: number;
  run_at?: number;
}

/** submit_response.json (HTTP) / the `accepted` frame (WebSocket). */
export interface Submitted {
  job_id: string;
  trace_id: string;
}

/** job_list.json */
export interface JobList {
  jobs: JobSnapshot[];
  next_cursor: string | null;
}

/** One kind of `GET /v1/kinds` (kinds.json). */
export interface Kind {
  kind: string;
  queue: string;
  params_schema: Record<string, unknown> | null;
}

/** error_body.json: every HTTP error body and WebSocket error frame. */
export interface ErrorBody {
  code: string;
  message: string;
  field?: string;
}

/** Session limits announced by `hello`. */
export interface SessionLimits {
  max_subscriptions?: number;
  messages_per_s?: number;
  max_message_bytes?: number;
  outbound_queue?: number;
}

/** Server → client WebSocket frames (ws_server_message.json). */
export interface HelloFrame {
  type: "hello";
  protocol: string;
  session_id: string;
  ping_interval_ms: number;
  ping_timeout_ms: number;
  token_expires_in_ms?: number | null;
  limits?: SessionLimits;
}
export interface AuthOkFrame {
  type: "auth_ok";
  request_id?: string;
  token_expires_in_ms?: number | null;
}
export interface AcceptedFrame {
  type: "accepted";
  request_id: string;
  job_id: string;
  trace_id: string;
}
export interface ErrorFrame {
  type: "error";
  request_id?: string;
  job_id?: string;
  code: string;
  message: string;
  field?: string;
}
export interface PongFrame {
  type: "pong";
}
/**
 * The answer to a `subscribe` on a jobgate.v1 session, before the events it
 * replays: the job's status and its last event's position then. Terminal,
 * at or before the subscribe's `after`: nothing more comes for the job.
 */
export interface SubscribedFrame {
  type: "subscribed";
  job_id: string;
  status: JobStatus;
  epoch: number;
  seq: number;
}
export type HistoryTruncatedFrame = HistoryTruncated & { type: "history_truncated" };
export type ServerFrame =
  | HelloFrame
  | AuthOkFrame
  | AcceptedFrame
  | JobEvent
  | ErrorFrame
  | PongFrame
  | HistoryTruncatedFrame
  | SubscribedFrame;

/** Client → server WebSocket frames (ws_client_message.json). */
export type ClientFrame =
  | {
      type: "submit";
      request_id: string;
      job: JobRequest;
      traceparent?: string;
      tracestate?: string;
      idempotency_key?: string;
    }
  | { type: "subscribe"; job_id: string; after?: number; after_epoch?: number }
  | { type: "unsubscribe"; job_id: string }
  | { type: "cancel"; job_id: string; request_id?: string }
  | { type: "auth"; token: string; request_id?: string }
  | { type: "ping" };

/** The WebSocket subprotocol that asks for `hello` and `auth_ok`. */
export const SUBPROTOCOL = "jobgate.v1";

// ---- guards: structural checks of what the gateway sends ----

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}
function isString(value: unknown): value is string {
  return typeof value === "string";
}
function isCount(value: unknown, minimum: number): value is number {
  return typeof value === "number" && Number.isInteger(value) && value >= minimum;
}
function isOptional(value: unknown, check: (v: unknown) => boolean): boolean {
  return value === undefined || check(value);
}

const EVENT_TYPES: ReadonlySet<string> = new Set([
  "queued",
  "started",
  "progress",
  "retrying",
  "completed",
  "failed",
  "cancelled",
]);

export function isJobEvent(value: unknown): value is JobEvent {
  return (
    isObject(value) &&
    value.type === "event" &&
    isString(value.job_id) &&
    isCount(value.seq, 1) &&
    // Protocol 1 events carry no epoch: read as epoch 1 (see normalizeEvent).
    isOptional(value.epoch, (epoch) => isCount(epoch, 1)) &&
    isString(value.event) &&
    EVENT_TYPES.has(value.event) &&
    isObject(value.data) &&
    isCount(value.ts, 0) &&
    isString(value.trace_id)
  );
}

export function isJobSnapshot(value: unknown): value is JobSnapshot {
  return (
    isObject(value) &&
    isString(value.job_id) &&
    isString(value.kind) &&
    isString(value.status) &&
    isCount(value.seq, 0) &&
    isOptional(value.epoch, (epoch) => isCount(epoch, 1)) &&
    isString(value.trace_id)
  );
}

export function isHistoryTruncated(value: unknown): value is HistoryTruncated {
  return (
    isObject(value) &&
    isOptional(value.type, (type) => type === "history_truncated") &&
    isString(value.job_id) &&
    isCount(value.after, 0) &&
    isCount(value.first_seq, 1) &&
    isJobSnapshot(value.snapshot)
  );
}

/**
 * Reads one server frame; `null` for anything that is not a frame this
 * client knows (unknown frames are ignored, so a newer gateway's additions
 * do not break an older client).
 */
export function parseServerFrame(value: unknown): ServerFrame | null {
  if (!isObject(value) || !isString(value.type)) {
    return null;
  }
  switch (value.type) {
    case "hello":
      return isString(value.protocol) &&
        isString(value.session_id) &&
        isCount(value.ping_interval_ms, 1) &&
        isCount(value.ping_timeout_ms, 1) &&
        isOptional(value.token_expires_in_ms, (ms) => ms === null || isCount(ms, 0))
        ? (value as unknown as HelloFrame)
        : null;
    case "auth_ok":
      return isOptional(value.request_id, isString) &&
        isOptional(value.token_expires_in_ms, (ms) => ms === null || isCount(ms, 0))
        ? (value as unknown as AuthOkFrame)
        : null;
    case "accepted":
      return isString(value.request_id) && isString(value.job_id) && isString(value.trace_id)
        ? (value as unknown as AcceptedFrame)
        : null;
    case "event":
      return isJobEvent(value) ? normalizeEvent(value) : null;
    case "error":
      return isString(value.code) &&
        isString(value.message) &&
        isOptional(value.request_id, isString) &&
        isOptional(value.job_id, isString)
        ? (value as unknown as ErrorFrame)
        : null;
    case "pong":
      return { type: "pong" };
    case "history_truncated":
      return isHistoryTruncated(value) ? (value as HistoryTruncatedFrame) : null;
    case "subscribed":
      return isString(value.job_id) &&
        isString(value.status) &&
        JOB_STATUSES.has(value.status) &&
        isCount(value.epoch, 1) &&
        isCount(value.seq, 0)
        ? (value as unknown as SubscribedFrame)
        : null;
    default:
      return null;
  }
}

/** An event as this client hands it out: `epoch` always present. */
export function normalizeEvent(event: JobEvent): JobEvent {
  return event.epoch === undefined ? { ...event, epoch: 1 } : event;
}

export function isTerminal(event: { event: string }): boolean {
  return TERMINAL_EVENTS.has(event.event);
}
