// JobgateClient: the app's surface. It owns one protocol engine (one
// WebSocket session for every submit and watch), runs its outputs against
// the socket, the timers and getToken(), and falls back to SSE + HTTP where
// WebSocket cannot connect.

import { type BackoffOptions, DEFAULT_BACKOFF } from "./backoff.js";
import { type ConnectionState, Engine, type LogLevel, type Output, type StateChange } from "./engine.js";
import { abortError, type FetchLike, HttpClient, JobgateError, type TokenSource } from "./http.js";
import { LogBatcher, type LogOptions } from "./logs.js";
import type { Position } from "./order.js";
import { AsyncQueue } from "./queue.js";
import { ownerEventsOverSse, type SseContext, submitOverHttp, watchOverSse } from "./transport/sse.js";
import { type WebSocketConstructor, WebSocketTransport } from "./transport/websocket.js";
import type { JobEvent, JobList, JobRequest, JobSnapshot, Kind, Submitted, WatchItem } from "./types.js";

export type TransportChoice = "websocket" | "sse" | "auto";

/** setTimeout/clearTimeout, injectable (tests, a jumpable clock). */
export interface Timers {
  setTimeout(callback: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export interface JobgateClientOptions {
  /** The gateway's base URL, e.g. "http://127.0.0.1:8080". */
  url: string;
  /** Returns a bearer token; called before the first connection, before the token expires, and after a 401/4001. */
  getToken?: () => Promise<string> | string;
  /** A WebSocket class: optional in browsers, `ws`'s in Node. */
  WebSocket?: WebSocketConstructor;
  /** fetch (default: the global one). */
  fetch?: FetchLike;
  /**
   * "websocket" (default when a WebSocket class is available), "sse" (HTTP
   * only), or "auto": WebSocket, falling back to SSE when it cannot connect
   * `autoFallbackAfter` times in a row while HTTP works.
   */
  transport?: TransportChoice;
  /** Failed WebSocket connections before "auto" falls back to SSE (default 3). */
  autoFallbackAfter?: number;
  backoff?: Partial<BackoffOptions>;
  /** Refresh the token this long before it expires, ms (default 30 000). */
  tokenRefreshMarginMs?: number;
  /** The clock, ms (default Date.now). */
  clock?: () => number;
  /** Random numbers in [0, 1) for backoff jitter (default Math.random). */
  random?: () => number;
  timers?: Timers;
  /** How the WebSocket sends the token: default "header" with a passed-in class, "query" with the browser's. */
  tokenIn?: "header" | "query";
  /** The client's log lines to the gateway's `POST /v1/client-logs`. */
  logs?: LogOptions;
  /** Every log line of the client, locally (default: none). */
  logger?: (level: LogLevel, message: string, fields?: Record<string, unknown>) => void;
}

export interface SubmitOptions {
  /** Default: a fresh UUID, reused when the submit is sent again after a reconnect. */
  idempotencyKey?: string;
  signal?: AbortSignal;
  /** W3C trace context: the job's trace continues the app's. */
  traceparent?: string;
  tracestate?: string;
}

export interface WatchOptions {
  /** Deliver events after this seq (default: all of them). */
  after?: number;
  /** The epoch of the event `after` names (default 1). */
  afterEpoch?: number;
  signal?: AbortSignal;
}

export interface JobsQuery {
  cursor?: string;
  limit?: number;
  /** One status or several, comma-separated ("queued,running"). */
  status?: string;
  kind?: string;
}

/** Called with each state change: `change.state`, `change.reason`, and when reconnecting `retryInMs`. */
export type StateListener = (change: StateChange) => void;

interface PendingSubmit {
  resolve(result: Submitted): void;
  reject(error: unknown): void;
  job: JobRequest;
  idempotencyKey: string;
  traceparent?: string;
  tracestate?: string;
  signal?: AbortSignal;
}

const defaultTimers: Timers = {
  setTimeout: (callback, ms) => globalThis.setTimeout(callback, ms),
  clearTimeout: (handle) => globalThis.clearTimeout(handle as ReturnType<typeof setTimeout>),
};

/** A UUID v4: crypto.randomUUID where there is one (secure contexts), else from getRandomValues. */
export function randomUuid(): string {
  const crypto = globalThis.crypto;
  if (typeof crypto?.randomUUID === "function") {
    return crypto.randomUUID();
  }
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  bytes[6] = (bytes[6]! & 0x0f) | 0x40;
  bytes[8] = (bytes[8]! & 0x3f) | 0x80;
  const hex = [...bytes].map((byte) => byte.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** Ms until a JWT's `exp` by the local clock; null for a token that is not a JWT with one. */
export function jwtLifetimeMs(token: string, nowMs: number): number | null {
  const parts = token.split(".");
  if (parts.length !== 3) {
    return null;
  }
  try {
    const base64 = parts[1]!.replace(/-/g, "+").replace(/_/g, "/");
    const json = atob(base64 + "=".repeat((4 - (base64.length % 4)) % 4));
    const exp = (JSON.parse(json) as { exp?: unknown }).exp;
    return typeof exp === "number" ? Math.max(exp * 1000 - nowMs, 0) : null;
  } catch {
    return null;
  }
}

function baseUrl(url: string): string {
  return url.replace(/\/+$/, "");
}

function webSocketUrl(base: string): string {
  return `${base.replace(/^http/, "ws")}/v1/ws`;
}

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

  private token: string | null = null;
  private tokenFetch: Promise<string | null> | null = null;
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
    const fetchImpl = options.fetch ?? (globalThis.fetch?.bind(globalThis) as FetchLike | undefined);
    if (fetchImpl === undefined) {
      throw new TypeError("no fetch: pass options.fetch");
    }
    const tokens: TokenSource = {
      current: () => (this.token !== null || this.options.getToken === undefined ? Promise.resolve(this.token) : this.fetchToken()),
      refresh: () => this.fetchToken(),
      canRefresh: options.getToken !== undefined,
    };
    this.http = new HttpClient(base, fetchImpl, tokens);
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
    this.socket =
      WebSocketClass === null
        ? null
        : new WebSocketTransport(
            {
              url: webSocketUrl(base),
              WebSocket: WebSocketClass,
              tokenIn:
                options.tokenIn ??
                (options.WebSocket === undefined || options.WebSocket === (globalThis as { WebSocket?: unknown }).WebSocket
                  ? "query"
                  : "header"),
            },
            {
              opened: (connection, protocol) => this.apply(this.engine.opened(connection, protocol)),
              frame: (connection, value) => this.apply(this.engine.frame(connection, value)),
              closed: (connection, code, reason, status) =>
                this.apply(this.engine.closed(connection, code, reason, status)),
            },
          );
    this.removeBrowserListeners = this.listenToBrowser();
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
      return this.submitOverHttp(pending);
    }
    this.requestCount += 1;
    const requestId = `submit-${this.requestCount}`;
    const promise = new Promise<Submitted>((resolve, reject) => {
      pending.resolve = resolve;
      pending.reject = reject;
    });
    this.submits.set(requestId, pending);
    options.signal?.addEventListener(
      "abort",
      () => {
        if (this.submits.delete(requestId)) {
          pending.reject(abortError(options.signal));
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
    this.apply(this.engine.submit(requestId, job, submitOptions));
    return promise;
  }

  /**
   * A job's events, each once and in order, across reconnects; ends after
   * the terminal event. Lost history arrives as one `snapshot` item.
   */
  watch(jobId: string, options: WatchOptions = {}): AsyncIterableIterator<WatchItem> {
    const id = ++this.watchCount;
    const streamAbort = new AbortController();
    const queue = new AsyncQueue<WatchItem>(() => {
      streamAbort.abort();
      if (this.watches.delete(id)) {
        this.apply(this.engine.unwatch(id));
      }
    });
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
    const after: Position | undefined =
      options.after === undefined && options.afterEpoch === undefined
        ? undefined
        : { epoch: options.afterEpoch ?? 1, seq: options.after ?? 0 };
    this.ensureStarted();
    if (this.mode === "sse") {
      this.pipeSse(queue, jobId, after ?? { epoch: 1, seq: 0 }, streamAbort.signal);
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
    return this.http.json<JobSnapshot>(`/v1/jobs/${encodeURIComponent(jobId)}/cancel`, { method: "POST" });
  }

  /** A job's current state. */
  snapshot(jobId: string): Promise<JobSnapshot> {
    return this.http.json<JobSnapshot>(`/v1/jobs/${encodeURIComponent(jobId)}`);
  }

  /** The kinds workers serve, with their params schemas. */
  async kinds(): Promise<Kind[]> {
    const body = await this.http.json<{ kinds: Kind[] }>("/v1/kinds");
    return body.kinds;
  }

  /** A page of the caller's jobs, newest first. */
  jobs(query: JobsQuery = {}): Promise<JobList> {
    const params = new URLSearchParams();
    for (const [key, value] of Object.entries(query)) {
      if (value !== undefined) {
        params.set(key, String(value));
      }
    }
    const search = params.toString();
    return this.http.json<JobList>(`/v1/jobs${search ? `?${search}` : ""}`);
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
    if (this.timer !== null) {
      this.timers.clearTimeout(this.timer);
      this.timer = null;
    }
    this.setState({ state: "closed", reason: "closed by the app" });
    void this.logs?.close();
  }

  // ---- the engine's outputs ----

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
        this.fetchToken().then(
          (token) =>
            this.apply(
              token === null ? this.engine.tokenFailed("getToken returned nothing") : this.engine.tokenArrived(token, jwtLifetimeMs(token, this.clock())),
            ),
          (error: unknown) => this.apply(this.engine.tokenFailed(String(error))),
        );
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
      case "submitted": {
        const pending = this.submits.get(output.submit);
        this.submits.delete(output.submit);
        pending?.resolve(output.result);
        break;
      }
      case "submit_error": {
        const pending = this.submits.get(output.submit);
        this.submits.delete(output.submit);
        pending?.reject(new JobgateError(output.error));
        break;
      }
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

  private setTimer(at: number | null): void {
    if (this.timer !== null) {
      this.timers.clearTimeout(this.timer);
      this.timer = null;
    }
    if (at === null || this.isClosed) {
      return;
    }
    this.timer = this.timers.setTimeout(() => {
      this.timer = null;
      this.apply(this.engine.tick());
    }, Math.max(0, at - this.clock()));
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

  /** One getToken() at a time; its result is shared. */
  private fetchToken(): Promise<string | null> {
    const getToken = this.options.getToken;
    if (getToken === undefined) {
      return Promise.resolve(null);
    }
    if (this.tokenFetch === null) {
      this.tokenFetch = (async () => {
        try {
          const token = await getToken();
          this.token = token;
          return token;
        } finally {
          this.tokenFetch = null;
        }
      })();
    }
    return this.tokenFetch;
  }

  private sleep(ms: number, signal?: AbortSignal): Promise<void> {
    return new Promise((resolve, reject) => {
      const signals = signal === undefined ? this.closing.signal : AbortSignal.any([signal, this.closing.signal]);
      if (signals.aborted) {
        reject(abortError(signals));
        return;
      }
      const onAbort = () => {
        this.timers.clearTimeout(handle);
        reject(abortError(signals));
      };
      const handle = this.timers.setTimeout(() => {
        signals.removeEventListener("abort", onAbort);
        resolve();
      }, ms);
      signals.addEventListener("abort", onAbort, { once: true });
    });
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

  private pipeSse(queue: AsyncQueue<WatchItem>, jobId: string, after: Position, signal: AbortSignal): void {
    const signals = AbortSignal.any([signal, this.closing.signal]);
    void (async () => {
      try {
        for await (const item of watchOverSse(this.sse, jobId, after, signals)) {
          queue.push(item);
        }
        queue.end();
      } catch (error) {
        if (this.closing.signal.aborted) {
          queue.end();
        } else {
          queue.fail(error);
        }
      }
    })();
  }

  private async submitOverHttp(pending: PendingSubmit): Promise<Submitted> {
    const options: { idempotencyKey: string; traceparent?: string; tracestate?: string; signal?: AbortSignal } = {
      idempotencyKey: pending.idempotencyKey,
      signal: pending.signal === undefined ? this.closing.signal : AbortSignal.any([pending.signal, this.closing.signal]),
    };
    if (pending.traceparent !== undefined) options.traceparent = pending.traceparent;
    if (pending.tracestate !== undefined) options.tracestate = pending.tracestate;
    try {
      return await submitOverHttp(this.sse, pending.job, options);
    } catch (error) {
      throw this.closing.signal.aborted ? closedError() : error;
    }
  }

  /**
   * "auto": when WebSocket never connected and failed `autoFallbackAfter`
   * times while HTTP answers, move everything to SSE + HTTP: submits not
   * yet accepted go over HTTP with their idempotency keys, watches resume
   * over SSE from where they are.
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
        this.log("warn", "WebSocket cannot connect but HTTP works: using SSE", {});
        this.mode = "sse";
        const { submits, watches } = this.engine.drain();
        if (this.timer !== null) {
          this.timers.clearTimeout(this.timer);
          this.timer = null;
        }
        this.setState({ state: "connected", reason: "WebSocket unavailable; using HTTP and SSE" });
        for (const frame of submits) {
          const pending = this.submits.get(frame.request_id);
          this.submits.delete(frame.request_id);
          if (pending !== undefined) {
            this.submitOverHttp(pending).then(pending.resolve, pending.reject);
          }
        }
        for (const { watch, jobId, position } of watches) {
          const queue = this.watches.get(watch);
          this.watches.delete(watch);
          if (queue !== undefined) {
            const abort = new AbortController();
            this.pipeSse(queue, jobId, position, abort.signal);
          }
        }
      })
      .catch(() => undefined)
      .finally(() => {
        this.probing = false;
      });
  }

  /** Browsers: retry at once when the network or the page comes back. */
  private listenToBrowser(): () => void {
    const target = globalThis as {
      addEventListener?: (type: string, listener: () => void) => void;
      removeEventListener?: (type: string, listener: () => void) => void;
      document?: { visibilityState?: string; addEventListener?: (type: string, listener: () => void) => void; removeEventListener?: (type: string, listener: () => void) => void };
    };
    if (typeof target.addEventListener !== "function" || target.document === undefined) {
      return () => undefined;
    }
    const onOnline = () => this.online();
    const onVisible = () => {
      if (target.document?.visibilityState === "visible") {
        onOnline();
      }
    };
    target.addEventListener("online", onOnline);
    target.document.addEventListener?.("visibilitychange", onVisible);
    return () => {
      target.removeEventListener?.("online", onOnline);
      target.document?.removeEventListener?.("visibilitychange", onVisible);
    };
  }
}

function closedError(): JobgateError {
  return new JobgateError({ code: "client_closed", message: "the client is closed" });
}
