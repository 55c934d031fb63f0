// One reader's position in one job's events: hands each event out once, in
// `(epoch, seq)` order, holding back those that come early. Pure; shared by
// the WebSocket engine and the SSE streams.

import type { HistoryTruncated, JobEvent, SnapshotEvent } from "./types.js";

/** Where a reader is in a job's events: the last `(epoch, seq)` handed out. */
export interface Position {
  epoch: number;
  seq: number;
}

export const START: Position = Object.freeze({ epoch: 1, seq: 0 });

/** Negative, zero or positive as `a` comes before, with or after `b`. */
export function comparePositions(a: Position, b: Position): number {
  return a.epoch !== b.epoch ? a.epoch - b.epoch : a.seq - b.seq;
}

/** The SSE `Last-Event-ID` of a position: `<seq>` in epoch 1, else `<epoch>:<seq>`. */
export function formatEventId(position: Position): string {
  return position.epoch === 1 ? String(position.seq) : `${position.epoch}:${position.seq}`;
}

/** Reads an SSE job stream id (`<seq>` or `<epoch>:<seq>`); null if it is neither. */
export function parseEventId(id: string): Position | null {
  const match = /^(?:(\d+):)?(\d+)$/.exec(id.trim());
  if (!match) {
    return null;
  }
  const epoch = match[1] === undefined ? 1 : Number(match[1]);
  const seq = Number(match[2]);
  return Number.isSafeInteger(epoch) && epoch >= 1 && Number.isSafeInteger(seq)
    ? { epoch, seq }
    : null;
}

/** How many early events a reader holds before it asks for the history again. */
export const MAX_HELD_EVENTS = 256;

/**
 * The ordering rules of PROTOCOL.md ("Epochs"): within an epoch seqs have no
 * gaps, so an event past the next one waits for the missing ones; an event of
 * a higher epoch comes after every event of a lower one (the gateway replays
 * a new epoch from its first seq); anything at or before the position is a
 * duplicate or void.
 */
export class EventOrder {
  private current: Position;
  /** Early events of the current epoch, by seq. */
  private readonly held = new Map<number, JobEvent>();

  constructor(after: Position = START) {
    this.current = { ...after };
  }

  get position(): Position {
    return { ...this.current };
  }

  /** Events held back while an earlier one is missing. */
  get heldCount(): number {
    return this.held.size;
  }

  /** Takes one event; returns the events now due, in order (maybe none). */
  offer(event: JobEvent): JobEvent[] {
    const at: Position = { epoch: event.epoch, seq: event.seq };
    if (comparePositions(at, this.current) <= 0) {
      return [];
    }
    if (at.epoch > this.current.epoch) {
      // A new epoch begins where the gateway starts it; what was held of
      // the old one is void.
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
  truncated(message: HistoryTruncated): SnapshotEvent | null {
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
      data: message.snapshot,
    };
  }

  private drain(): JobEvent[] {
    const due: JobEvent[] = [];
    for (;;) {
      const next = this.held.get(this.current.seq + 1);
      if (next === undefined) {
        break;
      }
      this.held.delete(next.seq);
      this.current = { epoch: next.epoch, seq: next.seq };
      due.push(next);
    }
    return due;
  }
}
