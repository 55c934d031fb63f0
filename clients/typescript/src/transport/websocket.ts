// Carries the engine's session over a WebSocket: opens sockets when told,
// passes frames and closes back as engine inputs. It decides nothing.

import type { ClientFrame } from "../types.js";
import { SUBPROTOCOL } from "../types.js";

/** The part of the WebSocket API (browsers, Node's `ws`) this client uses. */
export interface WebSocketLike {
  readonly protocol: string;
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
}

/** A WebSocket class: the browser's, or `ws`'s (which also takes `{headers}`). */
export type WebSocketConstructor = new (
  url: string,
  protocols?: string | string[],
  options?: { headers?: Record<string, string> },
) => WebSocketLike;

/** What the socket tells the engine. */
export interface SocketEvents {
  opened(connection: number, protocol: string | null): void;
  frame(connection: number, value: unknown): void;
  closed(connection: number, code: number, reason: string, httpStatus?: number): void;
}

export interface WebSocketTransportOptions {
  /** ws:// or wss:// URL of `/v1/ws`. */
  url: string;
  WebSocket: WebSocketConstructor;
  /**
   * How the token travels: `header` (Authorization: Bearer; Node's `ws`),
   * `query` (access_token; browsers, whose WebSocket cannot set headers).
   */
  tokenIn: "header" | "query";
}

/** Close code a browser may send (1000 or 3000–4999); anything else becomes 1000. */
function sendableCloseCode(code: number): number {
  return code === 1000 || (code >= 3000 && code <= 4999) ? code : 1000;
}

export class WebSocketTransport {
  private socket: WebSocketLike | null = null;
  private connection = 0;
  /**
   * False once a gateway refused the handshake because it does not speak
   * the subprotocol (`ws` fails a handshake whose answer does not echo
   * one): then this transport connects without offering it.
   */
  private offerSubprotocol = true;

  constructor(
    private readonly options: WebSocketTransportOptions,
    private readonly events: SocketEvents,
  ) {}

  open(connection: number, token: string | null): void {
    this.discard();
    this.connection = connection;
    this.connect(connection, token, this.offerSubprotocol);
  }

  send(connection: number, frame: ClientFrame): void {
    if (connection !== this.connection || this.socket === null) {
      return;
    }
    try {
      this.socket.send(JSON.stringify(frame));
    } catch {
      // The socket is closing: its close event tells the engine.
    }
  }

  close(connection: number, code: number, reason: string): void {
    if (connection !== this.connection) {
      return;
    }
    this.discard(code, reason);
  }

  private connect(connection: number, token: string | null, offerSubprotocol: boolean): void {
    let url = this.options.url;
    const init: { headers?: Record<string, string> } = {};
    if (token !== null && token !== "") {
      if (this.options.tokenIn === "header") {
        init.headers = { Authorization: `Bearer ${token}` };
      } else {
        url += `${url.includes("?") ? "&" : "?"}access_token=${encodeURIComponent(token)}`;
      }
    }
    let socket: WebSocketLike;
    try {
      socket = offerSubprotocol
        ? new this.options.WebSocket(url, [SUBPROTOCOL], init)
        : new this.options.WebSocket(url, [], init);
    } catch (error) {
      queueMicrotask(() => this.events.closed(connection, 1006, String(error)));
      return;
    }
    this.socket = socket;
    let opened = false;
    let failure = "";
    let httpStatus: number | undefined;
    const mine = () => this.socket === socket && this.connection === connection;
    socket.onopen = () => {
      if (!mine()) {
        return;
      }
      opened = true;
      this.events.opened(connection, socket.protocol === "" ? null : socket.protocol);
    };
    socket.onmessage = (event) => {
      if (!mine() || typeof event.data !== "string") {
        return;
      }
      let value: unknown;
      try {
        value = JSON.parse(event.data);
      } catch {
        return;
      }
      this.events.frame(connection, value);
    };
    socket.onerror = (event) => {
      const error = (event as { error?: unknown; message?: unknown } | null) ?? {};
      failure = String(error.message ?? (error.error as Error | undefined)?.message ?? "");
      const status = /Unexpected server response: (\d+)/.exec(failure);
      if (status) {
        httpStatus = Number(status[1]);
      }
    };
    socket.onclose = (event) => {
      if (!mine()) {
        return;
      }
      this.socket = null;
      if (!opened && offerSubprotocol && /subprotocol/i.test(failure)) {
        // An older gateway: connect again at once without the subprotocol,
        // and keep doing so (it gets no hello; defaults apply).
        this.offerSubprotocol = false;
        this.connect(connection, token, false);
        return;
      }
      this.events.closed(connection, event.code, event.reason || failure, opened ? undefined : httpStatus);
    };
  }

  private discard(code = 1000, reason = ""): void {
    const socket = this.socket;
    this.socket = null;
    if (socket === null) {
      return;
    }
    socket.onopen = null;
    socket.onmessage = null;
    // Not null: `ws` throws an error event nobody listens to.
    socket.onerror = () => {};
    socket.onclose = null;
    try {
      socket.close(sendableCloseCode(code), reason);
    } catch {
      // Already closed.
    }
  }
}
