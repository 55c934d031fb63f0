// Submits whose `accepted` has not come: each keeps its frame (with its
// idempotency key) and the connection it was last sent on, so that a
// reconnect sends it again once and the gateway answers with the same job.

import type { ClientFrame, JobRequest } from "../types.js";

export type SubmitFrame = Extract<ClientFrame, { type: "submit" }>;

export interface PendingSubmit {
  requestId: string;
  frame: SubmitFrame;
  /** The connection it was last sent on. */
  sentOn: number | null;
}

export interface SubmitFrameOptions {
  idempotencyKey: string;
  traceparent?: string;
  tracestate?: string;
}

export class PendingSubmits {
  private readonly byId = new Map<string, PendingSubmit>();

  add(requestId: string, job: JobRequest, options: SubmitFrameOptions): PendingSubmit {
    const frame: SubmitFrame = {
      type: "submit",
      request_id: requestId,
      job,
      idempotency_key: options.idempotencyKey,
    };
    if (options.traceparent !== undefined) {
      frame.traceparent = options.traceparent;
    }
    if (options.tracestate !== undefined) {
      frame.tracestate = options.tracestate;
    }
    const pending: PendingSubmit = { requestId, frame, sentOn: null };
    this.byId.set(requestId, pending);
    return pending;
  }

  has(requestId: string): boolean {
    return this.byId.has(requestId);
  }

  /** Removes and returns the submit (undefined: given up, or answered already). */
  take(requestId: string): PendingSubmit | undefined {
    const submit = this.byId.get(requestId);
    this.byId.delete(requestId);
    return submit;
  }

  /** The frames to send on `connection`: those not sent on it yet, marked sent. */
  toSend(connection: number, submits: Iterable<PendingSubmit> = this.byId.values()): SubmitFrame[] {
    const frames: SubmitFrame[] = [];
    for (const submit of submits) {
      if (submit.sentOn !== connection) {
        submit.sentOn = connection;
        frames.push(submit.frame);
      }
    }
    return frames;
  }

  /** The connection is gone: every submit is to be sent again. */
  unsent(): void {
    for (const submit of this.byId.values()) {
      submit.sentOn = null;
    }
  }

  /** Removes and returns them all, in the order they were made. */
  takeAll(): PendingSubmit[] {
    const all = [...this.byId.values()];
    this.byId.clear();
    return all;
  }
}
