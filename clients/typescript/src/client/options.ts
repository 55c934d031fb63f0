// The client's options and the shapes of its calls' options.

import type { BackoffOptions } from "../backoff.js";
import type { LogLevel, StateChange } from "../engine.js";
import type { FetchLike } from "../http.js";
import type { LogOptions } from "../logs.js";
import type { WebSocketConstructor } from "../transport/websocket.js";

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

export const defaultTimers: Timers = {
  setTimeout: (callback, ms) => globalThis.setTimeout(callback, ms),
  clearTimeout: (handle) => globalThis.clearTimeout(handle as ReturnType<typeof setTimeout>),
};
