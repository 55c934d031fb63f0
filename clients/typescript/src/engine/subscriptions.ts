// Subscriptions and delivery: the app's watches and the buffers of
// submitted jobs, the position each job is resumed from, the jobs the
// session is subscribed to, and the delivery of events in order and once
// (holding back early ones, reading the history again when one goes
// missing, a snapshot where the history was truncated).

import { comparePositions, EventOrder, MAX_HELD_EVENTS, type Position, START } from "../order.js";
import { type Reader, Readers } from "../readers.js";
import {
  type ClientFrame,
  type ErrorBody,
  type HistoryTruncated,
  isTerminal,
  type JobEvent,
  type SubscribedFrame,
  TERMINAL_STATUSES,
  type WatchItem,
} from "../types.js";
import type { EngineHost } from "./outputs.js";

/** Events kept for one submitted job nobody watches yet. */
const MAX_BUFFERED_ITEMS = 10_000;

/** A watch handed over to another transport, with where it is. */
export interface DrainedWatch {
  watch: number;
  jobId: string;
  position: Position;
}

export class Subscriptions {
  private readonly readers = new Readers();
  private nextBufferId = -1;
  /** Jobs the gateway is sending this session, with the position it was asked for. */
  private readonly subscribed = new Map<string, Position>();

  constructor(
    private readonly host: EngineHost,
    private readonly gapTimeoutMs: number,
    private readonly maxBufferedJobs: number,
  ) {}

  // ---- the app's watches ----

  /** A watch from after `after` (default: the job's buffer, else the whole history). */
  watch(watchId: number, jobId: string, after?: Position): void {
    const buffered = this.readers.bufferOf(jobId);
    if (buffered !== undefined) {
      this.adopt(buffered, watchId, after ?? START);
      return;
    }
    // Where the session's stream of the job is: the other readers' earliest.
    const streamAt = this.subscribed.has(jobId) ? this.readers.resumePosition(jobId) : null;
    const reader: Reader = {
      id: watchId,
      jobId,
      order: new EventOrder(after ?? START),
      buffer: null,
      ended: false,
      gapSince: null,
    };
    this.readers.set(reader);
    if (this.host.isOpen() && (streamAt === null || comparePositions(reader.order.position, streamAt) < 0)) {
      this.subscribe(jobId, reader.order.position);
    }
  }

  unwatch(watchId: number): void {
    const reader = this.readers.get(watchId);
    if (reader !== undefined) {
      this.readers.delete(watchId);
      this.releaseJob(reader.jobId);
    }
  }

  /** A watch takes over a submitted job's buffer: its events so far (after `after`), then live ones. */
  private adopt(buffered: Reader, watchId: number, after: Position): void {
    this.readers.delete(buffered.id);
    const order = new EventOrder(after);
    const reader: Reader = { id: watchId, jobId: buffered.jobId, order, buffer: null, ended: false, gapSince: null };
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
      // The job is over and the watch asked for nothing before its end.
      this.end(reader);
      return;
    }
    if (buffered.order.heldCount > 0) {
      // Early events stayed with the buffer: read them again.
      this.resync(reader.jobId);
    }
  }

  // ---- the gateway's frames ----

  /** A submit was accepted: the gateway subscribed the session to the job. */
  accepted(jobId: string): void {
    // Keep its events for the watch that usually follows.
    if (!this.subscribed.has(jobId)) {
      this.subscribed.set(jobId, START);
    }
    if (this.readers.of(jobId).length === 0) {
      this.addBuffer(jobId);
    }
  }

  event(event: JobEvent): void {
    const now = this.host.now();
    if (isTerminal(event)) {
      // The gateway stops sending a job at its terminal event.
      this.subscribed.delete(event.job_id);
    }
    for (const reader of this.readers.of(event.job_id)) {
      const due = reader.order.offer(event);
      reader.gapSince = reader.order.heldCount > 0 ? (reader.gapSince ?? now) : null;
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
      // Readers that asked for what comes after the end have had it all.
      this.endReadersPast(event.job_id, { epoch: event.epoch, seq: event.seq });
    }
  }

  /**
   * The gateway's answer to a subscribe (jobgate.v1 only): where the job
   * was when its watch started. A finished job whose end the subscribe's
   * `after` reached sends nothing more: its readers there are done.
   */
  subscribedAt(frame: SubscribedFrame): void {
    if (!TERMINAL_STATUSES.has(frame.status)) {
      return;
    }
    const last: Position = { epoch: frame.epoch, seq: frame.seq };
    const asked = this.subscribed.get(frame.job_id);
    if (asked !== undefined && comparePositions(asked, last) >= 0) {
      // The gateway does not watch the job: nothing to unsubscribe.
      this.subscribed.delete(frame.job_id);
    }
    this.endReadersPast(frame.job_id, last);
  }

  truncated(message: HistoryTruncated): void {
    for (const reader of this.readers.of(message.job_id)) {
      const snapshot = reader.order.truncated(message);
      if (snapshot !== null) {
        this.give(reader, snapshot);
      }
    }
  }

  /** The gateway refused a job's subscription: its watches fail. */
  failJob(jobId: string, error: ErrorBody): void {
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
  sessionOpened(): void {
    this.subscribed.clear();
    for (const jobId of this.readers.activeJobs()) {
      const position = this.readers.resumePosition(jobId);
      if (position !== null) {
        this.subscribe(jobId, position);
      }
    }
  }

  /** The session is gone: nothing is subscribed, no gap is being waited for. */
  sessionDropped(): void {
    this.subscribed.clear();
    for (const reader of this.readers.all()) {
      reader.gapSince = null;
    }
  }

  /** Reads the history again for jobs whose missing event is late. */
  checkGaps(now: number): void {
    const late = new Set<string>();
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
  deadlines(): number[] {
    const times: number[] = [];
    for (const reader of this.readers.all()) {
      if (reader.gapSince !== null) {
        times.push(reader.gapSince + this.gapTimeoutMs);
      }
    }
    return times;
  }

  /** The client closed: every watch ends, the buffers go. */
  endAll(): void {
    for (const reader of this.readers.all()) {
      if (reader.buffer === null) {
        this.host.emit({ type: "watch_end", watch: reader.id, job_id: reader.jobId });
      }
    }
    this.readers.clear();
  }

  /** The open watches with their positions; every reader goes. */
  drain(): DrainedWatch[] {
    const watches = this.readers.all()
      .filter((reader) => reader.buffer === null && !reader.ended)
      .map((reader) => ({ watch: reader.id, jobId: reader.jobId, position: reader.order.position }));
    this.readers.clear();
    return watches;
  }

  // ---- readers ----

  /** Ends the readers of a finished job that are at or past its last event. */
  private endReadersPast(jobId: string, last: Position): void {
    for (const reader of this.readers.of(jobId)) {
      if (comparePositions(reader.order.position, last) >= 0) {
        this.end(reader);
      }
    }
  }

  private addBuffer(jobId: string): void {
    const buffers = this.readers.buffers();
    if (buffers.length >= this.maxBufferedJobs) {
      // The oldest buffer goes; a later watch of it reads the history.
      const oldest = buffers[0]!;
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
      gapSince: null,
    });
  }

  private give(reader: Reader, item: WatchItem): void {
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

  private end(reader: Reader): void {
    reader.ended = true;
    reader.gapSince = null;
    if (reader.buffer === null) {
      this.readers.delete(reader.id);
      this.host.emit({ type: "watch_end", watch: reader.id, job_id: reader.jobId });
    }
  }

  /** No reader of the job is left: stop the gateway sending it. */
  private releaseJob(jobId: string): void {
    if (this.readers.of(jobId).length > 0 || !this.subscribed.has(jobId)) {
      return;
    }
    this.subscribed.delete(jobId);
    if (this.host.isOpen()) {
      this.host.send({ type: "unsubscribe", job_id: jobId });
    }
  }

  /** Reads the history again from where the readers are (an event went missing). */
  private resync(jobId: string): void {
    const position = this.readers.resumePosition(jobId);
    for (const reader of this.readers.of(jobId)) {
      reader.gapSince = null;
    }
    if (position !== null && this.host.isOpen()) {
      this.host.log("info", "events went missing; reading the job's history again", { job_id: jobId });
      this.subscribe(jobId, position);
    }
  }

  private subscribe(jobId: string, position: Position): void {
    this.subscribed.set(jobId, position);
    const frame: ClientFrame = { type: "subscribe", job_id: jobId, after: position.seq };
    if (position.epoch !== 1) {
      frame.after_epoch = position.epoch;
    }
    this.host.send(frame);
  }
}
