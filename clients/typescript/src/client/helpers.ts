// Small pure helpers of the client: ids, a JWT's lifetime, URLs, errors,
// and an abortable sleep on the injectable timers.

import { abortError, JobgateError } from "../http.js";
import type { Position } from "../order.js";
import type { Timers, WatchOptions } from "./options.js";

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

export function baseUrl(url: string): string {
  return url.replace(/\/+$/, "");
}

export function webSocketUrl(base: string): string {
  return `${base.replace(/^http/, "ws")}/v1/ws`;
}

export function closedError(): JobgateError {
  return new JobgateError({ code: "client_closed", message: "the client is closed" });
}

/** Resolves after `ms`; rejects with an AbortError when `signals` abort first. */
export function sleep(timers: Timers, ms: number, signals: AbortSignal): Promise<void> {
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

/** Where a watch starts: after the position its options name (undefined: the default). */
export function watchAfter(options: WatchOptions): Position | undefined {
  return options.after === undefined && options.afterEpoch === undefined
    ? undefined
    : { epoch: options.afterEpoch ?? 1, seq: options.after ?? 0 };
}
