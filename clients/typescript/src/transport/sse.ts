// The fallback where WebSocket is blocked: job events over Server-Sent
// Events read with `fetch` streaming (so it can send `Authorization` and
// `Last-Event-ID`, which EventSource cannot), submits over HTTP. Also the
// owner feed (`GET /v1/events`), which the WebSocket session does not have.

import { backoffDelay, type BackoffOptions } from "../backoff.js";
import { abortError, errorOf, type HttpClient, isTransientStatus, JobgateError, type Sleep } from "../http.js";
import { EventOrder, formatEventId, type Position } from "../order.js";
import {
  isHistoryTruncated,
  isJobEvent,
  isTerminal,
  type JobEvent,
  type JobRequest,
  normalizeEvent,
  type Submitted,
  type WatchItem,
} from "../types.js";

/** One message of an event stream. */
export interface SseMessage {
  /** The stream's last event id after this message (ids persist, per the SSE spec). */
  lastEventId: string;
  /** Whether this message set the id itself. */
  hasId: boolean;
  event: string;
  data: string;
}

/** The text/event-stream format, fed in chunks of any size. Pure. */
export class SseParser {
  private pending = "";
  private data: string[] = [];
  private event = "";
  private hasId = false;
  private lastEventId = "";

  push(chunk: string): SseMessage[] {
    this.pending += chunk;
    const messages: SseMessage[] = [];
    for (;;) {
      const end = this.pending.search(/\r\n|\r|\n/);
      if (end < 0) {
        break;
      }
      // A lone \r at the very end may be the first half of \r\n.
      if (this.pending[end] === "\r" && end === this.pending.length - 1) {
        break;
      }
      const line = this.pending.slice(0, end);
      const newline = this.pending.startsWith("\r\n", end) ? 2 : 1;
      this.pending = this.pending.slice(end + newline);
      const message = this.line(line);
      if (message !== null) {
        messages.push(message);
      }
    }
    return messages;
  }

  private line(line: string): SseMessage | null {
    if (line === "") {
      if (this.data.length === 0) {
        this.event = "";
        this.hasId = false;
        return null;
      }
      const message: SseMessage = {
        lastEventId: this.lastEventId,
        hasId: this.hasId,
        event: this.event || "message",
        data: this.data.join("\n"),
      };
      this.data = [];
      this.event = "";
      this.hasId = false;
      return message;
    }
    if (line.startsWith(":")) {
      return null; // a comment (keep-alive)
    }
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) {
      value = value.slice(1);
    }
    switch (field) {
      case "data":
        this.data.push(value);
        break;
      case "event":
        this.event = value;
        break;
      case "id":
        if (!value.includes("\0")) {
          this.lastEventId = value;
          this.hasId = true;
        }
        break;
      default:
        break; // retry: and unknown fields
    }
    return null;
  }
}

/** The messages of a streaming response, as they arrive. */
export async function* readSse(response: Response, signal?: AbortSignal): AsyncGenerator<SseMessage> {
  if (response.body === null) {
    return;
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  const parser = new SseParser();
  const onAbort = () => void reader.cancel().catch(() => undefined);
  signal?.addEventListener("abort", onAbort, { once: true });
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) {
        break;
      }
      yield* parser.push(decoder.decode(value, { stream: true }));
    }
  } finally {
    signal?.removeEventListener("abort", onAbort);
    reader.cancel().catch(() => undefined);
  }
}

/** What the SSE streams need from the client. */
export interface SseContext {
  http: HttpClient;
  sleep: Sleep;
  backoff: BackoffOptions;
  random: () => number;
  /** A stream connected (true) or is waiting to reconnect (false, with why and how long). */
  onConnection?(connected: boolean, reason: string, retryInMs?: number): void;
}

async function waitBeforeRetry(
  context: SseContext,
  failures: number,
  reason: string,
  signal?: AbortSignal,
): Promise<void> {
  const delay = backoffDelay(context.backoff, failures, context.random);
  context.onConnection?.(false, reason, delay);
  await context.sleep(delay, signal);
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

/**
 * One job's events from after `after`, each once and in order, across
 * dropped streams (resumed with `Last-Event-ID`); ends after the terminal
 * event.
 */
export async function* watchOverSse(
  context: SseContext,
  jobId: string,
  after: Position,
  signal?: AbortSignal,
): AsyncGenerator<WatchItem> {
  const order = new EventOrder(after);
  let failures = 0;
  for (;;) {
    if (signal?.aborted) {
      throw abortError(signal);
    }
    const headers: Record<string, string> = { Accept: "text/event-stream" };
    const position = order.position;
    if (position.seq > 0 || position.epoch > 1) {
      headers["Last-Event-ID"] = formatEventId(position);
    }
    let response: Response;
    try {
      response = await context.http.send(`/v1/jobs/${encodeURIComponent(jobId)}/events`, {
        headers,
        signal: signal ?? null,
      });
    } catch (error) {
      if (signal?.aborted) {
        throw abortError(signal);
      }
      await waitBeforeRetry(context, failures++, `event stream failed: ${String(error)}`, signal);
      continue;
    }
    if (response.status === 204) {
      return; // nothing after the terminal event
    }
    if (!response.ok) {
      if (isTransientStatus(response.status)) {
        await response.body?.cancel().catch(() => undefined);
        await waitBeforeRetry(context, failures++, `event stream answered ${response.status}`, signal);
        continue;
      }
      throw await errorOf(response);
    }
    failures = 0;
    context.onConnection?.(true, "event stream open");
    for await (const message of readSse(response, signal)) {
      const value = parseJson(message.data);
      if (message.event === "history_truncated") {
        if (isHistoryTruncated(value)) {
          const snapshot = order.truncated(value);
          if (snapshot !== null) {
            yield snapshot;
          }
        }
        continue;
      }
      if (!isJobEvent(value)) {
        continue;
      }
      for (const event of order.offer(normalizeEvent(value))) {
        yield event;
        if (isTerminal(event)) {
          return;
        }
      }
    }
    if (signal?.aborted) {
      throw abortError(signal);
    }
    await waitBeforeRetry(context, failures++, "event stream ended early", signal);
  }
}

/** How many jobs the owner feed remembers positions of, for de-duplication. */
const OWNER_FEED_JOBS = 10_000;

/**
 * Every event of the caller's jobs from now on (`GET /v1/events`), across
 * dropped streams: resumed with `Last-Event-ID` = the last event's `ts`,
 * de-duplicated by `(job_id, epoch, seq)`. Never ends by itself.
 */
export async function* ownerEventsOverSse(context: SseContext, signal?: AbortSignal): AsyncGenerator<JobEvent> {
  const positions = new Map<string, Position>();
  let lastId: string | null = null;
  let failures = 0;
  for (;;) {
    if (signal?.aborted) {
      throw abortError(signal);
    }
    const headers: Record<string, string> = { Accept: "text/event-stream" };
    if (lastId !== null) {
      headers["Last-Event-ID"] = lastId;
    }
    let response: Response;
    try {
      response = await context.http.send("/v1/events", { headers, signal: signal ?? null });
    } catch (error) {
      if (signal?.aborted) {
        throw abortError(signal);
      }
      await waitBeforeRetry(context, failures++, `event feed failed: ${String(error)}`, signal);
      continue;
    }
    if (!response.ok) {
      if (isTransientStatus(response.status)) {
        await response.body?.cancel().catch(() => undefined);
        await waitBeforeRetry(context, failures++, `event feed answered ${response.status}`, signal);
        continue;
      }
      throw await errorOf(response);
    }
    failures = 0;
    context.onConnection?.(true, "event feed open");
    for await (const message of readSse(response, signal)) {
      if (message.hasId) {
        lastId = message.lastEventId;
      }
      const value = parseJson(message.data);
      if (!isJobEvent(value)) {
        continue;
      }
      const event = normalizeEvent(value);
      const seen = positions.get(event.job_id);
      if (seen !== undefined && (event.epoch < seen.epoch || (event.epoch === seen.epoch && event.seq <= seen.seq))) {
        continue;
      }
      positions.delete(event.job_id);
      positions.set(event.job_id, { epoch: event.epoch, seq: event.seq });
      if (positions.size > OWNER_FEED_JOBS) {
        const oldest = positions.keys().next().value as string;
        positions.delete(oldest);
      }
      yield event;
    }
    if (signal?.aborted) {
      throw abortError(signal);
    }
    await waitBeforeRetry(context, failures++, "event feed ended", signal);
  }
}

/**
 * Submits over HTTP with an idempotency key: a request that may or may not
 * have reached the gateway is sent again with the same key, so the job is
 * created once.
 */
export async function submitOverHttp(
  context: SseContext,
  job: JobRequest,
  options: { idempotencyKey: string; traceparent?: string; tracestate?: string; signal?: AbortSignal },
): Promise<Submitted> {
  const headers: Record<string, string> = {
    "Content-Type": "application/json",
    Accept: "application/json",
    "Idempotency-Key": options.idempotencyKey,
  };
  if (options.traceparent !== undefined) {
    headers.traceparent = options.traceparent;
  }
  if (options.tracestate !== undefined) {
    headers.tracestate = options.tracestate;
  }
  const { signal } = options;
  for (let failures = 0; ; failures += 1) {
    if (signal?.aborted) {
      throw abortError(signal);
    }
    let response: Response;
    try {
      response = await context.http.send("/v1/jobs", {
        method: "POST",
        headers,
        body: JSON.stringify(job),
        signal: signal ?? null,
      });
    } catch (error) {
      if (signal?.aborted) {
        throw abortError(signal);
      }
      await waitBeforeRetry(context, failures, `submit failed: ${String(error)}`, signal);
      continue;
    }
    if (response.ok) {
      const body = (await response.json()) as Submitted;
      return { job_id: body.job_id, trace_id: body.trace_id };
    }
    if (!isTransientStatus(response.status)) {
      throw await errorOf(response);
    }
    await response.body?.cancel().catch(() => undefined);
    await waitBeforeRetry(context, failures, `submit answered ${response.status}`, signal);
  }
}

export { JobgateError };
