// What the engine speaks: its outputs, its options and defaults, and the
// close codes of PROTOCOL.md. Shared by the engine's parts; re-exported by
// engine.ts, the public entry.

import type { BackoffOptions } from "../backoff.js";
import type { ClientFrame, ErrorBody, Submitted, WatchItem } from "../types.js";

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

/** Close codes (PROTOCOL.md, "Sessions"). */
export const CLOSE_NORMAL = 1000;
export const CLOSE_GOING_AWAY = 1001;
export const CLOSE_PING_TIMEOUT = 4000;
export const CLOSE_TOKEN_EXPIRED = 4001;
export const CLOSE_SLOW_CONSUMER = 4008;

/** What the engine's parts may ask of the engine core: the clock, the session, the output list. */
export interface EngineHost {
  now(): number;
  /** Whether a session is open (frames can be sent). */
  isOpen(): boolean;
  send(frame: ClientFrame): void;
  emit(output: Output): void;
  log(level: LogLevel, message: string, fields?: Record<string, unknown>): void;
}
