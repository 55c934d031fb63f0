// HTTP requests to the gateway with the client's token: one refresh and
// one retry on 401, errors as JobgateError with the gateway's stable code.

import type { ErrorBody } from "./types.js";

export type FetchLike = (input: string, init?: RequestInit) => Promise<Response>;

/** An error the gateway answered (or the client's own, e.g. `client_closed`). */
export class JobgateError extends Error {
  readonly code: string;
  readonly status: number | undefined;
  readonly field: string | undefined;

  constructor(body: ErrorBody, status?: number) {
    super(body.message);
    this.name = "JobgateError";
    this.code = body.code;
    this.status = status;
    this.field = body.field;
  }
}

export function abortError(signal?: AbortSignal): Error {
  const reason: unknown = signal?.reason;
  if (reason instanceof Error) {
    return reason;
  }
  const error = new Error("the operation was aborted");
  error.name = "AbortError";
  return error;
}

/** Waits `ms` with the client's timers; rejects when `signal` aborts. */
export type Sleep = (ms: number, signal?: AbortSignal) => Promise<void>;

export interface TokenSource {
  /** The current token, fetching one first if there is none (null: no auth). */
  current(): Promise<string | null>;
  /** Asks getToken() for a fresh one (the gateway refused the current). */
  refresh(): Promise<string | null>;
  /** Whether there is a getToken() to ask. */
  readonly canRefresh: boolean;
}

export class HttpClient {
  constructor(
    private readonly baseUrl: string,
    private readonly fetchImpl: FetchLike,
    private readonly tokens: TokenSource,
  ) {}

  url(path: string): string {
    return this.baseUrl + path;
  }

  /** A request with the token; after a 401 one fresh token and one more try. */
  async send(path: string, init: RequestInit = {}): Promise<Response> {
    const request = (token: string | null) => {
      const headers = new Headers(init.headers);
      if (token !== null && token !== "") {
        headers.set("Authorization", `Bearer ${token}`);
      }
      return this.fetchImpl(this.url(path), { ...init, headers });
    };
    const token = await this.tokens.current();
    const response = await request(token);
    if (response.status !== 401 || !this.tokens.canRefresh) {
      return response;
    }
    await response.body?.cancel().catch(() => undefined);
    return request(await this.tokens.refresh());
  }

  /** A JSON request; a non-2xx answer throws its error body. */
  async json<T>(path: string, init: RequestInit = {}, body?: unknown): Promise<T> {
    const headers = new Headers(init.headers);
    headers.set("Accept", "application/json");
    if (body !== undefined) {
      headers.set("Content-Type", "application/json");
    }
    const request: RequestInit = { ...init, headers };
    if (body !== undefined) {
      request.body = JSON.stringify(body);
    }
    const response = await this.send(path, request);
    if (!response.ok) {
      throw await errorOf(response);
    }
    return (await response.json()) as T;
  }
}

/** The gateway's error body of a failed response (or a stand-in). */
export async function errorOf(response: Response): Promise<JobgateError> {
  let body: ErrorBody = { code: "http_error", message: `HTTP ${response.status}` };
  try {
    const parsed: unknown = await response.json();
    if (
      typeof parsed === "object" &&
      parsed !== null &&
      typeof (parsed as ErrorBody).code === "string" &&
      typeof (parsed as ErrorBody).message === "string"
    ) {
      body = parsed as ErrorBody;
    }
  } catch {
    // Not JSON: keep the stand-in.
  }
  return new JobgateError(body, response.status);
}

/** A status worth trying again later: the gateway or Redis is busy or away. */
export function isTransientStatus(status: number): boolean {
  return status === 408 || status === 429 || status >= 500;
}
