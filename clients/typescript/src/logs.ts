// The client's own log lines, batched to `POST /v1/client-logs`
// (proto-schemas/schemas/client_logs.json) so they join the gateway's.
// Sent only when there is something to send: never a request on a timer
// by itself.

import type { LogLevel } from "./engine.js";
import type { HttpClient } from "./http.js";

export interface LogOptions {
  /** Send log lines to the gateway (default false). */
  enabled: boolean;
  /** Lowest level sent (default "info"). */
  level?: LogLevel;
  /** The `service` field (default "jobgate-client"). */
  service?: string;
  /** A batch waits at most this long for more lines, ms (default 5000). */
  flushIntervalMs?: number;
  /** Lines per batch (default 100; the gateway takes at most 500). */
  maxBatch?: number;
}

export interface LogRecord {
  timestamp: string;
  level: LogLevel;
  message: string;
  service: string;
  [field: string]: unknown;
}

const LEVELS: Record<LogLevel, number> = { debug: 0, info: 1, warn: 2, error: 3 };
/** Extra fields per record the gateway keeps (32), and string length (8 KiB). */
const MAX_FIELDS = 32;
const MAX_STRING = 8_192;
/** Lines kept while the gateway cannot be reached; older ones are dropped. */
const MAX_QUEUED = 1_000;
const RESERVED = new Set(["timestamp", "level", "message", "service"]);

type Timers = {
  setTimeout(callback: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
};

function clip(value: unknown): unknown {
  if (typeof value === "string") {
    return value.length > MAX_STRING ? value.slice(0, MAX_STRING) : value;
  }
  if (value === null || typeof value === "number" || typeof value === "boolean") {
    return value;
  }
  return clip(JSON.stringify(value) ?? String(value));
}

/** One record in the shared log schema; extra fields flattened and bounded. */
export function logRecord(
  service: string,
  level: LogLevel,
  message: string,
  fields: Record<string, unknown> = {},
  now: number = Date.now(),
): LogRecord {
  const record: LogRecord = {
    timestamp: new Date(now).toISOString(),
    level,
    message: clip(message) as string,
    service,
  };
  let count = 0;
  for (const [key, value] of Object.entries(fields)) {
    if (value === undefined || RESERVED.has(key) || count >= MAX_FIELDS) {
      continue;
    }
    record[key] = clip(value);
    count += 1;
  }
  return record;
}

export class LogBatcher {
  private queued: LogRecord[] = [];
  private timer: unknown = null;
  private sending = false;
  private readonly service: string;
  private readonly minimum: number;
  private readonly flushIntervalMs: number;
  private readonly maxBatch: number;

  constructor(
    options: LogOptions,
    private readonly http: HttpClient,
    private readonly timers: Timers,
    private readonly clock: () => number,
  ) {
    this.service = options.service ?? "jobgate-client";
    this.minimum = LEVELS[options.level ?? "info"];
    this.flushIntervalMs = options.flushIntervalMs ?? 5_000;
    this.maxBatch = Math.min(options.maxBatch ?? 100, 500);
  }

  add(level: LogLevel, message: string, fields?: Record<string, unknown>): void {
    if (LEVELS[level] < this.minimum) {
      return;
    }
    this.queued.push(logRecord(this.service, level, message, fields, this.clock()));
    if (this.queued.length > MAX_QUEUED) {
      this.queued.splice(0, this.queued.length - MAX_QUEUED);
    }
    if (this.queued.length >= this.maxBatch) {
      void this.flush();
    } else if (this.timer === null) {
      this.timer = this.timers.setTimeout(() => {
        this.timer = null;
        void this.flush();
      }, this.flushIntervalMs);
    }
  }

  /** Sends what is queued now. Failed batches are kept for the next flush. */
  async flush(): Promise<void> {
    if (this.sending || this.queued.length === 0) {
      return;
    }
    if (this.timer !== null) {
      this.timers.clearTimeout(this.timer);
      this.timer = null;
    }
    this.sending = true;
    const batch = this.queued.splice(0, this.maxBatch);
    try {
      const response = await this.http.send("/v1/client-logs", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ records: batch }),
      });
      await response.body?.cancel().catch(() => undefined);
      if (response.status >= 500 || response.status === 429) {
        this.queued.unshift(...batch);
      }
    } catch {
      this.queued.unshift(...batch);
    } finally {
      this.sending = false;
    }
  }

  close(): Promise<void> {
    if (this.timer !== null) {
      this.timers.clearTimeout(this.timer);
      this.timer = null;
    }
    return this.flush();
  }
}
