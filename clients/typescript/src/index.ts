// @jobgate/client: submit jobs to a jobgate gateway and follow their events
// exactly once, in order, across disconnects, restarts and token expiry.

export {
  JobgateClient,
  jwtLifetimeMs,
  randomUuid,
  type JobgateClientOptions,
  type JobsQuery,
  type StateListener,
  type SubmitOptions,
  type Timers,
  type TransportChoice,
  type WatchOptions,
} from "./client.js";
export {
  CLOSE_GOING_AWAY,
  CLOSE_NORMAL,
  CLOSE_PING_TIMEOUT,
  CLOSE_SLOW_CONSUMER,
  CLOSE_TOKEN_EXPIRED,
  Engine,
  type ConnectionState,
  type EngineOptions,
  type LogLevel,
  type Output,
  type StateChange,
} from "./engine.js";
export { backoffBound, backoffDelay, DEFAULT_BACKOFF, type BackoffOptions } from "./backoff.js";
export { JobgateError, type FetchLike } from "./http.js";
export { type LogOptions } from "./logs.js";
export { comparePositions, EventOrder, formatEventId, parseEventId, type Position } from "./order.js";
export { SseParser, type SseMessage } from "./transport/sse.js";
export type { WebSocketConstructor, WebSocketLike } from "./transport/websocket.js";
export * from "./types.js";
