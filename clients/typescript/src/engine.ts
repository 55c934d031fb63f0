// The protocol engine of one WebSocket session, with no I/O and no timers:
// it takes inputs (the socket opened, a frame, the socket closed, the clock,
// the app's commands, a token) and returns outputs (open a socket, send a
// frame, close it, deliver an event, ask for a token, wake me at…). The
// transport (transport/websocket.ts) only moves bytes and sets one timer.
// Everything that decides — backoff, resume positions, de-duplication and
// order, token refresh, dead-connection detection, re-sending submits — is
// here, so it is tested with a fake clock and no socket, and ports to other
// languages line by line.

import { backoffDelay, type BackoffOptions, DEFAULT_BACKOFF } from "./backoff.js";
import { comparePositions, EventOrder, MAX_HELD_EVENTS, type Position, START } from "./order.js";
import { type Reader, Readers } from "./readers.js";
import {
  type ClientFrame,
  type ErrorBody,
  type HistoryTruncated,
  isTerminal,
  type JobEvent,
  type JobRequest,
  parseServerFrame,
  type ServerFrame,
  type Submitted,
  type SubscribedFrame,
  SUBPROTOCOL,
  TERMINAL_STATUSES,
  type WatchItem,
} from "./types.js";

export type ConnectionState = "connecting" | "connected" | "reconnecting" | "closed";

/** A change of the connection state, with why. */
export interface StateChange {
  state: ConnectionState;
  /** Short, human-readable: "connected", "closed by server (4008 slow consumer)", … */
  reason: string;
  /** The close code that caused the change, if any. */
  code?: number;
  /** When reconnecting: how long the engine waits before the next try, ms. */
  retryInMs?: number;
  /** Consecutive failed connection attempts so far. */
  failures?: number;
}

export type LogLevel = "debug" | "info" | "warn" | "error";

export type Output =
  /** Open a socket now (with this token, if any). Events of it carry `connection`. */
  | { type: "open"; connection: number; token: string | null }
  | { type: "send"; connection: number; frame: ClientFrame }
  /** Close the socket; the engine already treats it as gone. */
  | { type: "close_socket"; connection: number; code: number; reason: string }
  /** Call getToken() and pass the result to tokenArrived() / tokenFailed(). */
  | { type: "need_token"; reason: string }
  | { type: "deliver"; watch: number; item: WatchItem }
  /** The watch saw its job's terminal event (or the client closed). */
  | { type: "watch_end"; watch: number; job_id: string }
  | { type: "watch_error"; watch: number; error: ErrorBody }
  | { type: "submitted"; submit: string; result: Submitted }
  | { type: "submit_error"; submit: string; error: ErrorBody }
  | { type: "state"; change: StateChange }
  /** Call tick() at this time (engine clock, ms); null: no timer needed. */
  | { type: "timer"; at: number | null }
  | { type: "log"; level: LogLevel; message: string; fields?: Record<string, unknown> };

export interface EngineOptions {
  clock: () => number;
  random: () => number;
  backoff?: Partial<BackoffOptions>;
  /** Refresh the token this long before it expires (default 30 s). */
  tokenRefreshMarginMs?: number;
  /** Whether there is a getToken(); without it the engine never asks. */
  hasTokenSource?: boolean;
  /** Used until (or without) a `hello`. */
  pingIntervalMs?: number;
  pingTimeoutMs?: number;
  /** How long an early event may wait for a missing one before the history is read again. */
  gapTimeoutMs?: number;
  /** Events buffered for a submitted job nobody watches yet. */
  maxBufferedJobs?: number;
}

/** The gateway's defaults (JOBGATE_WS_PING_INTERVAL_S = 20, unanswered for as long). */
export const DEFAULT_PING_INTERVAL_MS = 20_000;
export const DEFAULT_PING_TIMEOUT_MS = 40_000;
export const DEFAULT_TOKEN_REFRESH_MARGIN_MS = 30_000;
export const DEFAULT_GAP_TIMEOUT_MS = 2_000;
export const DEFAULT_MAX_BUFFERED_JOBS = 256;
/** Events kept for one submitted job nobody watches yet. */
const MAX_BUFFERED_ITEMS = 10_000;
/** When a refresh failed: wait this long before asking for a token again. */
const TOKEN_RETRY_MS = 5_000;

/** Close codes (PROTOCOL.md, "Sessions"). */
export const CLOSE_NORMAL = 1000;
export const CLOSE_GOING_AWAY = 1001;
export const CLOSE_PING_TIMEOUT = 4000;
export const CLOSE_TOKEN_EXPIRED = 4001;
export const CLOSE_SLOW_CONSUMER = 4008;

const CLOSE_NAMES: Record<number, string> = {
  1000: "normal",
  1001: "gateway going away",
  1006: "connection lost",
  1011: "gateway error",
  4000: "ping unanswered",
  4001: "token expired",
  4008: "slow consumer",
};

type Phase = "idle" | "awaiting_token" | "opening" | "open" | "waiting" | "closed";

interface PendingSubmit {
  requestId: string;
  frame: Extract<ClientFrame, { type: "submit" }>;
  /** The connection it was last sent on. */
  sentOn: number | null;
}

export class Engine {
  private readonly clock: () => number;
  private readonly random: () => number;
  private readonly backoff: BackoffOptions;
  private readonly refreshMarginMs: number;
  private readonly hasTokenSource: boolean;
  private readonly defaultPingIntervalMs: number;
  private readonly defaultPingTimeoutMs: number;
  private readonly gapTimeoutMs: number;
  private readonly maxBufferedJobs: number;

  private phase: Phase = "idle";
  private connection = 0;
  private everConnected = false;
  private failures = 0;
  private state: ConnectionState = "connecting";
  private outputs: Output[] = [];
  /** The last timer output; undefined: none asked for since the last tick. */
  private lastTimer: number | null | undefined = null;

  // The session.
  private protocol: string | null = null;
  private pingIntervalMs: number;
  private pingTimeoutMs: number;
  private lastFrameAt = 0;
  private nextPingAt: number | null = null;
  private reconnectAt: number | null = null;
  /** Jobs the gateway is sending this session, with the position it was asked for. */
  private subscribed = new Map<string, Position>();

  // The token.
  private token: string | null = null;
  private tokenStale = true;
  private tokenRequested = false;
  private tokenExpiresAt: number | null = null;
  private refreshAt: number | null = null;
  private authCount = 0;
  private pendingAuth: string | null = null;

  // The app's work.
  private readonly readers = new Readers();
  private nextBufferId = -1;
  private readonly submits = new Map<string, PendingSubmit>();

  constructor(options: EngineOptions) {
    this.clock = options.clock;
    this.random = options.random;
    this.backoff = { ...DEFAULT_BACKOFF, ...options.backoff };
    this.refreshMarginMs = options.tokenRefreshMarginMs ?? DEFAULT_TOKEN_REFRESH_MARGIN_MS;
    this.hasTokenSource = options.hasTokenSource ?? false;
    this.defaultPingIntervalMs = options.pingIntervalMs ?? DEFAULT_PING_INTERVAL_MS;
    this.defaultPingTimeoutMs = options.pingTimeoutMs ?? DEFAULT_PING_TIMEOUT_MS;
    this.pingIntervalMs = this.defaultPingIntervalMs;
    this.pingTimeoutMs = this.defaultPingTimeoutMs;
    this.gapTimeoutMs = options.gapTimeoutMs ?? DEFAULT_GAP_TIMEOUT_MS;
    this.maxBufferedJobs = options.maxBufferedJobs ?? DEFAULT_MAX_BUFFERED_JOBS;
    this.tokenStale = this.hasTokenSource;
  }

  get connectionState(): ConnectionState {
    return this.state;
  }

  /** Consecutive failed connection attempts (reset by a successful open). */
  get consecutiveFailures(): number {
    return this.failures;
  }

  get hasConnected(): boolean {
    return this.everConnected;
  }

  /** The session's negotiated subprotocol (null: none, an older gateway). */
  get sessionProtocol(): string | null {
    return this.protocol;
  }

  // ---- inputs ----

  /** Starts connecting. */
  start(): Output[] {
    if (this.phase === "idle") {
      this.connectNow();
    }
    return this.flush();
  }

  /** The socket of `connection` opened; `protocol` is the subprotocol the server chose. */
  opened(connection: number, protocol: string | null): Output[] {
    if (connection !== this.connection || this.phase !== "opening") {
      return this.flush();
    }
    const now = this.clock();
    this.phase = "open";
    this.protocol = protocol === SUBPROTOCOL ? protocol : null;
    this.failures = 0;
    this.pingIntervalMs = this.defaultPingIntervalMs;
    this.pingTimeoutMs = this.defaultPingTimeoutMs;
    this.lastFrameAt = now;
    this.nextPingAt = now + this.pingIntervalMs;
    this.reconnectAt = null;
    this.pendingAuth = null;
    const reason = this.everConnected ? "reconnected" : "connected";
    this.everConnected = true;
    this.setState({ state: "connected", reason });
    this.subscribed.clear();
    this.resubscribe();
    for (const submit of this.submits.values()) {
      this.sendSubmit(submit);
    }
    if (this.protocol === null) {
      // No hello will come: what we know of the token (its own exp) must do.
      this.scheduleRefresh(now);
    }
    return this.flush();
  }

  /** A text frame of `connection`, parsed as JSON. */
  frame(connection: number, value: unknown): Output[] {
    if (connection !== this.connection || this.phase !== "open") {
      return this.flush();
    }
    this.lastFrameAt = this.clock();
    const frame = parseServerFrame(value);
    if (frame === null) {
      this.log("debug", "ignored a frame this client does not know", { frame: value });
    } else {
      this.handleFrame(frame);
    }
    return this.flush();
  }

  /** The socket of `connection` closed (or never opened: `httpStatus` of a refused upgrade). */
  closed(connection: number, code: number, reason = "", httpStatus?: number): Output[] {
    if (connection !== this.connection || (this.phase !== "open" && this.phase !== "opening")) {
      return this.flush();
    }
    const wasOpen = this.phase === "open";
    this.dropSession();
    const name = CLOSE_NAMES[code] ?? "closed";
    let text: string;
    if (httpStatus !== undefined) {
      text = `connection refused (HTTP ${httpStatus})`;
    } else if (!wasOpen) {
      text = `could not connect${reason ? `: ${reason}` : ""}`;
    } else {
      text = `closed by server (${code} ${name}${reason ? `: ${reason}` : ""})`;
    }
    if (code === CLOSE_TOKEN_EXPIRED || httpStatus === 401) {
      this.tokenStale = true;
    }
    const immediate = wasOpen && (code === CLOSE_SLOW_CONSUMER || code === CLOSE_TOKEN_EXPIRED);
    this.scheduleReconnect(text, code, immediate);
    return this.flush();
  }

  /** The clock moved: fire what is due. */
  tick(): Output[] {
    const now = this.clock();
    if (this.phase === "waiting" && this.reconnectAt !== null && now >= this.reconnectAt) {
      this.reconnectAt = null;
      this.connectNow();
    }
    if (this.phase === "open") {
      if (now - this.lastFrameAt >= this.pingTimeoutMs) {
        const silentFor = now - this.lastFrameAt;
        this.emit({
          type: "close_socket",
          connection: this.connection,
          code: CLOSE_PING_TIMEOUT,
          reason: "no frame from the gateway",
        });
        this.dropSession();
        this.scheduleReconnect(`connection dead (no frame for ${silentFor} ms)`, CLOSE_PING_TIMEOUT, false);
      } else {
        if (this.nextPingAt !== null && now >= this.nextPingAt) {
          this.send({ type: "ping" });
          this.nextPingAt = now + this.pingIntervalMs;
        }
        this.checkGaps(now);
      }
    }
    if (this.refreshAt !== null && now >= this.refreshAt && this.phase === "open") {
      this.refreshAt = null;
      this.requestToken("token expires soon");
    }
    // The caller's timer has fired (maybe a little early): always name the next one.
    this.lastTimer = undefined;
    return this.flush();
  }

  /** A token from getToken(); `expiresInMs` if the caller knows its lifetime (a JWT's exp). */
  tokenArrived(token: string, expiresInMs?: number | null): Output[] {
    const now = this.clock();
    this.tokenRequested = false;
    this.token = token;
    this.tokenStale = false;
    this.tokenExpiresAt = expiresInMs === undefined || expiresInMs === null ? null : now + expiresInMs;
    if (this.phase === "awaiting_token") {
      this.open();
    } else if (this.phase === "open") {
      this.authCount += 1;
      const requestId = `auth-${this.authCount}`;
      this.pendingAuth = requestId;
      this.send(
        this.protocol === null
          ? { type: "auth", token }
          : { type: "auth", token, request_id: requestId },
      );
      // A jobgate.v1 session answers auth_ok with the new lifetime; until
      // then (or without one) the token's own expiry schedules the next.
      this.scheduleRefresh(now);
    }
    return this.flush();
  }

  /** getToken() failed. */
  tokenFailed(message: string): Output[] {
    this.tokenRequested = false;
    this.log("warn", "getToken failed", { error: message });
    if (this.phase === "awaiting_token") {
      // Counted as a failed connection attempt.
      this.scheduleReconnect(`getToken failed: ${message}`, undefined, false);
    } else if (this.phase === "open") {
      this.refreshAt = this.clock() + TOKEN_RETRY_MS;
    }
    return this.flush();
  }

  /** Submits a job; answered by `submitted` or `submit_error` with the same id. */
  submit(
    requestId: string,
    job: JobRequest,
    options: { idempotencyKey: string; traceparent?: string; tracestate?: string },
  ): Output[] {
    const frame: Extract<ClientFrame, { type: "submit" }> = {
      type: "submit",
      request_id: requestId,
      job,
      idempotency_key: options.idempotencyKey,
    };
    if (options.traceparent !== undefined) {
      frame.traceparent = options.traceparent;
    }
    if (options.tracestate !== undefined) {
      frame.tracestate = options.tracestate;
    }
    const pending: PendingSubmit = { requestId, frame, sentOn: null };
    this.submits.set(requestId, pending);
    if (this.phase === "open") {
      this.sendSubmit(pending);
    }
    return this.flush();
  }

  /** The app gave up on a submit (its accepted, if it comes, is ignored). */
  forgetSubmit(requestId: string): Output[] {
    this.submits.delete(requestId);
    return this.flush();
  }

  /**
   * Watches a job from after `after` (default: the events buffered since
   * its submit on this client, else the whole history).
   */
  watch(watchId: number, jobId: string, after?: Position): Output[] {
    const buffered = this.readers.bufferOf(jobId);
    if (buffered !== undefined) {
      this.adopt(buffered, watchId, after ?? START);
      return this.flush();
    }
    // Where the session's stream of the job is: the other readers' earliest.
    const streamAt = this.subscribed.has(jobId) ? this.readers.resumePosition(jobId) : null;
    const reader: Reader = {
      id: watchId,
      jobId,
      order: new EventOrder(after ?? START),
      buffer: null,
      ended: false,
      gapSince: null,
    };
    this.readers.set(reader);
    if (this.phase === "open" && (streamAt === null || comparePositions(reader.order.position, streamAt) < 0)) {
      this.subscribe(jobId, reader.order.position);
    }
    return this.flush();
  }

  /** A watch takes over a submitted job's buffer: its events so far (after `after`), then live ones. */
  private adopt(buffered: Reader, watchId: number, after: Position): void {
    this.readers.delete(buffered.id);
    const order = new EventOrder(after);
    const reader: Reader = { id: watchId, jobId: buffered.jobId, order, buffer: null, ended: false, gapSince: null };
    this.readers.set(reader);
    for (const item of buffered.buffer ?? []) {
      if (item.type === "snapshot") {
        const snapshot = order.truncated({ job_id: item.job_id, after: after.seq, first_seq: item.first_seq, snapshot: item.snapshot });
        if (snapshot !== null) {
          this.give(reader, snapshot);
        }
        continue;
      }
      for (const due of order.offer(item)) {
        this.give(reader, due);
        if (isTerminal(due)) {
          this.end(reader);
          return;
        }
      }
    }
    if (buffered.ended) {
      // The job is over and the watch asked for nothing before its end.
      this.end(reader);
      return;
    }
    if (buffered.order.heldCount > 0) {
      // Early events stayed with the buffer: read them again.
      this.resync(reader.jobId);
    }
  }

  /** Stops a watch (the app broke out of its loop, or aborted it). */
  unwatch(watchId: number): Output[] {
    const reader = this.readers.get(watchId);
    if (reader !== undefined) {
      this.readers.delete(watchId);
      this.releaseJob(reader.jobId);
    }
    return this.flush();
  }

  /** The browser came back online or visible: retry at once, backoff from the start. */
  online(): Output[] {
    this.failures = 0;
    if (this.phase === "waiting") {
      this.reconnectAt = null;
      this.connectNow();
    } else if (this.phase === "open") {
      // The connection may have died while the device slept: prove it.
      this.send({ type: "ping" });
    }
    return this.flush();
  }

  /** Closes for good: open watches end, pending submits fail. */
  close(): Output[] {
    if (this.phase === "closed") {
      return this.flush();
    }
    if (this.phase === "open" || this.phase === "opening") {
      this.emit({
        type: "close_socket",
        connection: this.connection,
        code: CLOSE_NORMAL,
        reason: "client closed",
      });
    }
    this.dropSession();
    this.phase = "closed";
    this.reconnectAt = null;
    this.refreshAt = null;
    for (const reader of this.readers.all()) {
      if (reader.buffer === null) {
        this.emit({ type: "watch_end", watch: reader.id, job_id: reader.jobId });
      }
    }
    this.readers.clear();
    for (const submit of this.submits.values()) {
      this.emit({
        type: "submit_error",
        submit: submit.requestId,
        error: { code: "client_closed", message: "the client was closed before the job was accepted" },
      });
    }
    this.submits.clear();
    this.setState({ state: "closed", reason: "closed by the app", code: CLOSE_NORMAL });
    return this.flush();
  }

  /**
   * Hands over what is left to do (to another transport): submits not yet
   * accepted, and the app's watches with their positions. The engine stops.
   */
  drain(): { submits: Extract<ClientFrame, { type: "submit" }>[]; watches: { watch: number; jobId: string; position: Position }[] } {
    const submits = [...this.submits.values()].map((submit) => submit.frame);
    const watches = this.readers.all()
      .filter((reader) => reader.buffer === null && !reader.ended)
      .map((reader) => ({ watch: reader.id, jobId: reader.jobId, position: reader.order.position }));
    if (this.phase === "open" || this.phase === "opening") {
      this.emit({ type: "close_socket", connection: this.connection, code: CLOSE_NORMAL, reason: "switching transport" });
    }
    this.dropSession();
    this.phase = "closed";
    this.reconnectAt = null;
    this.refreshAt = null;
    this.submits.clear();
    this.readers.clear();
    this.flush();
    return { submits, watches };
  }

  // ---- frames ----

  private handleFrame(frame: ServerFrame): void {
    switch (frame.type) {
      case "hello": {
        this.pingIntervalMs = frame.ping_interval_ms;
        this.pingTimeoutMs = frame.ping_timeout_ms;
        this.nextPingAt = this.clock() + this.pingIntervalMs;
        this.tokenLifetime(frame.token_expires_in_ms);
        break;
      }
      case "auth_ok":
        if (frame.request_id === undefined || frame.request_id === this.pendingAuth) {
          this.pendingAuth = null;
          this.tokenLifetime(frame.token_expires_in_ms);
        }
        break;
      case "accepted":
        this.accepted(frame.request_id, { job_id: frame.job_id, trace_id: frame.trace_id });
        break;
      case "event":
        this.event(frame);
        break;
      case "history_truncated":
        this.truncated(frame);
        break;
      case "subscribed":
        this.subscribedAt(frame);
        break;
      case "error":
        this.error(frame);
        break;
      case "pong":
        break;
    }
  }

  private tokenLifetime(expiresInMs: number | null | undefined): void {
    const now = this.clock();
    this.tokenExpiresAt = expiresInMs === undefined || expiresInMs === null ? null : now + expiresInMs;
    this.scheduleRefresh(now);
  }

  private scheduleRefresh(now: number): void {
    if (!this.hasTokenSource || this.tokenExpiresAt === null) {
      this.refreshAt = null;
      return;
    }
    const lifetime = this.tokenExpiresAt - now;
    // A lifetime shorter than twice the margin is refreshed half way.
    const margin = Math.min(this.refreshMarginMs, Math.max(lifetime, 0) / 2);
    this.refreshAt = Math.max(now, this.tokenExpiresAt - margin);
  }

  private accepted(requestId: string, result: Submitted): void {
    const submit = this.submits.get(requestId);
    if (submit === undefined) {
      return; // given up by the app, or answered already
    }
    this.submits.delete(requestId);
    // The gateway subscribed the session to the job: keep its events for
    // the watch that usually follows.
    if (!this.subscribed.has(result.job_id)) {
      this.subscribed.set(result.job_id, START);
    }
    if (this.readers.of(result.job_id).length === 0) {
      this.addBuffer(result.job_id);
    }
    this.emit({ type: "submitted", submit: requestId, result });
  }

  private event(event: JobEvent): void {
    const now = this.clock();
    if (isTerminal(event)) {
      // The gateway stops sending a job at its terminal event.
      this.subscribed.delete(event.job_id);
    }
    for (const reader of this.readers.of(event.job_id)) {
      const due = reader.order.offer(event);
      reader.gapSince = reader.order.heldCount > 0 ? (reader.gapSince ?? now) : null;
      for (const item of due) {
        this.give(reader, item);
        if (isTerminal(item)) {
          this.end(reader);
          break;
        }
      }
      if (reader.order.heldCount > MAX_HELD_EVENTS) {
        this.resync(reader.jobId);
      }
    }
    if (isTerminal(event)) {
      // Readers that asked for what comes after the end have had it all.
      this.endReadersPast(event.job_id, { epoch: event.epoch, seq: event.seq });
    }
  }

  /**
   * The gateway's answer to a subscribe (jobgate.v1 only): where the job
   * was when its watch started. A finished job whose end the subscribe's
   * `after` reached sends nothing more: its readers there are done.
   */
  private subscribedAt(frame: SubscribedFrame): void {
    if (!TERMINAL_STATUSES.has(frame.status)) {
      return;
    }
    const last: Position = { epoch: frame.epoch, seq: frame.seq };
    const asked = this.subscribed.get(frame.job_id);
    if (asked !== undefined && comparePositions(asked, last) >= 0) {
      // The gateway does not watch the job: nothing to unsubscribe.
      this.subscribed.delete(frame.job_id);
    }
    this.endReadersPast(frame.job_id, last);
  }

  /** Ends the readers of a finished job that are at or past its last event. */
  private endReadersPast(jobId: string, last: Position): void {
    for (const reader of this.readers.of(jobId)) {
      if (comparePositions(reader.order.position, last) >= 0) {
        this.end(reader);
      }
    }
  }

  private truncated(message: HistoryTruncated): void {
    for (const reader of this.readers.of(message.job_id)) {
      const snapshot = reader.order.truncated(message);
      if (snapshot !== null) {
        this.give(reader, snapshot);
      }
    }
  }

  private error(frame: Extract<ServerFrame, { type: "error" }>): void {
    const error: ErrorBody = { code: frame.code, message: frame.message };
    if (frame.field !== undefined) {
      error.field = frame.field;
    }
    if (frame.request_id !== undefined && this.submits.has(frame.request_id)) {
      this.submits.delete(frame.request_id);
      this.emit({ type: "submit_error", submit: frame.request_id, error });
      return;
    }
    if (frame.code === "unauthorized" && (frame.request_id === undefined || frame.request_id === this.pendingAuth)) {
      // A refused refresh: the session lasts until the old token expires.
      this.pendingAuth = null;
      this.log("warn", "the gateway refused the refreshed token", { error });
      this.refreshAt = this.clock() + TOKEN_RETRY_MS;
      return;
    }
    if (frame.job_id !== undefined && frame.code !== "not_subscribed") {
      this.subscribed.delete(frame.job_id);
      for (const reader of this.readers.of(frame.job_id)) {
        this.readers.delete(reader.id);
        if (reader.buffer === null) {
          this.emit({ type: "watch_error", watch: reader.id, error });
        }
      }
      return;
    }
    this.log("warn", "error from the gateway", { ...error });
  }

  // ---- readers ----

  private addBuffer(jobId: string): void {
    const buffers = this.readers.buffers();
    if (buffers.length >= this.maxBufferedJobs) {
      // The oldest buffer goes; a later watch of it reads the history.
      const oldest = buffers[0]!;
      this.readers.delete(oldest.id);
      this.releaseJob(oldest.jobId);
    }
    const id = this.nextBufferId;
    this.nextBufferId -= 1;
    this.readers.set({
      id,
      jobId,
      order: new EventOrder(START),
      buffer: [],
      ended: false,
      gapSince: null,
    });
  }

  private give(reader: Reader, item: WatchItem): void {
    if (reader.buffer !== null) {
      reader.buffer.push(item);
      if (reader.buffer.length > MAX_BUFFERED_ITEMS) {
        this.readers.delete(reader.id);
        this.releaseJob(reader.jobId);
      }
      return;
    }
    this.emit({ type: "deliver", watch: reader.id, item });
  }

  private end(reader: Reader): void {
    reader.ended = true;
    reader.gapSince = null;
    if (reader.buffer === null) {
      this.readers.delete(reader.id);
      this.emit({ type: "watch_end", watch: reader.id, job_id: reader.jobId });
    }
  }

  /** No reader of the job is left: stop the gateway sending it. */
  private releaseJob(jobId: string): void {
    if (this.readers.of(jobId).length > 0 || !this.subscribed.has(jobId)) {
      return;
    }
    this.subscribed.delete(jobId);
    if (this.phase === "open") {
      this.send({ type: "unsubscribe", job_id: jobId });
    }
  }

  private resubscribe(): void {
    for (const jobId of this.readers.activeJobs()) {
      const position = this.readers.resumePosition(jobId);
      if (position !== null) {
        this.subscribe(jobId, position);
      }
    }
  }

  /** Reads the history again from where the readers are (an event went missing). */
  private resync(jobId: string): void {
    const position = this.readers.resumePosition(jobId);
    for (const reader of this.readers.of(jobId)) {
      reader.gapSince = null;
    }
    if (position !== null && this.phase === "open") {
      this.log("info", "events went missing; reading the job's history again", { job_id: jobId });
      this.subscribe(jobId, position);
    }
  }

  private checkGaps(now: number): void {
    const late = new Set<string>();
    for (const reader of this.readers.all()) {
      if (reader.gapSince !== null && now - reader.gapSince >= this.gapTimeoutMs) {
        late.add(reader.jobId);
      }
    }
    for (const jobId of late) {
      this.resync(jobId);
    }
  }

  private subscribe(jobId: string, position: Position): void {
    this.subscribed.set(jobId, position);
    const frame: ClientFrame = { type: "subscribe", job_id: jobId, after: position.seq };
    if (position.epoch !== 1) {
      frame.after_epoch = position.epoch;
    }
    this.send(frame);
  }

  // ---- connection ----

  private connectNow(): void {
    if (this.hasTokenSource && (this.token === null || this.tokenStale || this.tokenExpired())) {
      this.phase = "awaiting_token";
      this.requestToken(this.token === null ? "first connection" : "token expired");
      return;
    }
    this.open();
  }

  private tokenExpired(): boolean {
    return this.tokenExpiresAt !== null && this.clock() >= this.tokenExpiresAt - 1_000;
  }

  private open(): void {
    this.connection += 1;
    this.phase = "opening";
    if (this.state !== "connecting" && this.state !== "reconnecting") {
      this.setState({ state: this.everConnected ? "reconnecting" : "connecting", reason: "connecting" });
    }
    this.emit({ type: "open", connection: this.connection, token: this.token });
  }

  private requestToken(reason: string): void {
    if (!this.tokenRequested) {
      this.tokenRequested = true;
      this.emit({ type: "need_token", reason });
    }
  }

  /** Forgets the session's state (the socket is gone or going). */
  private dropSession(): void {
    this.phase = "waiting";
    this.protocol = null;
    this.nextPingAt = null;
    this.pendingAuth = null;
    this.subscribed.clear();
    for (const submit of this.submits.values()) {
      submit.sentOn = null;
    }
    for (const reader of this.readers.all()) {
      reader.gapSince = null;
    }
  }

  private scheduleReconnect(reason: string, code: number | undefined, immediate: boolean): void {
    this.phase = "waiting";
    const delay = immediate && this.failures === 0 ? 0 : backoffDelay(this.backoff, this.failures, this.random);
    this.failures += 1;
    this.reconnectAt = this.clock() + delay;
    const change: StateChange = {
      state: this.everConnected ? "reconnecting" : "connecting",
      reason,
      retryInMs: delay,
      failures: this.failures,
    };
    if (code !== undefined) {
      change.code = code;
    }
    this.setState(change, true);
    this.log("info", "reconnecting", { reason, code, retry_in_ms: delay });
  }

  private sendSubmit(submit: PendingSubmit): void {
    if (submit.sentOn === this.connection) {
      return;
    }
    submit.sentOn = this.connection;
    this.send(submit.frame);
  }

  private send(frame: ClientFrame): void {
    this.emit({ type: "send", connection: this.connection, frame });
  }

  private setState(change: StateChange, always = false): void {
    if (!always && change.state === this.state) {
      return;
    }
    this.state = change.state;
    this.emit({ type: "state", change });
  }

  private log(level: LogLevel, message: string, fields?: Record<string, unknown>): void {
    const output: Output = { type: "log", level, message };
    if (fields !== undefined) {
      output.fields = fields;
    }
    this.emit(output);
  }

  private emit(output: Output): void {
    this.outputs.push(output);
  }

  /** The next time tick() has something to do. */
  private nextDeadline(): number | null {
    const times: number[] = [];
    if (this.phase === "waiting" && this.reconnectAt !== null) {
      times.push(this.reconnectAt);
    }
    if (this.phase === "open") {
      times.push(this.lastFrameAt + this.pingTimeoutMs);
      if (this.nextPingAt !== null) {
        times.push(this.nextPingAt);
      }
      if (this.refreshAt !== null) {
        times.push(this.refreshAt);
      }
      for (const reader of this.readers.all()) {
        if (reader.gapSince !== null) {
          times.push(reader.gapSince + this.gapTimeoutMs);
        }
      }
    }
    return times.length === 0 ? null : Math.min(...times);
  }

  private flush(): Output[] {
    const at = this.nextDeadline();
    if (at !== this.lastTimer) {
      this.lastTimer = at;
      this.outputs.push({ type: "timer", at });
    }
    const outputs = this.outputs;
    this.outputs = [];
    return outputs;
  }
}
