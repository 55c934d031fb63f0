// JobgateClient: the app's surface. It owns one protocol engine (one
// WebSocket session for every submit and watch), runs its outputs against
// the socket, the timers and getToken(), and falls back to SSE + HTTP where
// WebSocket cannot connect.
//
// Its parts live in client/: options.ts (the options' types), helpers.ts
// (ids, a JWT's lifetime, URLs, sleep), tokens.ts (getToken(), one call at
// a time), rest.ts (the plain HTTP calls), http-mode.ts (watches and
// submits over SSE + HTTP) and browser.ts (the online / visibility hooks).

import { type BackoffOptions, DEFAULT_BACKOFF } from "./backoff.js";
import { listenToBrowser } from "./client/browser.js";
import { baseUrl, closedError, jwtLifetimeMs, randomUuid, sleep, watchAfter, webSocketUrl } from "./client/helpers.js";
import { type PendingSubmit, pipeSse, submitPendingOverHttp } from "./client/http-mode.js";
import { defaultTimers, type JobgateClientOptions, type JobsQuery, type StateListener, type SubmitOptions, type Timers, type WatchOptions } from "./client/options.js";
import { cancelJob, jobSnapshot, listJobs, listKinds } from "./client/rest.js";
import { TokenFetcher } from "./client/tokens.js";
import { type ConnectionState, Engine, type LogLevel, type Output, type StateChange } from "./engine.js";
import { abortError, type FetchLike, HttpClient, JobgateError, type TokenSource } from "./http.js";
import { LogBatcher } from "./logs.js";
import { AsyncQueue } from "./queue.js";
import { ownerEventsOverSse, type SseContext } from "./transport/sse.js";
import { type WebSocketConstructor, WebSocketTransport } from "./transport/websocket.js";
import type { JobEvent, JobList, JobRequest, JobSnapshot, Kind, Submitted, WatchItem } from "./types.js";

export { jwtLifetimeMs, randomUuid } from "./client/helpers.js";
export type {
  JobgateClientOptions,
  JobsQuery,
  StateListener,
  SubmitOptions,
  Timers,
  TransportChoice,
  WatchOptions,
} from "./client/options.js";

export class JobgateClient {
  private readonly options: JobgateClientOptions;
  private readonly clock: () => number;
  private readonly random: () => number;
  private readonly timers: Timers;
  private readonly backoff: BackoffOptions;
  private readonly http: HttpClient;
  private readonly sse: SseContext;
  private readonly logs: LogBatcher | null;
  private readonly engine: Engine;
  private readonly socket: WebSocketTransport | null;
  private mode: "websocket" | "sse";
  private started = false;
  private isClosed = false;
  private currentState: ConnectionState = "connecting";
  private readonly listeners = new Set<StateListener>();

  private readonly tokens: TokenFetcher;
  private timer: unknown = null;
  private requestCount = 0;
  private watchCount = 0;
  private readonly submits = new Map<string, PendingSubmit>();
  private readonly watches = new Map<number, AsyncQueue<WatchItem>>();
  /** Aborts every SSE stream and HTTP retry loop at close(). */
  private readonly closing = new AbortController();
  private probing = false;
  private readonly removeBrowserListeners: () => void;

  constructor(options: JobgateClientOptions) {
    this.options = options;
    const base = baseUrl(options.url);
    this.clock = options.clock ?? Date.now;
    this.random = options.random ?? Math.random;
    this.timers = options.timers ?? defaultTimers;
    this.backoff = { ...DEFAULT_BACKOFF, ...options.backoff };
    this.tokens = new TokenFetcher(options.getToken);
    this.http = this.createHttp(base);
    this.sse = {
      http: this.http,
      sleep: (ms, signal) => this.sleep(ms, signal),
      backoff: this.backoff,
      random: this.random,
      onConnection: (connected, reason, retryInMs) => this.sseConnection(connected, reason, retryInMs),
    };
    this.logs = options.logs?.enabled ? new LogBatcher(options.logs, this.http, this.timers, this.clock) : null;
    const WebSocketClass =
      options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket ?? null;
    const choice = options.transport ?? (WebSocketClass === null ? "sse" : "websocket");
    if (choice !== "sse" && WebSocketClass === null) {
      throw new TypeError("no WebSocket class: pass options.WebSocket (in Node, the ws package's) or transport: \"sse\"");
    }
    this.mode = choice === "sse" ? "sse" : "websocket";
    this.engine = new Engine({
      clock: this.clock,
      random: this.random,
      backoff: this.backoff,
      hasTokenSource: options.getToken !== undefined,
      ...(options.tokenRefreshMarginMs === undefined ? {} : { tokenRefreshMarginMs: options.tokenRefreshMarginMs }),
    });
    this.socket = WebSocketClass === null ? null : this.createSocket(base, WebSocketClass);
    this.removeBrowserListeners = listenToBrowser(() => this.online());
  }

  /** The connection state: "connecting", "connected", "reconnecting" or "closed". */
  get state(): ConnectionState {
    return this.currentState;
  }

  /** The transport in use ("auto" settles on one of these). */
  get transport(): "websocket" | "sse" {
    return this.mode;
  }

  /** Calls `listener` on every state change (and each reconnect attempt); returns the unsubscribe. */
  onStateChange(listener: StateListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /**
   * The network or the app came back (browsers: called on `online` and on
   * `visibilitychange` to visible): reconnect at once, backoff from the start.
   */
  online(): void {
    if (this.mode === "websocket" && this.started && !this.isClosed) {
      this.apply(this.engine.online());
    }
  }

  /** Connects now (submit and watch connect by themselves). */
  connect(): void {
    this.ensureStarted();
  }

  /** Submits a job: resolves when the gateway accepted it. */
  submit(job: JobRequest, options: SubmitOptions = {}): Promise<Submitted> {
    if (this.isClosed) {
      return Promise.reject(closedError());
    }
    if (options.signal?.aborted) {
      return Promise.reject(abortError(options.signal));
    }
    const pending: PendingSubmit = {
      resolve: () => undefined,
      reject: () => undefined,
      job,
      idempotencyKey: options.idempotencyKey ?? randomUuid(),
    };
    if (options.traceparent !== undefined) pending.traceparent = options.traceparent;
    if (options.tracestate !== undefined) pending.tracestate = options.tracestate;
    if (options.signal !== undefined) pending.signal = options.signal;
    this.ensureStarted();
    if (this.mode === "sse") {
      return submitPendingOverHttp(this.sse, this.closing.signal, pending);
    }
    return this.submitOverSocket(pending);
  }

  /**
   * A job's events, each once and in order, across reconnects; ends after
   * the terminal event. Lost history arrives as one `snapshot` item.
   */
  watch(jobId: string, options: WatchOptions = {}): AsyncIterableIterator<WatchItem> {
    const id = ++this.watchCount;
    const streamAbort = new AbortController();
    const stop = () => {
      streamAbort.abort();
      if (this.watches.delete(id)) {
        this.apply(this.engine.unwatch(id));
      }
    };
    const queue = new AsyncQueue<WatchItem>(stop);
    if (this.isClosed) {
      queue.fail(closedError());
      return queue;
    }
    const { signal } = options;
    if (signal?.aborted) {
      queue.fail(abortError(signal));
      return queue;
    }
    signal?.addEventListener(
      "abort",
      () => {
        streamAbort.abort();
        queue.fail(abortError(signal));
        if (this.watches.delete(id)) {
          this.apply(this.engine.unwatch(id));
        }
      },
      { once: true },
    );
    const after = watchAfter(options);
    this.ensureStarted();
    if (this.mode === "sse") {
      pipeSse(this.sse, this.closing.signal, queue, jobId, after ?? { epoch: 1, seq: 0 }, streamAbort.signal);
      return queue;
    }
    this.watches.set(id, queue);
    this.apply(this.engine.watch(id, jobId, after));
    return queue;
  }

  /** Every event of the caller's jobs from now on (SSE `GET /v1/events`). Never ends by itself. */
  events(options: { signal?: AbortSignal } = {}): AsyncIterableIterator<JobEvent> {
    const signal = options.signal === undefined ? this.closing.signal : AbortSignal.any([options.signal, this.closing.signal]);
    return ownerEventsOverSse(this.sse, signal);
  }

  /** Cancels a job; the snapshot after the request. */
  cancel(jobId: string): Promise<JobSnapshot> {
    return cancelJob(this.http, jobId);
  }

  /** A job's current state. */
  snapshot(jobId: string): Promise<JobSnapshot> {
    return jobSnapshot(this.http, jobId);
  }

  /** The kinds workers serve, with their params schemas. */
  kinds(): Promise<Kind[]> {
    return listKinds(this.http);
  }

  /** A page of the caller's jobs, newest first. */
  jobs(query: JobsQuery = {}): Promise<JobList> {
    return listJobs(this.http, query);
  }

  /** Closes the session: watches end, pending submits fail, log lines are sent. */
  close(): void {
    if (this.isClosed) {
      return;
    }
    this.isClosed = true;
    this.removeBrowserListeners();
    this.apply(this.engine.close());
    this.closing.abort();
    for (const [requestId, pending] of this.submits) {
      this.submits.delete(requestId);
      pending.reject(closedError());
    }
    for (const queue of this.watches.values()) {
      queue.end();
    }
    this.watches.clear();
    this.clearTimer();
    this.setState({ state: "closed", reason: "closed by the app" });
    void this.logs?.close();
  }

  // ---- construction ----

  private createHttp(base: string): HttpClient {
    const fetchImpl = this.options.fetch ?? (globalThis.fetch?.bind(globalThis) as FetchLike | undefined);
    if (fetchImpl === undefined) {
      throw new TypeError("no fetch: pass options.fetch");
    }
    const tokens: TokenSource = {
      current: () => this.tokens.current(),
      refresh: () => this.tokens.fetch(),
      canRefresh: this.tokens.canFetch,
    };
    return new HttpClient(base, fetchImpl, tokens);
  }

  private createSocket(base: string, WebSocketClass: WebSocketConstructor): WebSocketTransport {
    const passed = this.options.WebSocket;
    const tokenIn =
      this.options.tokenIn ??
      (passed === undefined || passed === (globalThis as { WebSocket?: unknown }).WebSocket ? "query" : "header");
    return new WebSocketTransport(
      { url: webSocketUrl(base), WebSocket: WebSocketClass, tokenIn },
      {
        opened: (connection, protocol) => this.apply(this.engine.opened(connection, protocol)),
        frame: (connection, value) => this.apply(this.engine.frame(connection, value)),
        closed: (connection, code, reason, status) => this.apply(this.engine.closed(connection, code, reason, status)),
      },
    );
  }

  // ---- the engine's inputs and outputs ----

  private submitOverSocket(pending: PendingSubmit): Promise<Submitted> {
    this.requestCount += 1;
    const requestId = `submit-${this.requestCount}`;
    const promise = new Promise<Submitted>((resolve, reject) => {
      pending.resolve = resolve;
      pending.reject = reject;
    });
    this.submits.set(requestId, pending);
    const signal = pending.signal;
    signal?.addEventListener(
      "abort",
      () => {
        if (this.submits.delete(requestId)) {
          pending.reject(abortError(signal));
          this.apply(this.engine.forgetSubmit(requestId));
        }
      },
      { once: true },
    );
    const submitOptions: { idempotencyKey: string; traceparent?: string; tracestate?: string } = {
      idempotencyKey: pending.idempotencyKey,
    };
    if (pending.traceparent !== undefined) submitOptions.traceparent = pending.traceparent;
    if (pending.tracestate !== undefined) submitOptions.tracestate = pending.tracestate;
    this.apply(this.engine.submit(requestId, pending.job, submitOptions));
    return promise;
  }

  private ensureStarted(): void {
    if (this.started || this.isClosed) {
      return;
    }
    this.started = true;
    if (this.mode === "sse") {
      this.setState({ state: "connected", reason: "using HTTP and SSE" });
      return;
    }
    this.apply(this.engine.start());
  }

  private apply(outputs: Output[]): void {
    for (const output of outputs) {
      this.applyOne(output);
    }
  }

  private applyOne(output: Output): void {
    switch (output.type) {
      case "open":
        this.socket?.open(output.connection, output.token);
        break;
      case "send":
        this.socket?.send(output.connection, output.frame);
        break;
      case "close_socket":
        this.socket?.close(output.connection, output.code, output.reason);
        break;
      case "need_token":
        this.giveEngineToken();
        break;
      case "deliver":
        this.watches.get(output.watch)?.push(output.item);
        break;
      case "watch_end":
        this.watches.get(output.watch)?.end();
        this.watches.delete(output.watch);
        break;
      case "watch_error":
        this.watches.get(output.watch)?.fail(new JobgateError(output.error));
        this.watches.delete(output.watch);
        break;
      case "submitted":
        this.takeSubmit(output.submit)?.resolve(output.result);
        break;
      case "submit_error":
        this.takeSubmit(output.submit)?.reject(new JobgateError(output.error));
        break;
      case "state":
        this.setState(output.change);
        this.maybeFallBack();
        break;
      case "timer":
        this.setTimer(output.at);
        break;
      case "log":
        this.log(output.level, output.message, output.fields);
        break;
    }
  }

  private takeSubmit(requestId: string): PendingSubmit | undefined {
    const pending = this.submits.get(requestId);
    this.submits.delete(requestId);
    return pending;
  }

  private giveEngineToken(): void {
    this.tokens.fetch().then(
      (token) =>
        this.apply(
          token === null ? this.engine.tokenFailed("getToken returned nothing") : this.engine.tokenArrived(token, jwtLifetimeMs(token, this.clock())),
        ),
      (error: unknown) => this.apply(this.engine.tokenFailed(String(error))),
    );
  }

  private setTimer(at: number | null): void {
    this.clearTimer();
    if (at === null || this.isClosed) {
      return;
    }
    this.timer = this.timers.setTimeout(() => {
      this.timer = null;
      this.apply(this.engine.tick());
    }, Math.max(0, at - this.clock()));
  }

  private clearTimer(): void {
    if (this.timer !== null) {
      this.timers.clearTimeout(this.timer);
      this.timer = null;
    }
  }

  private setState(change: StateChange): void {
    if (this.isClosed && change.state !== "closed") {
      return;
    }
    if (this.currentState === "closed") {
      return;
    }
    this.currentState = change.state;
    for (const listener of [...this.listeners]) {
      try {
        listener(change);
      } catch {
        // A listener's error is the app's; the client goes on.
      }
    }
  }

  private log(level: LogLevel, message: string, fields?: Record<string, unknown>): void {
    this.options.logger?.(level, message, fields);
    this.logs?.add(level, message, fields);
  }

  private sleep(ms: number, signal?: AbortSignal): Promise<void> {
    const signals = signal === undefined ? this.closing.signal : AbortSignal.any([signal, this.closing.signal]);
    return sleep(this.timers, ms, signals);
  }

  // ---- SSE ----

  private sseConnection(connected: boolean, reason: string, retryInMs?: number): void {
    if (this.mode !== "sse") {
      return;
    }
    const change: StateChange = connected
      ? { state: "connected", reason }
      : { state: "reconnecting", reason };
    if (retryInMs !== undefined) {
      change.retryInMs = retryInMs;
    }
    if (connected && this.currentState === "connected") {
      return;
    }
    this.setState(change);
  }

  /**
   * "auto": when WebSocket never connected and failed `autoFallbackAfter`
   * times while HTTP answers, move everything to SSE + HTTP.
   */
  private maybeFallBack(): void {
    const threshold = this.options.autoFallbackAfter ?? 3;
    if (
      this.options.transport !== "auto" ||
      this.mode !== "websocket" ||
      this.probing ||
      this.engine.hasConnected ||
      this.engine.consecutiveFailures < threshold
    ) {
      return;
    }
    this.probing = true;
    this.http
      .send("/healthz", { signal: this.closing.signal })
      .then(async (response) => {
        await response.body?.cancel().catch(() => undefined);
        if (!response.ok || this.isClosed || this.engine.hasConnected) {
          return;
        }
        this.fallBackToSse();
      })
      .catch(() => undefined)
      .finally(() => {
        this.probing = false;
      });
  }

  /**
   * Submits not yet accepted go over HTTP with their idempotency keys,
   * watches resume over SSE from where they are.
   */
  private fallBackToSse(): void {
    this.log("warn", "WebSocket cannot connect but HTTP works: using SSE", {});
    this.mode = "sse";
    const { submits, watches } = this.engine.drain();
    this.clearTimer();
    this.setState({ state: "connected", reason: "WebSocket unavailable; using HTTP and SSE" });
    for (const frame of submits) {
      const pending = this.takeSubmit(frame.request_id);
      if (pending !== undefined) {
        submitPendingOverHttp(this.sse, this.closing.signal, pending).then(pending.resolve, pending.reject);
      }
    }
    for (const { watch, jobId, position } of watches) {
      const queue = this.watches.get(watch);
      this.watches.delete(watch);
      if (queue !== undefined) {
        const abort = new AbortController();
        pipeSse(this.sse, this.closing.signal, queue, jobId, position, abort.signal);
      }
    }
  }
}
