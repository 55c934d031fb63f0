// The app's getToken(), called one at a time (concurrent askers share the
// call), and the last token it gave, which HTTP requests reuse.

export class TokenFetcher {
  /** The last token getToken() returned. */
  token: string | null = null;
  private fetching: Promise<string | null> | null = null;

  constructor(private readonly getToken: (() => Promise<string> | string) | undefined) {}

  get canFetch(): boolean {
    return this.getToken !== undefined;
  }

  /** The last token, or a fetched one when there is none yet. */
  current(): Promise<string | null> {
    return this.token !== null || this.getToken === undefined ? Promise.resolve(this.token) : this.fetch();
  }

  /** One getToken() at a time; its result is shared. */
  fetch(): Promise<string | null> {
    const getToken = this.getToken;
    if (getToken === undefined) {
      return Promise.resolve(null);
    }
    if (this.fetching === null) {
      this.fetching = (async () => {
        try {
          const token = await getToken();
          this.token = token;
          return token;
        } finally {
          this.fetching = null;
        }
      })();
    }
    return this.fetching;
  }
}
