// Full-jitter exponential backoff: the n-th consecutive failure waits a
// uniformly random time in [0, min(max, initial * 2^n)). Pure: the random
// source is passed in.

export interface BackoffOptions {
  /** The bound of the first wait, ms (default 500). */
  initialMs: number;
  /** The largest bound, ms (default 30 000). */
  maxMs: number;
}

export const DEFAULT_BACKOFF: BackoffOptions = { initialMs: 500, maxMs: 30_000 };

/** The upper bound of the wait after `failures` consecutive failures. */
export function backoffBound(options: BackoffOptions, failures: number): number {
  // 2^n overflows nothing that matters: min() caps it first.
  const exponent = Math.min(failures, 52);
  return Math.min(options.maxMs, options.initialMs * 2 ** exponent);
}

/** A wait in [0, backoffBound) drawn with `random` (in [0, 1)). */
export function backoffDelay(
  options: BackoffOptions,
  failures: number,
  random: () => number,
): number {
  const draw = Math.min(Math.max(random(), 0), 1);
  return Math.floor(draw * backoffBound(options, failures));
}
