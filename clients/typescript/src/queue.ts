// A push-to-pull queue: the engine pushes what a watch delivers, the app
// pulls it with `for await`. Unbounded: the engine delivers only what the
// gateway sent, and the gateway bounds that (4008 closes a session whose
// client does not read).

export class AsyncQueue<T> implements AsyncIterableIterator<T> {
  private readonly items: T[] = [];
  private readonly waiting: { resolve: (result: IteratorResult<T>) => void; reject: (error: unknown) => void }[] = [];
  private done = false;
  private failure: { error: unknown } | null = null;

  constructor(private readonly onReturn: () => void = () => undefined) {}

  push(item: T): void {
    if (this.done) {
      return;
    }
    const waiter = this.waiting.shift();
    if (waiter !== undefined) {
      waiter.resolve({ value: item, done: false });
    } else {
      this.items.push(item);
    }
  }

  /** No more items: pending and later reads end after what is queued. */
  end(): void {
    if (this.done) {
      return;
    }
    this.done = true;
    for (const waiter of this.waiting.splice(0)) {
      waiter.resolve({ value: undefined, done: true });
    }
  }

  /** Ends with an error, thrown to the reader after what is queued. */
  fail(error: unknown): void {
    if (this.done) {
      return;
    }
    this.failure = { error };
    this.done = true;
    for (const waiter of this.waiting.splice(0)) {
      waiter.reject(error);
    }
  }

  next(): Promise<IteratorResult<T>> {
    const item = this.items.shift();
    if (item !== undefined) {
      return Promise.resolve({ value: item, done: false });
    }
    if (this.failure !== null) {
      const { error } = this.failure;
      this.failure = null;
      return Promise.reject(error);
    }
    if (this.done) {
      return Promise.resolve({ value: undefined, done: true });
    }
    return new Promise((resolve, reject) => this.waiting.push({ resolve, reject }));
  }

  /** The reader stopped early (break, return, throw in the loop). */
  return(): Promise<IteratorResult<T>> {
    const wasDone = this.done;
    this.done = true;
    this.items.length = 0;
    this.failure = null;
    if (!wasDone) {
      this.onReturn();
    }
    return Promise.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<T> {
    return this;
  }
}
