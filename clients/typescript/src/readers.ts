// The engine's readers of jobs: the app's watches, and the buffers of
// submitted jobs nobody watches yet, indexed by id and by job. Pure
// bookkeeping; the engine decides what to do with them.

import { comparePositions, type EventOrder, type Position } from "./order.js";
import type { WatchItem } from "./types.js";

/** One reader of a job: an app watch, or the buffer of a submitted job nobody watches yet. */
export interface Reader {
  /** The watch id (buffers: negative ids of the engine's own). */
  id: number;
  jobId: string;
  order: EventOrder;
  /** Buffers keep what they get until a watch adopts them; null for a watch. */
  buffer: WatchItem[] | null;
  /** Saw the terminal event (a buffer stays until adopted or evicted). */
  ended: boolean;
  /** Since when events wait for a missing one (engine clock). */
  gapSince: number | null;
}

export class Readers {
  private readonly byId = new Map<number, Reader>();
  private readonly byJob = new Map<string, Set<Reader>>();

  set(reader: Reader): void {
    this.delete(reader.id);
    this.byId.set(reader.id, reader);
    let readers = this.byJob.get(reader.jobId);
    if (readers === undefined) {
      readers = new Set();
      this.byJob.set(reader.jobId, readers);
    }
    readers.add(reader);
  }

  get(id: number): Reader | undefined {
    return this.byId.get(id);
  }

  delete(id: number): Reader | undefined {
    const reader = this.byId.get(id);
    if (reader === undefined) {
      return undefined;
    }
    this.byId.delete(id);
    const readers = this.byJob.get(reader.jobId);
    readers?.delete(reader);
    if (readers?.size === 0) {
      this.byJob.delete(reader.jobId);
    }
    return reader;
  }

  clear(): void {
    this.byId.clear();
    this.byJob.clear();
  }

  /** Every reader, in the order they were added. */
  all(): Reader[] {
    return [...this.byId.values()];
  }

  /** The job's readers still reading (not past its terminal event). */
  of(jobId: string): Reader[] {
    return [...(this.byJob.get(jobId) ?? [])].filter((reader) => !reader.ended);
  }

  /** The submitted job's buffer, if it has one (ended or not). */
  bufferOf(jobId: string): Reader | undefined {
    return [...(this.byJob.get(jobId) ?? [])].find((reader) => reader.buffer !== null);
  }

  /** Every buffer, oldest first. */
  buffers(): Reader[] {
    return this.all().filter((reader) => reader.buffer !== null);
  }

  /** The jobs that still have a reader reading. */
  activeJobs(): string[] {
    return [...this.byJob.keys()].filter((jobId) => this.of(jobId).length > 0);
  }

  /** The earliest position any reader of the job needs; null when none reads it. */
  resumePosition(jobId: string): Position | null {
    let earliest: Position | null = null;
    for (const reader of this.of(jobId)) {
      const position = reader.order.position;
      if (earliest === null || comparePositions(position, earliest) < 0) {
        earliest = position;
      }
    }
    return earliest;
  }
}
