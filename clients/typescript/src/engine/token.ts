// The token: the one in use, whether it must be fetched again, when it
// expires and so when to refresh it (a margin before, or half way for a
// short-lived one), and the `auth` frame awaiting its answer.

/** When a refresh failed: wait this long before asking for a token again. */
export const TOKEN_RETRY_MS = 5_000;

export class TokenRefresh {
  token: string | null = null;
  /** Must be fetched again before the next connection. */
  stale: boolean;
  /** A getToken() is under way. */
  requested = false;
  /** When to ask for a fresh token on the open session; null: no need. */
  refreshAt: number | null = null;
  /** The request id of the `auth` whose answer has not come. */
  pendingAuth: string | null = null;
  private expiresAt: number | null = null;
  private authCount = 0;

  constructor(
    readonly hasSource: boolean,
    private readonly marginMs: number,
    private readonly clock: () => number,
  ) {
    this.stale = hasSource;
  }

  /** Whether a connection needs a getToken() first. */
  needsFetch(): boolean {
    return this.hasSource && (this.token === null || this.stale || this.expired());
  }

  /** A token from getToken(), with its lifetime if known. */
  arrived(token: string, expiresInMs: number | null | undefined, now: number): void {
    this.requested = false;
    this.token = token;
    this.stale = false;
    this.expiresAt = expiresInMs === undefined || expiresInMs === null ? null : now + expiresInMs;
  }

  /** The id of a new `auth` frame, awaited. */
  nextAuth(): string {
    this.authCount += 1;
    this.pendingAuth = `auth-${this.authCount}`;
    return this.pendingAuth;
  }

  /** The gateway said how long the token lasts (hello, auth_ok). */
  lifetime(expiresInMs: number | null | undefined): void {
    const now = this.clock();
    this.expiresAt = expiresInMs === undefined || expiresInMs === null ? null : now + expiresInMs;
    this.schedule(now);
  }

  schedule(now: number): void {
    if (!this.hasSource || this.expiresAt === null) {
      this.refreshAt = null;
      return;
    }
    const lifetime = this.expiresAt - now;
    // A lifetime shorter than twice the margin is refreshed half way.
    const margin = Math.min(this.marginMs, Math.max(lifetime, 0) / 2);
    this.refreshAt = Math.max(now, this.expiresAt - margin);
  }

  retryLater(now: number): void {
    this.refreshAt = now + TOKEN_RETRY_MS;
  }

  /** Whether a refresh is due now; if so, it is taken. */
  takeRefresh(now: number): boolean {
    if (this.refreshAt === null || now < this.refreshAt) {
      return false;
    }
    this.refreshAt = null;
    return true;
  }

  private expired(): boolean {
    return this.expiresAt !== null && this.clock() >= this.expiresAt - 1_000;
  }
}
