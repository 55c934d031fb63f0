// src/backoff.ts
var DEFAULT_BACKOFF = { initialMs: 500, maxMs: 3e4 };
function backoffBound(options, failures) {
  const exponent = Math.min(failures, 52);
  return Math.min(options.maxMs, options.initialMs * 2 ** exponent);
}
function backoffDelay(options, failures, random) {
  const draw = Math.min(Math.max(random(), 0), 1);
  return Math.floor(draw * backoffBound(options, failures));
}

// src/client/browser.ts
function listenToBrowser(onOnline) {
  const target = globalThis;
  if (typeof target.addEventListener !== "function" || target.document === void 0) {
    return () => void 0;
  }
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

// src/http.ts
var JobgateError = class extends Error {
  code;
  status;
  field;
  constructor(body, status) {
    super(body.message);
    this.name = "JobgateError";
    this.code = body.code;
    this.status = status;
    this.field = body.field;
  }
};
function abortError(signal) {
  const reason = signal?.reason;
  if (reason instanceof Error) {
    return reason;
  }
  const error = new Error("the operation was aborted");
  error.name = "AbortError";
  return error;
}
var HttpClient = class {
  constructor(baseUrl2, fetchImpl, tokens) {
    this.baseUrl = baseUrl2;
    this.fetchImpl = fetchImpl;
    this.tokens = tokens;
  }
  baseUrl;
  fetchImpl;
  tokens;
  url(path) {
    return this.baseUrl + path;
  }
  /** A request with the token; after a 401 one fresh token and one more try. */
  async send(path, init = {}) {
    const request = (token2) => {
      const headers = new Headers(init.headers);
      if (token2 !== null && token2 !== "") {
        headers.set("Authorization", `Bearer ${token2}`);
      }
      return this.fetchImpl(this.url(path), { ...init, headers });
    };
    const token = await this.tokens.current();
    const response = await request(token);
    if (response.status !== 401 || !this.tokens.canRefresh) {
      return response;
    }
    await response.body?.cancel().catch(() => void 0);
    return request(await this.tokens.refresh());
  }
  /** A JSON request; a non-2xx answer throws its error body. */
  async json(path, init = {}, body) {
    const headers = new Headers(init.headers);
    headers.set("Accept", "application/json");
    if (body !== void 0) {
      headers.set("Content-Type", "application/json");
    }
    const request = { ...init, headers };
    if (body !== void 0) {
      request.body = JSON.stringify(body);
    }
    const response = await this.send(path, request);
    if (!response.ok) {
      throw await errorOf(response);
    }
    return await response.json();
  }
};
async function errorOf(response) {
  let body = { code: "http_error", message: `HTTP ${response.status}` };
  try {
    const parsed = await response.json();
    if (typeof parsed === "object" && parsed !== null && typeof parsed.code === "string" && typeof parsed.message === "string") {
      body = parsed;
    }
  } catch {
  }
  return new JobgateError(body, response.status);
}
function isTransientStatus(status) {
  return status === 408 || status === 429 || status >= 500;
}

// src/client/helpers.ts
function randomUuid() {
  const crypto = globalThis.crypto;
  if (typeof crypto?.randomUUID === "function") {
    return crypto.randomUUID();
  }
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  bytes[6] = bytes[6] & 15 | 64;
  bytes[8] = bytes[8] & 63 | 128;
  const hex = [...bytes].map((byte) => byte.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}
function jwtLifetimeMs(token, nowMs) {
  const parts = token.split(".");
  if (parts.length !== 3) {
    return null;
  }
  try {
    const base64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
    const json = atob(base64 + "=".repeat((4 - base64.length % 4) % 4));
    const exp = JSON.parse(json).exp;
    return typeof exp === "number" ? Math.max(exp * 1e3 - nowMs, 0) : null;
  } catch {
    return null;
  }
}
function baseUrl(url) {
  return url.replace(/\/+$/, "");
}
function webSocketUrl(base) {
  return `${base.replace(/^http/, "ws")}/v1/ws`;
}
function closedError() {
  return new JobgateError({ code: "client_closed", message: "the client is closed" });
}
function sleep(timers, ms, signals) {
  return new Promise((resolve, reject) => {
    if (signals.aborted) {
      reject(abortError(signals));
      return;
    }
    const onAbort = () => {
      timers.clearTimeout(handle);
      reject(abortError(signals));
    };
    const handle = timers.setTimeout(() => {
      signals.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signals.addEventListener("abort", onAbort, { once: true });
  });
}
function watchAfter(options) {
  return options.after === void 0 && options.afterEpoch === void 0 ? void 0 : { epoch: options.afterEpoch ?? 1, seq: options.after ?? 0 };
}

// src/order.ts
var START = Object.freeze({ epoch: 1, seq: 0 });
function comparePositions(a, b) {
  return a.epoch !== b.epoch ? a.epoch - b.epoch : a.seq - b.seq;
}
function formatEventId(position) {
  return position.epoch === 1 ? String(position.seq) : `${position.epoch}:${position.seq}`;
}
function parseEventId(id) {
  const match = /^(?:(\d+):)?(\d+)$/.exec(id.trim());
  if (!match) {
    return null;
  }
  const epoch = match[1] === void 0 ? 1 : Number(match[1]);
  const seq = Number(match[2]);
  return Number.isSafeInteger(epoch) && epoch >= 1 && Number.isSafeInteger(seq) ? { epoch, seq } : null;
}
var MAX_HELD_EVENTS = 256;
var EventOrder = class {
  current;
  /** Early events of the current epoch, by seq. */
  held = /* @__PURE__ */ new Map();
  constructor(after = START) {
    this.current = { ...after };
  }
  get position() {
    return { ...this.current };
  }
  /** Events held back while an earlier one is missing. */
  get heldCount() {
    return this.held.size;
  }
  /** Takes one event; returns the events now due, in order (maybe none). */
  offer(event) {
    const at = { epoch: event.epoch, seq: event.seq };
    if (comparePositions(at, this.current) <= 0) {
      return [];
    }
    if (at.epoch > this.current.epoch) {
      this.held.clear();
      this.current = at;
      return [event, ...this.drain()];
    }
    if (at.seq !== this.current.seq + 1) {
      this.held.set(at.seq, event);
      return [];
    }
    this.current = at;
    return [event, ...this.drain()];
  }
  /**
   * The history starts at `first_seq` now: the snapshot stands in for what
   * was lost, and the events from `first_seq` on follow. Null when the
   * reader already has everything before `first_seq`.
   */
  truncated(message) {
    if (message.first_seq - 1 <= this.current.seq) {
      return null;
    }
    const seq = message.first_seq - 1;
    this.current = { epoch: this.current.epoch, seq };
    for (const held of [...this.held.keys()]) {
      if (held <= seq) {
        this.held.delete(held);
      }
    }
    return {
      type: "snapshot",
      job_id: message.job_id,
      snapshot: message.snapshot,
      first_seq: message.first_seq,
      seq,
      epoch: this.current.epoch,
      event: "snapshot",
      data: message.snapshot
    };
  }
  drain() {
    const due = [];
    for (; ; ) {
      const next = this.held.get(this.current.seq + 1);
      if (next === void 0) {
        break;
      }
      this.held.delete(next.seq);
      this.current = { epoch: next.epoch, seq: next.seq };
      due.push(next);
    }
    return due;
  }
};

// src/types.ts
var TERMINAL_EVENTS = /* @__PURE__ */ new Set(["completed", "failed", "cancelled"]);
var JOB_STATUSES = /* @__PURE__ */ new Set(["queued", "running", "completed", "failed", "cancelled"]);
var TERMINAL_STATUSES = /* @__PURE__ */ new Set(["completed", "failed", "cancelled"]);
var SUBPROTOCOL = "jobgate.v1";
function isObject(value) {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}
function isString(value) {
  return typeof value === "string";
}
function isCount(value, minimum) {
  return typeof value === "number" && Number.isInteger(value) && value >= minimum;
}
function isOptional(value, check) {
  return value === void 0 || check(value);
}
var EVENT_TYPES = /* @__PURE__ */ new Set([
  "queued",
  "started",
  "progress",
  "retrying",
  "completed",
  "failed",
  "cancelled"
]);
function isJobEvent(value) {
  return isObject(value) && value.type === "event" && isString(value.job_id) && isCount(value.seq, 1) && // Protocol 1 events carry no epoch: read as epoch 1 (see normalizeEvent).
  isOptional(value.epoch, (epoch) => isCount(epoch, 1)) && isString(value.event) && EVENT_TYPES.has(value.event) && isObject(value.data) && isCount(value.ts, 0) && isString(value.trace_id);
}
function isJobSnapshot(value) {
  return isObject(value) && isString(value.job_id) && isString(value.kind) && isString(value.status) && isCount(value.seq, 0) && isOptional(value.epoch, (epoch) => isCount(epoch, 1)) && isString(value.trace_id);
}
function isHistoryTruncated(value) {
  return isObject(value) && isOptional(value.type, (type) => type === "history_truncated") && isString(value.job_id) && isCount(value.after, 0) && isCount(value.first_seq, 1) && isJobSnapshot(value.snapshot);
}
function parseServerFrame(value) {
  if (!isObject(value) || !isString(value.type)) {
    return null;
  }
  switch (value.type) {
    case "hello":
      return isString(value.protocol) && isString(value.session_id) && isCount(value.ping_interval_ms, 1) && isCount(value.ping_timeout_ms, 1) && isOptional(value.token_expires_in_ms, (ms) => ms === null || isCount(ms, 0)) ? value : null;
    case "auth_ok":
      return isOptional(value.request_id, isString) && isOptional(value.token_expires_in_ms, (ms) => ms === null || isCount(ms, 0)) ? value : null;
    case "accepted":
      return isString(value.request_id) && isString(value.job_id) && isString(value.trace_id) ? value : null;
    case "event":
      return isJobEvent(value) ? normalizeEvent(value) : null;
    case "error":
      return isString(value.code) && isString(value.message) && isOptional(value.request_id, isString) && isOptional(value.job_id, isString) ? value : null;
    case "pong":
      return { type: "pong" };
    case "history_truncated":
      return isHistoryTruncated(value) ? value : null;
    case "subscribed":
      return isString(value.job_id) && isString(value.status) && JOB_STATUSES.has(value.status) && isCount(value.epoch, 1) && isCount(value.seq, 0) ? value : null;
    default:
      return null;
  }
}
function normalizeEvent(event) {
  return event.epoch === void 0 ? { ...event, epoch: 1 } : event;
}
function isTerminal(event) {
  return TERMINAL_EVENTS.has(event.event);
}

// src/transport/sse.ts
var SseParser = class {
  pending = "";
  data = [];
  event = "";
  hasId = false;
  lastEventId = "";
  push(chunk) {
    this.pending += chunk;
    const messages = [];
    for (; ; ) {
      const end = this.pending.search(/\r\n|\r|\n/);
      if (end < 0) {
        break;
      }
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
  line(line) {
    if (line === "") {
      if (this.data.length === 0) {
        this.event = "";
        this.hasId = false;
        return null;
      }
      const message = {
        lastEventId: this.lastEventId,
        hasId: this.hasId,
        event: this.event || "message",
        data: this.data.join("\n")
      };
      this.data = [];
      this.event = "";
      this.hasId = false;
      return message;
    }
    if (line.startsWith(":")) {
      return null;
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
        break;
    }
    return null;
  }
};
async function* readSse(response, signal) {
  if (response.body === null) {
    return;
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  const parser = new SseParser();
  const onAbort = () => void reader.cancel().catch(() => void 0);
  signal?.addEventListener("abort", onAbort, { once: true });
  try {
    for (; ; ) {
      const { done, value } = await reader.read();
      if (done) {
        break;
      }
      yield* parser.push(decoder.decode(value, { stream: true }));
    }
  } finally {
    signal?.removeEventListener("abort", onAbort);
    reader.cancel().catch(() => void 0);
  }
}
async function waitBeforeRetry(context, failures, reason, signal) {
  const delay = backoffDelay(context.backoff, failures, context.random);
  context.onConnection?.(false, reason, delay);
  await context.sleep(delay, signal);
}
function parseJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return void 0;
  }
}
async function* watchOverSse(context, jobId, after, signal) {
  const order = new EventOrder(after);
  let failures = 0;
  for (; ; ) {
    if (signal?.aborted) {
      throw abortError(signal);
    }
    const headers = { Accept: "text/event-stream" };
    const position = order.position;
    if (position.seq > 0 || position.epoch > 1) {
      headers["Last-Event-ID"] = formatEventId(position);
    }
    let response;
    try {
      response = await context.http.send(`/v1/jobs/${encodeURIComponent(jobId)}/events`, {
        headers,
        signal: signal ?? null
      });
    } catch (error) {
      if (signal?.aborted) {
        throw abortError(signal);
      }
      await waitBeforeRetry(context, failures++, `event stream failed: ${String(error)}`, signal);
      continue;
    }
    if (response.status === 204) {
      return;
    }
    if (!response.ok) {
      if (isTransientStatus(response.status)) {
        await response.body?.cancel().catch(() => void 0);
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
var OWNER_FEED_JOBS = 1e4;
async function* ownerEventsOverSse(context, signal) {
  const positions = /* @__PURE__ */ new Map();
  let lastId = null;
  let failures = 0;
  for (; ; ) {
    if (signal?.aborted) {
      throw abortError(signal);
    }
    const headers = { Accept: "text/event-stream" };
    if (lastId !== null) {
      headers["Last-Event-ID"] = lastId;
    }
    let response;
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
        await response.body?.cancel().catch(() => void 0);
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
      if (seen !== void 0 && (event.epoch < seen.epoch || event.epoch === seen.epoch && event.seq <= seen.seq)) {
        continue;
      }
      positions.delete(event.job_id);
      positions.set(event.job_id, { epoch: event.epoch, seq: event.seq });
      if (positions.size > OWNER_FEED_JOBS) {
        const oldest = positions.keys().next().value;
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
async function submitOverHttp(context, job, options) {
  const headers = {
    "Content-Type": "application/json",
    Accept: "application/json",
    "Idempotency-Key": options.idempotencyKey
  };
  if (options.traceparent !== void 0) {
    headers.traceparent = options.traceparent;
  }
  if (options.tracestate !== void 0) {
    headers.tracestate = options.tracestate;
  }
  const { signal } = options;
  for (let failures = 0; ; failures += 1) {
    if (signal?.aborted) {
      throw abortError(signal);
    }
    let response;
    try {
      response = await context.http.send("/v1/jobs", {
        method: "POST",
        headers,
        body: JSON.stringify(job),
        signal: signal ?? null
      });
    } catch (error) {
      if (signal?.aborted) {
        throw abortError(signal);
      }
      await waitBeforeRetry(context, failures, `submit failed: ${String(error)}`, signal);
      continue;
    }
    if (response.ok) {
      const body = await response.json();
      return { job_id: body.job_id, trace_id: body.trace_id };
    }
    if (!isTransientStatus(response.status)) {
      throw await errorOf(response);
    }
    await response.body?.cancel().catch(() => void 0);
    await waitBeforeRetry(context, failures, `submit answered ${response.status}`, signal);
  }
}

// src/client/http-mode.ts
function pipeSse(sse, closing, queue, jobId, after, signal) {
  const signals = AbortSignal.any([signal, closing]);
  void (async () => {
    try {
      for await (const item of watchOverSse(sse, jobId, after, signals)) {
        queue.push(item);
      }
      queue.end();
    } catch (error) {
      if (closing.aborted) {
        queue.end();
      } else {
        queue.fail(error);
      }
    }
  })();
}
async function submitPendingOverHttp(sse, closing, pending) {
  const options = {
    idempotencyKey: pending.idempotencyKey,
    signal: pending.signal === void 0 ? closing : AbortSignal.any([pending.signal, closing])
  };
  if (pending.traceparent !== void 0) options.traceparent = pending.traceparent;
  if (pending.tracestate !== void 0) options.tracestate = pending.tracestate;
  try {
    return await submitOverHttp(sse, pending.job, options);
  } catch (error) {
    throw closing.aborted ? closedError() : error;
  }
}

// src/client/options.ts
var defaultTimers = {
  setTimeout: (callback, ms) => globalThis.setTimeout(callback, ms),
  clearTimeout: (handle) => globalThis.clearTimeout(handle)
};

// src/client/rest.ts
function cancelJob(http, jobId) {
  return http.json(`/v1/jobs/${encodeURIComponent(jobId)}/cancel`, { method: "POST" });
}
function jobSnapshot(http, jobId) {
  return http.json(`/v1/jobs/${encodeURIComponent(jobId)}`);
}
async function listKinds(http) {
  const body = await http.json("/v1/kinds");
  return body.kinds;
}
function listJobs(http, query) {
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(query)) {
    if (value !== void 0) {
      params.set(key, String(value));
    }
  }
  const search = params.toString();
  return http.json(`/v1/jobs${search ? `?${search}` : ""}`);
}

// src/client/tokens.ts
var TokenFetcher = class {
  constructor(getToken) {
    this.getToken = getToken;
  }
  getToken;
  /** The last token getToken() returned. */
  token = null;
  fetching = null;
  get canFetch() {
    return this.getToken !== void 0;
  }
  /** The last token, or a fetched one when there is none yet. */
  current() {
    return this.token !== null || this.getToken === void 0 ? Promise.resolve(this.token) : this.fetch();
  }
  /** One getToken() at a time; its result is shared. */
  fetch() {
    const getToken = this.getToken;
    if (getToken === void 0) {
      return Promise.resolve(null);
    }
    if (this.fetching === null) {
      this.fetching = (async () => {
        try {
          const token = await getToken();
          this.token = token;
          return token;
        } finally {
          this.fetching = null;
        }
      })();
    }
    return this.fetching;
  }
};

// src/engine/connection.ts
var CLOSE_NAMES = {
  1e3: "normal",
  1001: "gateway going away",
  1006: "connection lost",
  1011: "gateway error",
  4e3: "ping unanswered",
  4001: "token expired",
  4008: "slow consumer"
};
function closeText(code, reason, wasOpen, httpStatus) {
  const name = CLOSE_NAMES[code] ?? "closed";
  if (httpStatus !== void 0) {
    return `connection refused (HTTP ${httpStatus})`;
  }
  if (!wasOpen) {
    return `could not connect${reason ? `: ${reason}` : ""}`;
  }
  return `closed by server (${code} ${name}${reason ? `: ${reason}` : ""})`;
}
var Reconnects = class {
  constructor(backoff, random) {
    this.backoff = backoff;
    this.random = random;
  }
  backoff;
  random;
  /** Consecutive failed connection attempts (reset by a successful open). */
  failures = 0;
  /** When to try again; null: not waiting. */
  at = null;
  /** Counts a failure and sets the next attempt; returns the wait, ms. */
  schedule(now, immediate) {
    const delay = immediate && this.failures === 0 ? 0 : backoffDelay(this.backoff, this.failures, this.random);
    this.failures += 1;
    this.at = now + delay;
    return delay;
  }
  isDue(now) {
    return this.at !== null && now >= this.at;
  }
};
var Liveness = class {
  constructor(defaultIntervalMs, defaultTimeoutMs) {
    this.defaultIntervalMs = defaultIntervalMs;
    this.defaultTimeoutMs = defaultTimeoutMs;
    this.intervalMs = defaultIntervalMs;
    this.timeoutMs = defaultTimeoutMs;
  }
  defaultIntervalMs;
  defaultTimeoutMs;
  intervalMs;
  timeoutMs;
  lastFrameAt = 0;
  nextPingAt = null;
  /** A session opened: the defaults until its `hello`. */
  opened(now) {
    this.intervalMs = this.defaultIntervalMs;
    this.timeoutMs = this.defaultTimeoutMs;
    this.lastFrameAt = now;
    this.nextPingAt = now + this.intervalMs;
  }
  /** The gateway's `hello` sized the timers. */
  hello(intervalMs, timeoutMs, now) {
    this.intervalMs = intervalMs;
    this.timeoutMs = timeoutMs;
    this.nextPingAt = now + this.intervalMs;
  }
  heard(now) {
    this.lastFrameAt = now;
  }
  stop() {
    this.nextPingAt = null;
  }
  silentFor(now) {
    return now - this.lastFrameAt;
  }
  isDead(now) {
    return now - this.lastFrameAt >= this.timeoutMs;
  }
  /** Whether a ping is due now; if so, the next one is scheduled. */
  takePing(now) {
    if (this.nextPingAt === null || now < this.nextPingAt) {
      return false;
    }
    this.nextPingAt = now + this.intervalMs;
    return true;
  }
  /** The times tick() must come for an open session. */
  deadlines() {
    const times = [this.lastFrameAt + this.timeoutMs];
    if (this.nextPingAt !== null) {
      times.push(this.nextPingAt);
    }
    return times;
  }
};

// src/engine/outputs.ts
var DEFAULT_PING_INTERVAL_MS = 2e4;
var DEFAULT_PING_TIMEOUT_MS = 4e4;
var DEFAULT_TOKEN_REFRESH_MARGIN_MS = 3e4;
var DEFAULT_GAP_TIMEOUT_MS = 2e3;
var DEFAULT_MAX_BUFFERED_JOBS = 256;
var CLOSE_NORMAL = 1e3;
var CLOSE_GOING_AWAY = 1001;
var CLOSE_PING_TIMEOUT = 4e3;
var CLOSE_TOKEN_EXPIRED = 4001;
var CLOSE_SLOW_CONSUMER = 4008;

// src/engine/submits.ts
var PendingSubmits = class {
  byId = /* @__PURE__ */ new Map();
  add(requestId, job, options) {
    const frame = {
      type: "submit",
      request_id: requestId,
      job,
      idempotency_key: options.idempotencyKey
    };
    if (options.traceparent !== void 0) {
      frame.traceparent = options.traceparent;
    }
    if (options.tracestate !== void 0) {
      frame.tracestate = options.tracestate;
    }
    const pending = { requestId, frame, sentOn: null };
    this.byId.set(requestId, pending);
    return pending;
  }
  has(requestId) {
    return this.byId.has(requestId);
  }
  /** Removes and returns the submit (undefined: given up, or answered already). */
  take(requestId) {
    const submit = this.byId.get(requestId);
    this.byId.delete(requestId);
    return submit;
  }
  /** The frames to send on `connection`: those not sent on it yet, marked sent. */
  toSend(connection, submits = this.byId.values()) {
    const frames = [];
    for (const submit of submits) {
      if (submit.sentOn !== connection) {
        submit.sentOn = connection;
        frames.push(submit.frame);
      }
    }
    return frames;
  }
  /** The connection is gone: every submit is to be sent again. */
  unsent() {
    for (const submit of this.byId.values()) {
      submit.sentOn = null;
    }
  }
  /** Removes and returns them all, in the order they were made. */
  takeAll() {
    const all = [...this.byId.values()];
    this.byId.clear();
    return all;
  }
};

// src/readers.ts
var Readers = class {
  byId = /* @__PURE__ */ new Map();
  byJob = /* @__PURE__ */ new Map();
  set(reader) {
    this.delete(reader.id);
    this.byId.set(reader.id, reader);
    let readers = this.byJob.get(reader.jobId);
    if (readers === void 0) {
      readers = /* @__PURE__ */ new Set();
      this.byJob.set(reader.jobId, readers);
    }
    readers.add(reader);
  }
  get(id) {
    return this.byId.get(id);
  }
  delete(id) {
    const reader = this.byId.get(id);
    if (reader === void 0) {
      return void 0;
    }
    this.byId.delete(id);
    const readers = this.byJob.get(reader.jobId);
    readers?.delete(reader);
    if (readers?.size === 0) {
      this.byJob.delete(reader.jobId);
    }
    return reader;
  }
  clear() {
    this.byId.clear();
    this.byJob.clear();
  }
  /** Every reader, in the order they were added. */
  all() {
    return [...this.byId.values()];
  }
  /** The job's readers still reading (not past its terminal event). */
  of(jobId) {
    return [...this.byJob.get(jobId) ?? []].filter((reader) => !reader.ended);
  }
  /** The submitted job's buffer, if it has one (ended or not). */
  bufferOf(jobId) {
    return [...this.byJob.get(jobId) ?? []].find((reader) => reader.buffer !== null);
  }
  /** Every buffer, oldest first. */
  buffers() {
    return this.all().filter((reader) => reader.buffer !== null);
  }
  /** The jobs that still have a reader reading. */
  activeJobs() {
    return [...this.byJob.keys()].filter((jobId) => this.of(jobId).length > 0);
  }
  /** The earliest position any reader of the job needs; null when none reads it. */
  resumePosition(jobId) {
    let earliest = null;
    for (const reader of this.of(jobId)) {
      const position = reader.order.position;
      if (earliest === null || comparePositions(position, earliest) < 0) {
        earliest = position;
      }
    }
    return earliest;
  }
};

// src/engine/subscriptions.ts
var MAX_BUFFERED_ITEMS = 1e4;
var Subscriptions = class {
  constructor(host, gapTimeoutMs, maxBufferedJobs) {
    this.host = host;
    this.gapTimeoutMs = gapTimeoutMs;
    this.maxBufferedJobs = maxBufferedJobs;
  }
  host;
  gapTimeoutMs;
  maxBufferedJobs;
  readers = new Readers();
  nextBufferId = -1;
  /** Jobs the gateway is sending this session, with the position it was asked for. */
  subscribed = /* @__PURE__ */ new Map();
  // ---- the app's watches ----
  /** A watch from after `after` (default: the job's buffer, else the whole history). */
  watch(watchId, jobId, after) {
    const buffered = this.readers.bufferOf(jobId);
    if (buffered !== void 0) {
      this.adopt(buffered, watchId, after ?? START);
      return;
    }
    const streamAt = this.subscribed.has(jobId) ? this.readers.resumePosition(jobId) : null;
    const reader = {
      id: watchId,
      jobId,
      order: new EventOrder(after ?? START),
      buffer: null,
      ended: false,
      gapSince: null
    };
    this.readers.set(reader);
    if (this.host.isOpen() && (streamAt === null || comparePositions(reader.order.position, streamAt) < 0)) {
      this.subscribe(jobId, reader.order.position);
    }
  }
  unwatch(watchId) {
    const reader = this.readers.get(watchId);
    if (reader !== void 0) {
      this.readers.delete(watchId);
      this.releaseJob(reader.jobId);
    }
  }
  /** A watch takes over a submitted job's buffer: its events so far (after `after`), then live ones. */
  adopt(buffered, watchId, after) {
    this.readers.delete(buffered.id);
    const order = new EventOrder(after);
    const reader = { id: watchId, jobId: buffered.jobId, order, buffer: null, ended: false, gapSince: null };
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
      this.end(reader);
      return;
    }
    if (buffered.order.heldCount > 0) {
      this.resync(reader.jobId);
    }
  }
  // ---- the gateway's frames ----
  /** A submit was accepted: the gateway subscribed the session to the job. */
  accepted(jobId) {
    if (!this.subscribed.has(jobId)) {
      this.subscribed.set(jobId, START);
    }
    if (this.readers.of(jobId).length === 0) {
      this.addBuffer(jobId);
    }
  }
  event(event) {
    const now = this.host.now();
    if (isTerminal(event)) {
      this.subscribed.delete(event.job_id);
    }
    for (const reader of this.readers.of(event.job_id)) {
      const due = reader.order.offer(event);
      reader.gapSince = reader.order.heldCount > 0 ? reader.gapSince ?? now : null;
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
      this.endReadersPast(event.job_id, { epoch: event.epoch, seq: event.seq });
    }
  }
  /**
   * The gateway's answer to a subscribe (jobgate.v1 only): where the job
   * was when its watch started. A finished job whose end the subscribe's
   * `after` reached sends nothing more: its readers there are done.
   */
  subscribedAt(frame) {
    if (!TERMINAL_STATUSES.has(frame.status)) {
      return;
    }
    const last = { epoch: frame.epoch, seq: frame.seq };
    const asked = this.subscribed.get(frame.job_id);
    if (asked !== void 0 && comparePositions(asked, last) >= 0) {
      this.subscribed.delete(frame.job_id);
    }
    this.endReadersPast(frame.job_id, last);
  }
  truncated(message) {
    for (const reader of this.readers.of(message.job_id)) {
      const snapshot = reader.order.truncated(message);
      if (snapshot !== null) {
        this.give(reader, snapshot);
      }
    }
  }
  /** The gateway refused a job's subscription: its watches fail. */
  failJob(jobId, error) {
    this.subscribed.delete(jobId);
    for (const reader of this.readers.of(jobId)) {
      this.readers.delete(reader.id);
      if (reader.buffer === null) {
        this.host.emit({ type: "watch_error", watch: reader.id, error });
      }
    }
  }
  // ---- the session ----
  /** A new session: subscribe every watched job from where its readers are. */
  sessionOpened() {
    this.subscribed.clear();
    for (const jobId of this.readers.activeJobs()) {
      const position = this.readers.resumePosition(jobId);
      if (position !== null) {
        this.subscribe(jobId, position);
      }
    }
  }
  /** The session is gone: nothing is subscribed, no gap is being waited for. */
  sessionDropped() {
    this.subscribed.clear();
    for (const reader of this.readers.all()) {
      reader.gapSince = null;
    }
  }
  /** Reads the history again for jobs whose missing event is late. */
  checkGaps(now) {
    const late = /* @__PURE__ */ new Set();
    for (const reader of this.readers.all()) {
      if (reader.gapSince !== null && now - reader.gapSince >= this.gapTimeoutMs) {
        late.add(reader.jobId);
      }
    }
    for (const jobId of late) {
      this.resync(jobId);
    }
  }
  /** When tick() must come for the gaps being waited on. */
  deadlines() {
    const times = [];
    for (const reader of this.readers.all()) {
      if (reader.gapSince !== null) {
        times.push(reader.gapSince + this.gapTimeoutMs);
      }
    }
    return times;
  }
  /** The client closed: every watch ends, the buffers go. */
  endAll() {
    for (const reader of this.readers.all()) {
      if (reader.buffer === null) {
        this.host.emit({ type: "watch_end", watch: reader.id, job_id: reader.jobId });
      }
    }
    this.readers.clear();
  }
  /** The open watches with their positions; every reader goes. */
  drain() {
    const watches = this.readers.all().filter((reader) => reader.buffer === null && !reader.ended).map((reader) => ({ watch: reader.id, jobId: reader.jobId, position: reader.order.position }));
    this.readers.clear();
    return watches;
  }
  // ---- readers ----
  /** Ends the readers of a finished job that are at or past its last event. */
  endReadersPast(jobId, last) {
    for (const reader of this.readers.of(jobId)) {
      if (comparePositions(reader.order.position, last) >= 0) {
        this.end(reader);
      }
    }
  }
  addBuffer(jobId) {
    const buffers = this.readers.buffers();
    if (buffers.length >= this.maxBufferedJobs) {
      const oldest = buffers[0];
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
      gapSince: null
    });
  }
  give(reader, item) {
    if (reader.buffer !== null) {
      reader.buffer.push(item);
      if (reader.buffer.length > MAX_BUFFERED_ITEMS) {
        this.readers.delete(reader.id);
        this.releaseJob(reader.jobId);
      }
      return;
    }
    this.host.emit({ type: "deliver", watch: reader.id, item });
  }
  end(reader) {
    reader.ended = true;
    reader.gapSince = null;
    if (reader.buffer === null) {
      this.readers.delete(reader.id);
      this.host.emit({ type: "watch_end", watch: reader.id, job_id: reader.jobId });
    }
  }
  /** No reader of the job is left: stop the gateway sending it. */
  releaseJob(jobId) {
    if (this.readers.of(jobId).length > 0 || !this.subscribed.has(jobId)) {
      return;
    }
    this.subscribed.delete(jobId);
    if (this.host.isOpen()) {
      this.host.send({ type: "unsubscribe", job_id: jobId });
    }
  }
  /** Reads the history again from where the readers are (an event went missing). */
  resync(jobId) {
    const position = this.readers.resumePosition(jobId);
    for (const reader of this.readers.of(jobId)) {
      reader.gapSince = null;
    }
    if (position !== null && this.host.isOpen()) {
      this.host.log("info", "events went missing; reading the job's history again", { job_id: jobId });
      this.subscribe(jobId, position);
    }
  }
  subscribe(jobId, position) {
    this.subscribed.set(jobId, position);
    const frame = { type: "subscribe", job_id: jobId, after: position.seq };
    if (position.epoch !== 1) {
      frame.after_epoch = position.epoch;
    }
    this.host.send(frame);
  }
};

// src/engine/token.ts
var TOKEN_RETRY_MS = 5e3;
var TokenRefresh = class {
  constructor(hasSource, marginMs, clock) {
    this.hasSource = hasSource;
    this.marginMs = marginMs;
    this.clock = clock;
    this.stale = hasSource;
  }
  hasSource;
  marginMs;
  clock;
  token = null;
  /** Must be fetched again before the next connection. */
  stale;
  /** A getToken() is under way. */
  requested = false;
  /** When to ask for a fresh token on the open session; null: no need. */
  refreshAt = null;
  /** The request id of the `auth` whose answer has not come. */
  pendingAuth = null;
  expiresAt = null;
  authCount = 0;
  /** Whether a connection needs a getToken() first. */
  needsFetch() {
    return this.hasSource && (this.token === null || this.stale || this.expired());
  }
  /** A token from getToken(), with its lifetime if known. */
  arrived(token, expiresInMs, now) {
    this.requested = false;
    this.token = token;
    this.stale = false;
    this.expiresAt = expiresInMs === void 0 || expiresInMs === null ? null : now + expiresInMs;
  }
  /** The id of a new `auth` frame, awaited. */
  nextAuth() {
    this.authCount += 1;
    this.pendingAuth = `auth-${this.authCount}`;
    return this.pendingAuth;
  }
  /** The gateway said how long the token lasts (hello, auth_ok). */
  lifetime(expiresInMs) {
    const now = this.clock();
    this.expiresAt = expiresInMs === void 0 || expiresInMs === null ? null : now + expiresInMs;
    this.schedule(now);
  }
  schedule(now) {
    if (!this.hasSource || this.expiresAt === null) {
      this.refreshAt = null;
      return;
    }
    const lifetime = this.expiresAt - now;
    const margin = Math.min(this.marginMs, Math.max(lifetime, 0) / 2);
    this.refreshAt = Math.max(now, this.expiresAt - margin);
  }
  retryLater(now) {
    this.refreshAt = now + TOKEN_RETRY_MS;
  }
  /** Whether a refresh is due now; if so, it is taken. */
  takeRefresh(now) {
    if (this.refreshAt === null || now < this.refreshAt) {
      return false;
    }
    this.refreshAt = null;
    return true;
  }
  expired() {
    return this.expiresAt !== null && this.clock() >= this.expiresAt - 1e3;
  }
};

// src/engine.ts
var Engine = class {
  clock;
  phase = "idle";
  connection = 0;
  everConnected = false;
  state = "connecting";
  outputs = [];
  /** The last timer output; undefined: none asked for since the last tick. */
  lastTimer = null;
  /** The session's negotiated subprotocol. */
  protocol = null;
  reconnects;
  liveness;
  tokens;
  submits = new PendingSubmits();
  subscriptions;
  constructor(options) {
    this.clock = options.clock;
    const backoff = { ...DEFAULT_BACKOFF, ...options.backoff };
    this.reconnects = new Reconnects(backoff, options.random);
    this.liveness = new Liveness(
      options.pingIntervalMs ?? DEFAULT_PING_INTERVAL_MS,
      options.pingTimeoutMs ?? DEFAULT_PING_TIMEOUT_MS
    );
    this.tokens = new TokenRefresh(
      options.hasTokenSource ?? false,
      options.tokenRefreshMarginMs ?? DEFAULT_TOKEN_REFRESH_MARGIN_MS,
      this.clock
    );
    const host = {
      now: () => this.clock(),
      isOpen: () => this.phase === "open",
      send: (frame) => this.send(frame),
      emit: (output) => this.emit(output),
      log: (level, message, fields) => this.log(level, message, fields)
    };
    this.subscriptions = new Subscriptions(
      host,
      options.gapTimeoutMs ?? DEFAULT_GAP_TIMEOUT_MS,
      options.maxBufferedJobs ?? DEFAULT_MAX_BUFFERED_JOBS
    );
  }
  get connectionState() {
    return this.state;
  }
  /** Consecutive failed connection attempts (reset by a successful open). */
  get consecutiveFailures() {
    return this.reconnects.failures;
  }
  get hasConnected() {
    return this.everConnected;
  }
  /** The session's negotiated subprotocol (null: none, an older gateway). */
  get sessionProtocol() {
    return this.protocol;
  }
  // ---- inputs: the socket ----
  /** Starts connecting. */
  start() {
    if (this.phase === "idle") {
      this.connectNow();
    }
    return this.flush();
  }
  /** The socket of `connection` opened; `protocol` is the subprotocol the server chose. */
  opened(connection, protocol) {
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
      this.tokens.schedule(now);
    }
    return this.flush();
  }
  /** A text frame of `connection`, parsed as JSON. */
  frame(connection, value) {
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
  closed(connection, code, reason = "", httpStatus) {
    if (connection !== this.connection || this.phase !== "open" && this.phase !== "opening") {
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
  tick() {
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
          reason: "no frame from the gateway"
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
    this.lastTimer = void 0;
    return this.flush();
  }
  // ---- inputs: the token ----
  /** A token from getToken(); `expiresInMs` if the caller knows its lifetime (a JWT's exp). */
  tokenArrived(token, expiresInMs) {
    const now = this.clock();
    this.tokens.arrived(token, expiresInMs, now);
    if (this.phase === "awaiting_token") {
      this.open();
    } else if (this.phase === "open") {
      const requestId = this.tokens.nextAuth();
      this.send(
        this.protocol === null ? { type: "auth", token } : { type: "auth", token, request_id: requestId }
      );
      this.tokens.schedule(now);
    }
    return this.flush();
  }
  /** getToken() failed. */
  tokenFailed(message) {
    this.tokens.requested = false;
    this.log("warn", "getToken failed", { error: message });
    if (this.phase === "awaiting_token") {
      this.scheduleReconnect(`getToken failed: ${message}`, void 0, false);
    } else if (this.phase === "open") {
      this.tokens.retryLater(this.clock());
    }
    return this.flush();
  }
  // ---- inputs: the app ----
  /** Submits a job; answered by `submitted` or `submit_error` with the same id. */
  submit(requestId, job, options) {
    const pending = this.submits.add(requestId, job, options);
    if (this.phase === "open") {
      for (const frame of this.submits.toSend(this.connection, [pending])) {
        this.send(frame);
      }
    }
    return this.flush();
  }
  /** The app gave up on a submit (its accepted, if it comes, is ignored). */
  forgetSubmit(requestId) {
    this.submits.take(requestId);
    return this.flush();
  }
  /**
   * Watches a job from after `after` (default: the events buffered since
   * its submit on this client, else the whole history).
   */
  watch(watchId, jobId, after) {
    this.subscriptions.watch(watchId, jobId, after);
    return this.flush();
  }
  /** Stops a watch (the app broke out of its loop, or aborted it). */
  unwatch(watchId) {
    this.subscriptions.unwatch(watchId);
    return this.flush();
  }
  /** The browser came back online or visible: retry at once, backoff from the start. */
  online() {
    this.reconnects.failures = 0;
    if (this.phase === "waiting") {
      this.reconnects.at = null;
      this.connectNow();
    } else if (this.phase === "open") {
      this.send({ type: "ping" });
    }
    return this.flush();
  }
  /** Closes for good: open watches end, pending submits fail. */
  close() {
    if (this.phase === "closed") {
      return this.flush();
    }
    this.stop("client closed");
    this.subscriptions.endAll();
    for (const submit of this.submits.takeAll()) {
      this.emit({
        type: "submit_error",
        submit: submit.requestId,
        error: { code: "client_closed", message: "the client was closed before the job was accepted" }
      });
    }
    this.setState({ state: "closed", reason: "closed by the app", code: CLOSE_NORMAL });
    return this.flush();
  }
  /**
   * Hands over what is left to do (to another transport): submits not yet
   * accepted, and the app's watches with their positions. The engine stops.
   */
  drain() {
    const submits = this.submits.takeAll().map((submit) => submit.frame);
    const watches = this.subscriptions.drain();
    this.stop("switching transport");
    this.flush();
    return { submits, watches };
  }
  // ---- frames ----
  handleFrame(frame) {
    switch (frame.type) {
      case "hello":
        this.liveness.hello(frame.ping_interval_ms, frame.ping_timeout_ms, this.clock());
        this.tokens.lifetime(frame.token_expires_in_ms);
        break;
      case "auth_ok":
        if (frame.request_id === void 0 || frame.request_id === this.tokens.pendingAuth) {
          this.tokens.pendingAuth = null;
          this.tokens.lifetime(frame.token_expires_in_ms);
        }
        break;
      case "accepted":
        if (this.submits.take(frame.request_id) !== void 0) {
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
  error(frame) {
    const error = { code: frame.code, message: frame.message };
    if (frame.field !== void 0) {
      error.field = frame.field;
    }
    if (frame.request_id !== void 0 && this.submits.take(frame.request_id) !== void 0) {
      this.emit({ type: "submit_error", submit: frame.request_id, error });
      return;
    }
    if (frame.code === "unauthorized" && (frame.request_id === void 0 || frame.request_id === this.tokens.pendingAuth)) {
      this.tokens.pendingAuth = null;
      this.log("warn", "the gateway refused the refreshed token", { error });
      this.tokens.retryLater(this.clock());
      return;
    }
    if (frame.job_id !== void 0 && frame.code !== "not_subscribed") {
      this.subscriptions.failJob(frame.job_id, error);
      return;
    }
    this.log("warn", "error from the gateway", { ...error });
  }
  // ---- connection ----
  connectNow() {
    if (this.tokens.needsFetch()) {
      this.phase = "awaiting_token";
      this.requestToken(this.tokens.token === null ? "first connection" : "token expired");
      return;
    }
    this.open();
  }
  open() {
    this.connection += 1;
    this.phase = "opening";
    if (this.state !== "connecting" && this.state !== "reconnecting") {
      this.setState({ state: this.everConnected ? "reconnecting" : "connecting", reason: "connecting" });
    }
    this.emit({ type: "open", connection: this.connection, token: this.tokens.token });
  }
  requestToken(reason) {
    if (!this.tokens.requested) {
      this.tokens.requested = true;
      this.emit({ type: "need_token", reason });
    }
  }
  /** Forgets the session's state (the socket is gone or going). */
  dropSession() {
    this.phase = "waiting";
    this.protocol = null;
    this.liveness.stop();
    this.tokens.pendingAuth = null;
    this.subscriptions.sessionDropped();
    this.submits.unsent();
  }
  /** Closes the socket (if any) for good: no reconnect, no refresh. */
  stop(reason) {
    if (this.phase === "open" || this.phase === "opening") {
      this.emit({ type: "close_socket", connection: this.connection, code: CLOSE_NORMAL, reason });
    }
    this.dropSession();
    this.phase = "closed";
    this.reconnects.at = null;
    this.tokens.refreshAt = null;
  }
  scheduleReconnect(reason, code, immediate) {
    this.phase = "waiting";
    const delay = this.reconnects.schedule(this.clock(), immediate);
    const change = {
      state: this.everConnected ? "reconnecting" : "connecting",
      reason,
      retryInMs: delay,
      failures: this.reconnects.failures
    };
    if (code !== void 0) {
      change.code = code;
    }
    this.setState(change, true);
    this.log("info", "reconnecting", { reason, code, retry_in_ms: delay });
  }
  // ---- outputs ----
  send(frame) {
    this.emit({ type: "send", connection: this.connection, frame });
  }
  setState(change, always = false) {
    if (!always && change.state === this.state) {
      return;
    }
    this.state = change.state;
    this.emit({ type: "state", change });
  }
  log(level, message, fields) {
    const output = { type: "log", level, message };
    if (fields !== void 0) {
      output.fields = fields;
    }
    this.emit(output);
  }
  emit(output) {
    this.outputs.push(output);
  }
  /** The next time tick() has something to do. */
  nextDeadline() {
    const times = [];
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
  flush() {
    const at = this.nextDeadline();
    if (at !== this.lastTimer) {
      this.lastTimer = at;
      this.outputs.push({ type: "timer", at });
    }
    const outputs = this.outputs;
    this.outputs = [];
    return outputs;
  }
};

// src/logs.ts
var LEVELS = { debug: 0, info: 1, warn: 2, error: 3 };
var MAX_FIELDS = 32;
var MAX_STRING = 8192;
var MAX_QUEUED = 1e3;
var RESERVED = /* @__PURE__ */ new Set(["timestamp", "level", "message", "service"]);
function clip(value) {
  if (typeof value === "string") {
    return value.length > MAX_STRING ? value.slice(0, MAX_STRING) : value;
  }
  if (value === null || typeof value === "number" || typeof value === "boolean") {
    return value;
  }
  return clip(JSON.stringify(value) ?? String(value));
}
function logRecord(service, level, message, fields = {}, now = Date.now()) {
  const record = {
    timestamp: new Date(now).toISOString(),
    level,
    message: clip(message),
    service
  };
  let count = 0;
  for (const [key, value] of Object.entries(fields)) {
    if (value === void 0 || RESERVED.has(key) || count >= MAX_FIELDS) {
      continue;
    }
    record[key] = clip(value);
    count += 1;
  }
  return record;
}
var LogBatcher = class {
  constructor(options, http, timers, clock) {
    this.http = http;
    this.timers = timers;
    this.clock = clock;
    this.service = options.service ?? "jobgate-client";
    this.minimum = LEVELS[options.level ?? "info"];
    this.flushIntervalMs = options.flushIntervalMs ?? 5e3;
    this.maxBatch = Math.min(options.maxBatch ?? 100, 500);
  }
  http;
  timers;
  clock;
  queued = [];
  timer = null;
  sending = false;
  service;
  minimum;
  flushIntervalMs;
  maxBatch;
  add(level, message, fields) {
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
  async flush() {
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
        body: JSON.stringify({ records: batch })
      });
      await response.body?.cancel().catch(() => void 0);
      if (response.status >= 500 || response.status === 429) {
        this.queued.unshift(...batch);
      }
    } catch {
      this.queued.unshift(...batch);
    } finally {
      this.sending = false;
    }
  }
  close() {
    if (this.timer !== null) {
      this.timers.clearTimeout(this.timer);
      this.timer = null;
    }
    return this.flush();
  }
};

// src/queue.ts
var AsyncQueue = class {
  constructor(onReturn = () => void 0) {
    this.onReturn = onReturn;
  }
  onReturn;
  items = [];
  waiting = [];
  done = false;
  failure = null;
  push(item) {
    if (this.done) {
      return;
    }
    const waiter = this.waiting.shift();
    if (waiter !== void 0) {
      waiter.resolve({ value: item, done: false });
    } else {
      this.items.push(item);
    }
  }
  /** No more items: pending and later reads end after what is queued. */
  end() {
    if (this.done) {
      return;
    }
    this.done = true;
    for (const waiter of this.waiting.splice(0)) {
      waiter.resolve({ value: void 0, done: true });
    }
  }
  /** Ends with an error, thrown to the reader after what is queued. */
  fail(error) {
    if (this.done) {
      return;
    }
    this.failure = { error };
    this.done = true;
    for (const waiter of this.waiting.splice(0)) {
      waiter.reject(error);
    }
  }
  next() {
    const item = this.items.shift();
    if (item !== void 0) {
      return Promise.resolve({ value: item, done: false });
    }
    if (this.failure !== null) {
      const { error } = this.failure;
      this.failure = null;
      return Promise.reject(error);
    }
    if (this.done) {
      return Promise.resolve({ value: void 0, done: true });
    }
    return new Promise((resolve, reject) => this.waiting.push({ resolve, reject }));
  }
  /** The reader stopped early (break, return, throw in the loop). */
  return() {
    const wasDone = this.done;
    this.done = true;
    this.items.length = 0;
    this.failure = null;
    if (!wasDone) {
      this.onReturn();
    }
    return Promise.resolve({ value: void 0, done: true });
  }
  [Symbol.asyncIterator]() {
    return this;
  }
};

// src/transport/websocket.ts
function sendableCloseCode(code) {
  return code === 1e3 || code >= 3e3 && code <= 4999 ? code : 1e3;
}
var WebSocketTransport = class {
  constructor(options, events) {
    this.options = options;
    this.events = events;
  }
  options;
  events;
  socket = null;
  connection = 0;
  /**
   * False once a gateway refused the handshake because it does not speak
   * the subprotocol (`ws` fails a handshake whose answer does not echo
   * one): then this transport connects without offering it.
   */
  offerSubprotocol = true;
  open(connection, token) {
    this.discard();
    this.connection = connection;
    this.connect(connection, token, this.offerSubprotocol);
  }
  send(connection, frame) {
    if (connection !== this.connection || this.socket === null) {
      return;
    }
    try {
      this.socket.send(JSON.stringify(frame));
    } catch {
    }
  }
  close(connection, code, reason) {
    if (connection !== this.connection) {
      return;
    }
    this.discard(code, reason);
  }
  connect(connection, token, offerSubprotocol) {
    let url = this.options.url;
    const init = {};
    if (token !== null && token !== "") {
      if (this.options.tokenIn === "header") {
        init.headers = { Authorization: `Bearer ${token}` };
      } else {
        url += `${url.includes("?") ? "&" : "?"}access_token=${encodeURIComponent(token)}`;
      }
    }
    let socket;
    try {
      socket = offerSubprotocol ? new this.options.WebSocket(url, [SUBPROTOCOL], init) : new this.options.WebSocket(url, [], init);
    } catch (error) {
      queueMicrotask(() => this.events.closed(connection, 1006, String(error)));
      return;
    }
    this.socket = socket;
    let opened = false;
    let failure = "";
    let httpStatus;
    const mine = () => this.socket === socket && this.connection === connection;
    socket.onopen = () => {
      if (!mine()) {
        return;
      }
      opened = true;
      this.events.opened(connection, socket.protocol === "" ? null : socket.protocol);
    };
    socket.onmessage = (event) => {
      if (!mine() || typeof event.data !== "string") {
        return;
      }
      let value;
      try {
        value = JSON.parse(event.data);
      } catch {
        return;
      }
      this.events.frame(connection, value);
    };
    socket.onerror = (event) => {
      const error = event ?? {};
      failure = String(error.message ?? error.error?.message ?? "");
      const status = /Unexpected server response: (\d+)/.exec(failure);
      if (status) {
        httpStatus = Number(status[1]);
      }
    };
    socket.onclose = (event) => {
      if (!mine()) {
        return;
      }
      this.socket = null;
      if (!opened && offerSubprotocol && /subprotocol/i.test(failure)) {
        this.offerSubprotocol = false;
        this.connect(connection, token, false);
        return;
      }
      this.events.closed(connection, event.code, event.reason || failure, opened ? void 0 : httpStatus);
    };
  }
  discard(code = 1e3, reason = "") {
    const socket = this.socket;
    this.socket = null;
    if (socket === null) {
      return;
    }
    socket.onopen = null;
    socket.onmessage = null;
    socket.onerror = () => {
    };
    socket.onclose = null;
    try {
      socket.close(sendableCloseCode(code), reason);
    } catch {
    }
  }
};

// src/client.ts
var JobgateClient = class {
  options;
  clock;
  random;
  timers;
  backoff;
  http;
  sse;
  logs;
  engine;
  socket;
  mode;
  started = false;
  isClosed = false;
  currentState = "connecting";
  listeners = /* @__PURE__ */ new Set();
  tokens;
  timer = null;
  requestCount = 0;
  watchCount = 0;
  submits = /* @__PURE__ */ new Map();
  watches = /* @__PURE__ */ new Map();
  /** Aborts every SSE stream and HTTP retry loop at close(). */
  closing = new AbortController();
  probing = false;
  removeBrowserListeners;
  constructor(options) {
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
      onConnection: (connected, reason, retryInMs) => this.sseConnection(connected, reason, retryInMs)
    };
    this.logs = options.logs?.enabled ? new LogBatcher(options.logs, this.http, this.timers, this.clock) : null;
    const WebSocketClass = options.WebSocket ?? globalThis.WebSocket ?? null;
    const choice = options.transport ?? (WebSocketClass === null ? "sse" : "websocket");
    if (choice !== "sse" && WebSocketClass === null) {
      throw new TypeError(`no WebSocket class: pass options.WebSocket (in Node, the ws package's) or transport: "sse"`);
    }
    this.mode = choice === "sse" ? "sse" : "websocket";
    this.engine = new Engine({
      clock: this.clock,
      random: this.random,
      backoff: this.backoff,
      hasTokenSource: options.getToken !== void 0,
      ...options.tokenRefreshMarginMs === void 0 ? {} : { tokenRefreshMarginMs: options.tokenRefreshMarginMs }
    });
    this.socket = WebSocketClass === null ? null : this.createSocket(base, WebSocketClass);
    this.removeBrowserListeners = listenToBrowser(() => this.online());
  }
  /** The connection state: "connecting", "connected", "reconnecting" or "closed". */
  get state() {
    return this.currentState;
  }
  /** The transport in use ("auto" settles on one of these). */
  get transport() {
    return this.mode;
  }
  /** Calls `listener` on every state change (and each reconnect attempt); returns the unsubscribe. */
  onStateChange(listener) {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
  /**
   * The network or the app came back (browsers: called on `online` and on
   * `visibilitychange` to visible): reconnect at once, backoff from the start.
   */
  online() {
    if (this.mode === "websocket" && this.started && !this.isClosed) {
      this.apply(this.engine.online());
    }
  }
  /** Connects now (submit and watch connect by themselves). */
  connect() {
    this.ensureStarted();
  }
  /** Submits a job: resolves when the gateway accepted it. */
  submit(job, options = {}) {
    if (this.isClosed) {
      return Promise.reject(closedError());
    }
    if (options.signal?.aborted) {
      return Promise.reject(abortError(options.signal));
    }
    const pending = {
      resolve: () => void 0,
      reject: () => void 0,
      job,
      idempotencyKey: options.idempotencyKey ?? randomUuid()
    };
    if (options.traceparent !== void 0) pending.traceparent = options.traceparent;
    if (options.tracestate !== void 0) pending.tracestate = options.tracestate;
    if (options.signal !== void 0) pending.signal = options.signal;
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
  watch(jobId, options = {}) {
    const id = ++this.watchCount;
    const streamAbort = new AbortController();
    const stop = () => {
      streamAbort.abort();
      if (this.watches.delete(id)) {
        this.apply(this.engine.unwatch(id));
      }
    };
    const queue = new AsyncQueue(stop);
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
      { once: true }
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
  events(options = {}) {
    const signal = options.signal === void 0 ? this.closing.signal : AbortSignal.any([options.signal, this.closing.signal]);
    return ownerEventsOverSse(this.sse, signal);
  }
  /** Cancels a job; the snapshot after the request. */
  cancel(jobId) {
    return cancelJob(this.http, jobId);
  }
  /** A job's current state. */
  snapshot(jobId) {
    return jobSnapshot(this.http, jobId);
  }
  /** The kinds workers serve, with their params schemas. */
  kinds() {
    return listKinds(this.http);
  }
  /** A page of the caller's jobs, newest first. */
  jobs(query = {}) {
    return listJobs(this.http, query);
  }
  /** Closes the session: watches end, pending submits fail, log lines are sent. */
  close() {
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
  createHttp(base) {
    const fetchImpl = this.options.fetch ?? globalThis.fetch?.bind(globalThis);
    if (fetchImpl === void 0) {
      throw new TypeError("no fetch: pass options.fetch");
    }
    const tokens = {
      current: () => this.tokens.current(),
      refresh: () => this.tokens.fetch(),
      canRefresh: this.tokens.canFetch
    };
    return new HttpClient(base, fetchImpl, tokens);
  }
  createSocket(base, WebSocketClass) {
    const passed = this.options.WebSocket;
    const tokenIn = this.options.tokenIn ?? (passed === void 0 || passed === globalThis.WebSocket ? "query" : "header");
    return new WebSocketTransport(
      { url: webSocketUrl(base), WebSocket: WebSocketClass, tokenIn },
      {
        opened: (connection, protocol) => this.apply(this.engine.opened(connection, protocol)),
        frame: (connection, value) => this.apply(this.engine.frame(connection, value)),
        closed: (connection, code, reason, status) => this.apply(this.engine.closed(connection, code, reason, status))
      }
    );
  }
  // ---- the engine's inputs and outputs ----
  submitOverSocket(pending) {
    this.requestCount += 1;
    const requestId = `submit-${this.requestCount}`;
    const promise = new Promise((resolve, reject) => {
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
      { once: true }
    );
    const submitOptions = {
      idempotencyKey: pending.idempotencyKey
    };
    if (pending.traceparent !== void 0) submitOptions.traceparent = pending.traceparent;
    if (pending.tracestate !== void 0) submitOptions.tracestate = pending.tracestate;
    this.apply(this.engine.submit(requestId, pending.job, submitOptions));
    return promise;
  }
  ensureStarted() {
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
  apply(outputs) {
    for (const output of outputs) {
      this.applyOne(output);
    }
  }
  applyOne(output) {
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
  takeSubmit(requestId) {
    const pending = this.submits.get(requestId);
    this.submits.delete(requestId);
    return pending;
  }
  giveEngineToken() {
    this.tokens.fetch().then(
      (token) => this.apply(
        token === null ? this.engine.tokenFailed("getToken returned nothing") : this.engine.tokenArrived(token, jwtLifetimeMs(token, this.clock()))
      ),
      (error) => this.apply(this.engine.tokenFailed(String(error)))
    );
  }
  setTimer(at) {
    this.clearTimer();
    if (at === null || this.isClosed) {
      return;
    }
    this.timer = this.timers.setTimeout(() => {
      this.timer = null;
      this.apply(this.engine.tick());
    }, Math.max(0, at - this.clock()));
  }
  clearTimer() {
    if (this.timer !== null) {
      this.timers.clearTimeout(this.timer);
      this.timer = null;
    }
  }
  setState(change) {
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
      }
    }
  }
  log(level, message, fields) {
    this.options.logger?.(level, message, fields);
    this.logs?.add(level, message, fields);
  }
  sleep(ms, signal) {
    const signals = signal === void 0 ? this.closing.signal : AbortSignal.any([signal, this.closing.signal]);
    return sleep(this.timers, ms, signals);
  }
  // ---- SSE ----
  sseConnection(connected, reason, retryInMs) {
    if (this.mode !== "sse") {
      return;
    }
    const change = connected ? { state: "connected", reason } : { state: "reconnecting", reason };
    if (retryInMs !== void 0) {
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
  maybeFallBack() {
    const threshold = this.options.autoFallbackAfter ?? 3;
    if (this.options.transport !== "auto" || this.mode !== "websocket" || this.probing || this.engine.hasConnected || this.engine.consecutiveFailures < threshold) {
      return;
    }
    this.probing = true;
    this.http.send("/healthz", { signal: this.closing.signal }).then(async (response) => {
      await response.body?.cancel().catch(() => void 0);
      if (!response.ok || this.isClosed || this.engine.hasConnected) {
        return;
      }
      this.fallBackToSse();
    }).catch(() => void 0).finally(() => {
      this.probing = false;
    });
  }
  /**
   * Submits not yet accepted go over HTTP with their idempotency keys,
   * watches resume over SSE from where they are.
   */
  fallBackToSse() {
    this.log("warn", "WebSocket cannot connect but HTTP works: using SSE", {});
    this.mode = "sse";
    const { submits, watches } = this.engine.drain();
    this.clearTimer();
    this.setState({ state: "connected", reason: "WebSocket unavailable; using HTTP and SSE" });
    for (const frame of submits) {
      const pending = this.takeSubmit(frame.request_id);
      if (pending !== void 0) {
        submitPendingOverHttp(this.sse, this.closing.signal, pending).then(pending.resolve, pending.reject);
      }
    }
    for (const { watch, jobId, position } of watches) {
      const queue = this.watches.get(watch);
      this.watches.delete(watch);
      if (queue !== void 0) {
        const abort = new AbortController();
        pipeSse(this.sse, this.closing.signal, queue, jobId, position, abort.signal);
      }
    }
  }
};
export {
  CLOSE_GOING_AWAY,
  CLOSE_NORMAL,
  CLOSE_PING_TIMEOUT,
  CLOSE_SLOW_CONSUMER,
  CLOSE_TOKEN_EXPIRED,
  DEFAULT_BACKOFF,
  Engine,
  EventOrder,
  JobgateClient,
  JobgateError,
  SUBPROTOCOL,
  SseParser,
  TERMINAL_EVENTS,
  TERMINAL_STATUSES,
  backoffBound,
  backoffDelay,
  comparePositions,
  formatEventId,
  isHistoryTruncated,
  isJobEvent,
  isJobSnapshot,
  isTerminal,
  jwtLifetimeMs,
  normalizeEvent,
  parseEventId,
  parseServerFrame,
  randomUuid
};
