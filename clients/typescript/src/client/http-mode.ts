// The client's SSE + HTTP mode (transport "sse", or "auto" after the
// fallback): watches piped from an SSE stream into their queue, submits
// sent as HTTP requests with their idempotency keys.

import type { Position } from "../order.js";
import type { AsyncQueue } from "../queue.js";
import { type SseContext, submitOverHttp, watchOverSse } from "../transport/sse.js";
import type { JobRequest, Submitted, WatchItem } from "../types.js";
import { closedError } from "./helpers.js";

/** A submit the app awaits. */
export interface PendingSubmit {
  resolve(result: Submitted): void;
  reject(error: unknown): void;
  job: JobRequest;
  idempotencyKey: string;
  traceparent?: string;
  tracestate?: string;
  signal?: AbortSignal;
}

/** Feeds a watch's queue from SSE until the job ends, the watch stops or the client closes. */
export function pipeSse(
  sse: SseContext,
  closing: AbortSignal,
  queue: AsyncQueue<WatchItem>,
  jobId: string,
  after: Position,
  signal: AbortSignal,
): void {
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

/** Submits over HTTP; a submit cut short by close() fails with "client_closed". */
export async function submitPendingOverHttp(sse: SseContext, closing: AbortSignal, pending: PendingSubmit): Promise<Submitted> {
  const options: { idempotencyKey: string; traceparent?: string; tracestate?: string; signal?: AbortSignal } = {
    idempotencyKey: pending.idempotencyKey,
    signal: pending.signal === undefined ? closing : AbortSignal.any([pending.signal, closing]),
  };
  if (pending.traceparent !== undefined) options.traceparent = pending.traceparent;
  if (pending.tracestate !== undefined) options.tracestate = pending.tracestate;
  try {
    return await submitOverHttp(sse, pending.job, options);
  } catch (error) {
    throw closing.aborted ? closedError() : error;
  }
}
