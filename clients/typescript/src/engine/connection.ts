// The connection lifecycle's bookkeeping: when to try again (full-jitter
// backoff over the failures in a row), when to ping and when a silent
// connection counts as dead, and how a close reads in a state change.
// No outputs: the engine core decides what each transition sends.

import { backoffDelay, type BackoffOptions } from "../backoff.js";

const CLOSE_NAMES: Record<number, string> = {
  1000: "normal",
  1001: "gateway going away",
  1006: "connection lost",
  1011: "gateway error",
  4000: "ping unanswered",
  4001: "token expired",
  4008: "slow consumer",
};

/** The reason of a state change after the socket closed (or never opened). */
export function closeText(code: number, reason: string, wasOpen: boolean, httpStatus?: number): string {
  const name = CLOSE_NAMES[code] ?? "closed";
  if (httpStatus !== undefined) {
    return `connection refused (HTTP ${httpStatus})`;
  }
  if (!wasOpen) {
    return `could not connect${reason ? `: ${reason}` : ""}`;
  }
  return `closed by server (${code} ${name}${reason ? `: ${reason}` : ""})`;
}

/** Failed attempts in a row and the time of the next one. */
export class Reconnects {
  /** Consecutive failed connection attempts (reset by a successful open). */
  failures = 0;
  /** When to try again; null: not waiting. */
  at: number | null = null;

  constructor(
    private readonly backoff: BackoffOptions,
    private readonly random: () => number,
  ) {}

  /** Counts a failure and sets the next attempt; returns the wait, ms. */
  schedule(now: number, immediate: boolean): number {
    const delay = immediate && this.failures === 0 ? 0 : backoffDelay(this.backoff, this.failures, this.random);
    this.failures += 1;
    this.at = now + delay;
    return delay;
  }

  isDue(now: number): boolean {
    return this.at !== null && now >= this.at;
  }
}

/** App-level pings and dead-connection detection of the open session. */
export class Liveness {
  intervalMs: number;
  timeoutMs: number;
  private lastFrameAt = 0;
  private nextPingAt: number | null = null;

  constructor(
    private readonly defaultIntervalMs: number,
    private readonly defaultTimeoutMs: number,
  ) {
    this.intervalMs = defaultIntervalMs;
    this.timeoutMs = defaultTimeoutMs;
  }

  /** A session opened: the defaults until its `hello`. */
  opened(now: number): void {
    this.intervalMs = this.defaultIntervalMs;
    this.timeoutMs = this.defaultTimeoutMs;
    this.lastFrameAt = now;
    this.nextPingAt = now + this.intervalMs;
  }

  /** The gateway's `hello` sized the timers. */
  hello(intervalMs: number, timeoutMs: number, now: number): void {
    this.intervalMs = intervalMs;
    this.timeoutMs = timeoutMs;
    this.nextPingAt = now + this.intervalMs;
  }

  heard(now: number): void {
    this.lastFrameAt = now;
  }

  stop(): void {
    this.nextPingAt = null;
  }

  silentFor(now: number): number {
    return now - this.lastFrameAt;
  }

  isDead(now: number): boolean {
    return now - this.lastFrameAt >= this.timeoutMs;
  }

  /** Whether a ping is due now; if so, the next one is scheduled. */
  takePing(now: number): boolean {
    if (this.nextPingAt === null || now < this.nextPingAt) {
      return false;
    }
    this.nextPingAt = now + this.intervalMs;
    return true;
  }

  /** The times tick() must come for an open session. */
  deadlines(): number[] {
    const times = [this.lastFrameAt + this.timeoutMs];
    if (this.nextPingAt !== null) {
      times.push(this.nextPingAt);
    }
    return times;
  }
}
