// The protocol engine of one WebSocket session, with no I/O and no timers:
// it takes inputs (the socket opened, a frame, the socket closed, the clock,
// the app's commands, a token) and returns outputs (open a socket, send a
// frame, close it, deliver an event, ask for a token, wake me at…). The
// transport (transport/websocket.ts) only moves bytes and sets one timer.
// Everything that decides — backoff, resume positions, de-duplication and
// order, token refresh, dead-connection detection, re-sending submits — is
// here, so it is tested with a fake clock and no socket, and ports to other
// languages line by line.
//
// This file is the core: the session's phases and the inputs. Its parts
// live in engine/: connection.ts (backoff, pings, liveness), token.ts (the
// token and its refresh), submits.ts (submits awaiting `accepted`),
// subscriptions.ts (watches, resume positions, ordered delivery) and
// outputs.ts (the outputs, options and close codes, re-exported here).

import { type BackoffOptions, DEFAULT_BACKOFF } from "./backoff.js";
import { closeText, Liveness, Reconnects } from "./engine/connection.js";
import {
  CLOSE_NORMAL, CLOSE_PING_TIMEOUT, CLOSE_SLOW_CONSUMER, CLOSE_TOKEN_EXPIRED, type ConnectionState,
  DEFAULT_GAP_TIMEOUT_MS, DEFAULT_MAX_BUFFERED_JOBS, DEFAULT_PING_INTERVAL_MS, DEFAULT_PING_TIMEOUT_MS,
  DEFAULT_TOKEN_REFRESH_MARGIN_MS, type EngineHost, type EngineOptions, type LogLevel, type Output, type StateChange,
} from "./engine/outputs.js";
import { PendingSubmits, type SubmitFrame } from "./engine/submits.js";
import { type DrainedWatch, Subscriptions } from "./engine/subscriptions.js";
import { TokenRefresh } from "./engine/token.js";
import type { Position } from "./order.js";
import { type ClientFrame, type ErrorBody, type JobRequest, parseServerFrame, type ServerFrame, SUBPROTOCOL } from "./types.js";

export {
  CLOSE_GOING_AWAY,
  CLOSE_NORMAL,
  CLOSE_PING_TIMEOUT,
  CLOSE_SLOW_CONSUMER,
  CLOSE_TOKEN_EXPIRED,
  type ConnectionState,
  DEFAULT_GAP_TIMEOUT_MS,
  DEFAULT_MAX_BUFFERED_JOBS,
  DEFAULT_PING_INTERVAL_MS,
  DEFAULT_PING_TIMEOUT_MS,
  DEFAULT_TOKEN_REFRESH_MARGIN_MS,
  type EngineOptions,
  type LogLevel,
  type Output,
  type StateChange,
} from "./engine/outputs.js";

type Phase = "idle" | "awaiting_token" | "opening" | "open" | "waiting" | "closed";

export class Engine {
  private readonly clock: () => number;

  private phase: Phase = "idle";
  private connection = 0;
  private everConnected = false;
  private state: ConnectionState = "connecting";
  private outputs: Output[] = [];
  /** The last timer output; undefined: none asked for since the last tick. */
  private lastTimer: number | null | undefined = null;
  /** The session's negotiated subprotocol. */
  private protocol: string | null = null;

  private readonly reconnects: Reconnects;
  private readonly liveness: Liveness;
  private readonly tokens: TokenRefresh;
  private readonly submits = new PendingSubmits();
  private readonly subscriptions: Subscriptions;

  constructor(options: EngineOptions) {
    this.clock = options.clock;
    const backoff: BackoffOptions = { ...DEFAULT_BACKOFF, ...options.backoff };
    this.reconnects = new Reconnects(backoff, options.random);
    this.liveness = new Liveness(
      options.pingIntervalMs ?? DEFAULT_PING_INTERVAL_MS,
      options.pingTimeoutMs ?? DEFAULT_PING_TIMEOUT_MS,
    );
    this.tokens = new TokenRefresh(
      options.hasTokenSource ?? false,
      options.tokenRefreshMarginMs ?? DEFAULT_TOKEN_REFRESH_MARGIN_MS,
      this.clock,
    );
    const host: EngineHost = {
      now: () => this.clock(),
      isOpen: () => this.phase === "open",
      send: (frame) => this.send(frame),
      emit: (output) => this.emit(output),
      log: (level, message, fields) => this.log(level, message, fields),
    };
    this.subscriptions = new Subscriptions(
      host,
      options.gapTimeoutMs ?? DEFAULT_GAP_TIMEOUT_MS,
      options.maxBufferedJobs ?? DEFAULT_MAX_BUFFERED_JOBS,
    );
  }

  get connectionState(): ConnectionState {
    return this.state;
  }

  /** Consecutive failed connection attempts (reset by a successful open). */
  get consecutiveFailures(): number {
    return this.reconnects.failures;
  }

  get hasConnected(): boolean {
    return this.everConnected;
  }

  /** The session's negotiated subprotocol (null: none, an older gateway). */
  get sessionProtocol(): string | null {
    return this.protocol;
  }

  // ---- inputs: the socket ----

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
    this.reconnects.failures = 0;
    this.liveness.opened(now);
    this.reconnects.at = null;
    this.tokens.pendingAuth = null;
    const reason = this.everConnected ? "reconnected" : "connected";
    this.everConnected = true;
    this.setState({ state: "connected", reason });
    this.subscriptions.sessionOpened();
    for (const frame of this.submits.toSend(this.connection)) {
      this.send(frame);
    }
    if (this.protocol === null) {
      // No hello will come: what we know of the token (its own exp) must do.
      this.tokens.schedule(now);
    }
    return this.flush();
  }

  /** A text frame of `connection`, parsed as JSON. */
  frame(connection: number, value: unknown): Output[] {
    if (connection !== this.connection || this.phase !== "open") {
      return this.flush();
    }
    this.liveness.heard(this.clock());
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
    const text = closeText(code, reason, wasOpen, httpStatus);
    if (code === CLOSE_TOKEN_EXPIRED || httpStatus === 401) {
      this.tokens.stale = true;
    }
    const immediate = wasOpen && (code === CLOSE_SLOW_CONSUMER || code === CLOSE_TOKEN_EXPIRED);
    this.scheduleReconnect(text, code, immediate);
    return this.flush();
  }

  /** The clock moved: fire what is due. */
  tick(): Output[] {
    const now = this.clock();
    if (this.phase === "waiting" && this.reconnects.isDue(now)) {
      this.reconnects.at = null;
      this.connectNow();
    }
    if (this.phase === "open") {
      if (this.liveness.isDead(now)) {
        const silentFor = this.liveness.silentFor(now);
        this.emit({
          type: "close_socket",
          connection: this.connection,
          code: CLOSE_PING_TIMEOUT,
          reason: "no frame from the gateway",
        });
        this.dropSession();
        this.scheduleReconnect(`connection dead (no frame for ${silentFor} ms)`, CLOSE_PING_TIMEOUT, false);
      } else {
        if (this.liveness.takePing(now)) {
          this.send({ type: "ping" });
        }
        this.subscriptions.checkGaps(now);
      }
    }
    if (this.phase === "open" && this.tokens.takeRefresh(now)) {
      this.requestToken("token expires soon");
    }
    // The caller's timer has fired (maybe a little early): always name the next one.
    this.lastTimer = undefined;
    return this.flush();
  }

  // ---- inputs: the token ----

  /** A token from getToken(); `expiresInMs` if the caller knows its lifetime (a JWT's exp). */
  tokenArrived(token: string, expiresInMs?: number | null): Output[] {
    const now = this.clock();
    this.tokens.arrived(token, expiresInMs, now);
    if (this.phase === "awaiting_token") {
      this.open();
    } else if (this.phase === "open") {
      const requestId = this.tokens.nextAuth();
      this.send(
        this.protocol === null
          ? { type: "auth", token }
          : { type: "auth", token, request_id: requestId },
      );
      // A jobgate.v1 session answers auth_ok with the new lifetime; until
      // then (or without one) the token's own expiry schedules the next.
      this.tokens.schedule(now);
    }
    return this.flush();
  }

  /** getToken() failed. */
  tokenFailed(message: string): Output[] {
    this.tokens.requested = false;
    this.log("warn", "getToken failed", { error: message });
    if (this.phase === "awaiting_token") {
      // Counted as a failed connection attempt.
      this.scheduleReconnect(`getToken failed: ${message}`, undefined, false);
    } else if (this.phase === "open") {
      this.tokens.retryLater(this.clock());
    }
    return this.flush();
  }

  // ---- inputs: the app ----

  /** Submits a job; answered by `submitted` or `submit_error` with the same id. */
  submit(
    requestId: string,
    job: JobRequest,
    options: { idempotencyKey: string; traceparent?: string; tracestate?: string },
  ): Output[] {
    const pending = this.submits.add(requestId, job, options);
    if (this.phase === "open") {
      for (const frame of this.submits.toSend(this.connection, [pending])) {
        this.send(frame);
      }
    }
    return this.flush();
  }

  /** The app gave up on a submit (its accepted, if it comes, is ignored). */
  forgetSubmit(requestId: string): Output[] {
    this.submits.take(requestId);
    return this.flush();
  }

  /**
   * Watches a job from after `after` (default: the events buffered since
   * its submit on this client, else the whole history).
   */
  watch(watchId: number, jobId: string, after?: Position): Output[] {
    this.subscriptions.watch(watchId, jobId, after);
    return this.flush();
  }

  /** Stops a watch (the app broke out of its loop, or aborted it). */
  unwatch(watchId: number): Output[] {
    this.subscriptions.unwatch(watchId);
    return this.flush();
  }

  /** The browser came back online or visible: retry at once, backoff from the start. */
  online(): Output[] {
    this.reconnects.failures = 0;
    if (this.phase === "waiting") {
      this.reconnects.at = null;
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
    this.stop("client closed");
    this.subscriptions.endAll();
    for (const submit of this.submits.takeAll()) {
      this.emit({
        type: "submit_error",
        submit: submit.requestId,
        error: { code: "client_closed", message: "the client was closed before the job was accepted" },
      });
    }
    this.setState({ state: "closed", reason: "closed by the app", code: CLOSE_NORMAL });
    return this.flush();
  }

  /**
   * Hands over what is left to do (to another transport): submits not yet
   * accepted, and the app's watches with their positions. The engine stops.
   */
  drain(): { submits: SubmitFrame[]; watches: DrainedWatch[] } {
    const submits = this.submits.takeAll().map((submit) => submit.frame);
    const watches = this.subscriptions.drain();
    this.stop("switching transport");
    this.flush();
    return { submits, watches };
  }

  // ---- frames ----

  private handleFrame(frame: ServerFrame): void {
    switch (frame.type) {
      case "hello":
        this.liveness.hello(frame.ping_interval_ms, frame.ping_timeout_ms, this.clock());
        this.tokens.lifetime(frame.token_expires_in_ms);
        break;
      case "auth_ok":
        if (frame.request_id === undefined || frame.request_id === this.tokens.pendingAuth) {
          this.tokens.pendingAuth = null;
          this.tokens.lifetime(frame.token_expires_in_ms);
        }
        break;
      case "accepted":
        if (this.submits.take(frame.request_id) !== undefined) {
          // Otherwise given up by the app, or answered already.
          this.subscriptions.accepted(frame.job_id);
          this.emit({ type: "submitted", submit: frame.request_id, result: { job_id: frame.job_id, trace_id: frame.trace_id } });
        }
        break;
      case "event":
        this.subscriptions.event(frame);
        break;
      case "history_truncated":
        this.subscriptions.truncated(frame);
        break;
      case "subscribed":
        this.subscriptions.subscribedAt(frame);
        break;
      case "error":
        this.error(frame);
        break;
      case "pong":
        break;
    }
  }

  private error(frame: Extract<ServerFrame, { type: "error" }>): void {
    const error: ErrorBody = { code: frame.code, message: frame.message };
    if (frame.field !== undefined) {
      error.field = frame.field;
    }
    if (frame.request_id !== undefined && this.submits.take(frame.request_id) !== undefined) {
      this.emit({ type: "submit_error", submit: frame.request_id, error });
      return;
    }
    if (frame.code === "unauthorized" && (frame.request_id === undefined || frame.request_id === this.tokens.pendingAuth)) {
      // A refused refresh: the session lasts until the old token expires.
      this.tokens.pendingAuth = null;
      this.log("warn", "the gateway refused the refreshed token", { error });
      this.tokens.retryLater(this.clock());
      return;
    }
    if (frame.job_id !== undefined && frame.code !== "not_subscribed") {
      this.subscriptions.failJob(frame.job_id, error);
      return;
    }
    this.log("warn", "error from the gateway", { ...error });
  }

  // ---- connection ----

  private connectNow(): void {
    if (this.tokens.needsFetch()) {
      this.phase = "awaiting_token";
      this.requestToken(this.tokens.token === null ? "first connection" : "token expired");
      return;
    }
    this.open();
  }

  private open(): void {
    this.connection += 1;
    this.phase = "opening";
    if (this.state !== "connecting" && this.state !== "reconnecting") {
      this.setState({ state: this.everConnected ? "reconnecting" : "connecting", reason: "connecting" });
    }
    this.emit({ type: "open", connection: this.connection, token: this.tokens.token });
  }

  private requestToken(reason: string): void {
    if (!this.tokens.requested) {
      this.tokens.requested = true;
      this.emit({ type: "need_token", reason });
    }
  }

  /** Forgets the session's state (the socket is gone or going). */
  private dropSession(): void {
    this.phase = "waiting";
    this.protocol = null;
    this.liveness.stop();
    this.tokens.pendingAuth = null;
    this.subscriptions.sessionDropped();
    this.submits.unsent();
  }

  /** Closes the socket (if any) for good: no reconnect, no refresh. */
  private stop(reason: string): void {
    if (this.phase === "open" || this.phase === "opening") {
      this.emit({ type: "close_socket", connection: this.connection, code: CLOSE_NORMAL, reason });
    }
    this.dropSession();
    this.phase = "closed";
    this.reconnects.at = null;
    this.tokens.refreshAt = null;
  }

  private scheduleReconnect(reason: string, code: number | undefined, immediate: boolean): void {
    this.phase = "waiting";
    const delay = this.reconnects.schedule(this.clock(), immediate);
    const change: StateChange = {
      state: this.everConnected ? "reconnecting" : "connecting",
      reason,
      retryInMs: delay,
      failures: this.reconnects.failures,
    };
    if (code !== undefined) {
      change.code = code;
    }
    this.setState(change, true);
    this.log("info", "reconnecting", { reason, code, retry_in_ms: delay });
  }

  // ---- outputs ----

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
    if (this.phase === "waiting" && this.reconnects.at !== null) {
      times.push(this.reconnects.at);
    }
    if (this.phase === "open") {
      times.push(...this.liveness.deadlines());
      if (this.tokens.refreshAt !== null) {
        times.push(this.tokens.refreshAt);
      }
      times.push(...this.subscriptions.deadlines());
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
