// JobgateClient over real sockets: an in-process WebSocket server (ws) and
// HTTP server play a scripted gateway, so the transports, the token and the
// subprotocol handling are tested end to end without the real gateway
// (test/integration.test.ts runs against that).

import assert from "node:assert/strict";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { after, describe, it } from "node:test";

import { WebSocket, WebSocketServer } from "ws";

import { JobgateClient, type StateChange, type WatchItem } from "../src/index.js";
import { event, JOB, TRACE } from "./harness.js";

type Frame = Record<string, unknown>;

/** A scripted gateway: HTTP routes and a WebSocket endpoint on one port. */
class FakeGateway {
  readonly server: Server;
  readonly wss: WebSocketServer;
  readonly frames: Frame[] = [];
  readonly upgrades: IncomingMessage[] = [];
  readonly requests: { method: string; url: string; headers: IncomingMessage["headers"]; body: string }[] = [];
  sockets: WebSocket[] = [];
  onFrame: (socket: WebSocket, frame: Frame) => void = () => undefined;
  onRequest: (request: IncomingMessage, body: string, response: ServerResponse) => void = (_request, _body, response) => {
    response.writeHead(404).end();
  };

  constructor(readonly echoSubprotocol: boolean) {
    this.server = createServer((request, response) => {
      let body = "";
      request.on("data", (chunk: Buffer) => (body += chunk.toString()));
      request.on("end", () => {
        this.requests.push({ method: request.method ?? "", url: request.url ?? "", headers: request.headers, body });
        this.onRequest(request, body, response);
      });
    });
    this.wss = new WebSocketServer({
      server: this.server,
      handleProtocols: (protocols) => (echoSubprotocol && protocols.has("jobgate.v1") ? "jobgate.v1" : false),
    });
    this.wss.on("connection", (socket, request) => {
      this.upgrades.push(request);
      this.sockets.push(socket);
      if (socket.protocol === "jobgate.v1") {
        socket.send(
          JSON.stringify({
            type: "hello",
            protocol: "jobgate.v1",
            session_id: "6f1c2b1e-0c1a-4d7e-9a51-3b0f8f1e2a77",
            ping_interval_ms: 15_000,
            ping_timeout_ms: 30_000,
            token_expires_in_ms: null,
          }),
        );
      }
      socket.on("message", (data) => {
        const frame = JSON.parse(String(data)) as Frame;
        this.frames.push(frame);
        this.onFrame(socket, frame);
      });
    });
  }

  async listen(): Promise<string> {
    await new Promise<void>((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  async stop(): Promise<void> {
    for (const socket of this.wss.clients) socket.terminate();
    this.wss.close();
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

const gateways: FakeGateway[] = [];
after(async () => {
  for (const gateway of gateways) await gateway.stop();
});

async function gateway(echoSubprotocol: boolean): Promise<[FakeGateway, string]> {
  const fake = new FakeGateway(echoSubprotocol);
  gateways.push(fake);
  return [fake, await fake.listen()];
}

async function collect(items: AsyncIterable<WatchItem>): Promise<WatchItem[]> {
  const all: WatchItem[] = [];
  for await (const item of items) all.push(item);
  return all;
}

function send(socket: WebSocket, frame: unknown): void {
  socket.send(JSON.stringify(frame));
}

describe("JobgateClient over WebSocket", () => {
  it("works with a gateway that does not speak jobgate.v1: submit, watch to the end, token in the header", async () => {
    const [fake, url] = await gateway(false);
    fake.onFrame = (socket, frame) => {
      if (frame.type === "submit") {
        send(socket, { type: "accepted", request_id: frame.request_id, job_id: JOB, trace_id: TRACE });
        for (const e of [event(1, "queued"), event(2, "started"), event(3), event(4, "completed")]) send(socket, e);
      }
    };
    const client = new JobgateClient({ url, getToken: async () => "token-1", WebSocket: WebSocket as never });
    try {
      const { job_id, trace_id } = await client.submit({ kind: "echo", params: { hello: "world" } });
      assert.equal(job_id, JOB);
      assert.equal(trace_id, TRACE);
      const items = await collect(client.watch(job_id));
      assert.deepEqual(
        items.map((item) => [item.seq, item.event]),
        [
          [1, "queued"],
          [2, "started"],
          [3, "progress"],
          [4, "completed"],
        ],
      );
      const submit = fake.frames.find((frame) => frame.type === "submit")!;
      assert.match(String(submit.idempotency_key), /^[0-9a-f-]{36}$/);
      assert.equal(fake.upgrades.at(-1)!.headers.authorization, "Bearer token-1");
      assert.equal(fake.upgrades.at(-1)!.headers["sec-websocket-protocol"], undefined);
    } finally {
      client.close();
    }
  });

  it("with jobgate.v1: a 4008 mid-job reconnects, resumes after the last event, delivers each once", async () => {
    const [fake, url] = await gateway(true);
    let sessions = 0;
    fake.wss.on("connection", (socket) => {
      sessions += 1;
      if (sessions === 1) {
        send(socket, event(1, "queued"));
        send(socket, event(2, "started"));
        setTimeout(() => socket.close(4008, "slow consumer: resume with subscribe after"), 20);
      }
    });
    fake.onFrame = (socket, frame) => {
      if (frame.type === "subscribe" && sessions > 1) {
        assert.equal(frame.after, 2);
        for (const e of [event(2, "started"), event(3), event(4, "completed")]) send(socket, e);
      }
    };
    const states: StateChange[] = [];
    const client = new JobgateClient({ url, WebSocket: WebSocket as never });
    client.onStateChange((change) => states.push(change));
    try {
      const items = await collect(client.watch(JOB));
      assert.deepEqual(
        items.map((item) => item.seq),
        [1, 2, 3, 4],
      );
      assert.equal(fake.upgrades[0]!.headers["sec-websocket-protocol"], "jobgate.v1");
      assert.ok(states.some((change) => change.state === "reconnecting" && change.code === 4008 && change.retryInMs === 0));
      assert.ok(states.some((change) => change.state === "connected" && change.reason === "reconnected"));
    } finally {
      client.close();
    }
  });

  it("an aborted watch throws AbortError and unsubscribes", async () => {
    const [fake, url] = await gateway(true);
    const client = new JobgateClient({ url, WebSocket: WebSocket as never });
    const controller = new AbortController();
    try {
      const watch = client.watch(JOB, { signal: controller.signal });
      const pending = watch.next();
      await waitFor(() => fake.frames.some((frame) => frame.type === "subscribe"));
      controller.abort();
      await assert.rejects(pending, { name: "AbortError" });
      await waitFor(() => fake.frames.some((frame) => frame.type === "unsubscribe"));
    } finally {
      client.close();
    }
  });

  it("a submit error rejects with the gateway's code", async () => {
    const [fake, url] = await gateway(true);
    fake.onFrame = (socket, frame) => {
      if (frame.type === "submit") {
        send(socket, { type: "error", request_id: frame.request_id, code: "unknown_kind", message: "no worker serves nope" });
      }
    };
    const client = new JobgateClient({ url, WebSocket: WebSocket as never });
    try {
      await assert.rejects(client.submit({ kind: "nope", params: {} }), { name: "JobgateError", code: "unknown_kind" });
    } finally {
      client.close();
    }
  });
});

describe("JobgateClient over HTTP and SSE", () => {
  it("submits with an Idempotency-Key and traceparent, re-sends with the same key after a 503", async () => {
    const [fake, url] = await gateway(false);
    let posts = 0;
    fake.onRequest = (request, _body, response) => {
      if (request.method === "POST" && request.url === "/v1/jobs") {
        posts += 1;
        if (posts === 1) {
          response.writeHead(503, { "content-type": "application/json" }).end('{"code":"redis_unavailable","message":"x"}');
          return;
        }
        response.writeHead(202, { "content-type": "application/json" }).end(JSON.stringify({ job_id: JOB, status: "queued", trace_id: TRACE }));
      }
    };
    const client = new JobgateClient({ url, transport: "sse", backoff: { initialMs: 10, maxMs: 20 } });
    try {
      const traceparent = `00-${TRACE}-00f067aa0ba902b7-01`;
      const result = await client.submit({ kind: "echo", params: {} }, { idempotencyKey: "key-7", traceparent });
      assert.deepEqual(result, { job_id: JOB, trace_id: TRACE });
      const keys = fake.requests.filter((r) => r.url === "/v1/jobs").map((r) => r.headers["idempotency-key"]);
      assert.deepEqual(keys, ["key-7", "key-7"]);
      assert.equal(fake.requests.at(-1)!.headers.traceparent, traceparent);
    } finally {
      client.close();
    }
  });

  it("watches over SSE, resuming with Last-Event-ID after the stream drops", async () => {
    const [fake, url] = await gateway(false);
    let streams = 0;
    fake.onRequest = (request, _body, response) => {
      if (request.url === `/v1/jobs/${JOB}/events`) {
        streams += 1;
        response.writeHead(200, { "content-type": "text/event-stream" });
        const write = (e: ReturnType<typeof event>) => response.write(`id: ${e.seq}\nevent: ${e.event}\ndata: ${JSON.stringify(e)}\n\n`);
        if (streams === 1) {
          write(event(1, "queued"));
          write(event(2, "started"));
          response.end();
        } else {
          assert.equal(request.headers["last-event-id"], "2");
          assert.equal(request.headers.authorization, "Bearer sse-token");
          write(event(2, "started"));
          write(event(3));
          write(event(4, "completed"));
          response.end();
        }
      }
    };
    const client = new JobgateClient({ url, transport: "sse", getToken: () => "sse-token", backoff: { initialMs: 10, maxMs: 20 } });
    try {
      const items = await collect(client.watch(JOB));
      assert.deepEqual(
        items.map((item) => item.seq),
        [1, 2, 3, 4],
      );
      assert.equal(streams, 2);
    } finally {
      client.close();
    }
  });

  it("auto falls back to SSE when WebSocket cannot connect but HTTP works", async () => {
    const [fake, url] = await gateway(false);
    fake.wss.on("connection", (socket) => socket.terminate());
    fake.wss.options.verifyClient = () => false;
    fake.onRequest = (request, _body, response) => {
      if (request.url === "/healthz") {
        response.writeHead(200).end("ok");
      } else if (request.method === "POST" && request.url === "/v1/jobs") {
        response.writeHead(202, { "content-type": "application/json" }).end(JSON.stringify({ job_id: JOB, status: "queued", trace_id: TRACE }));
      } else {
        response.writeHead(404).end();
      }
    };
    const client = new JobgateClient({
      url,
      WebSocket: WebSocket as never,
      transport: "auto",
      autoFallbackAfter: 2,
      backoff: { initialMs: 10, maxMs: 20 },
    });
    try {
      const result = await client.submit({ kind: "echo", params: {} }, { idempotencyKey: "auto-1" });
      assert.equal(result.job_id, JOB);
      assert.equal(client.transport, "sse");
      assert.equal(fake.requests.find((r) => r.url === "/v1/jobs")!.headers["idempotency-key"], "auto-1");
    } finally {
      client.close();
    }
  });

  it("sends its log lines, batched, to POST /v1/client-logs when enabled", async () => {
    const [fake, url] = await gateway(true);
    fake.onRequest = (_request, _body, response) => response.writeHead(202).end();
    const client = new JobgateClient({
      url,
      WebSocket: WebSocket as never,
      logs: { enabled: true, level: "debug", flushIntervalMs: 20 },
    });
    client.connect();
    await waitFor(() => fake.sockets.length > 0);
    fake.sockets[0]!.close(1011, "internal error");
    await waitFor(() => fake.requests.some((r) => r.url === "/v1/client-logs"));
    client.close();
    const post = fake.requests.find((r) => r.url === "/v1/client-logs")!;
    const body = JSON.parse(post.body) as { records: { level: string; message: string; service: string; timestamp: string }[] };
    assert.ok(body.records.length >= 1);
    assert.ok(body.records.every((r) => r.service === "jobgate-client" && r.timestamp.length >= 10));
    assert.ok(body.records.some((r) => r.message === "reconnecting"));
  });
});

async function waitFor(condition: () => boolean, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error("timed out waiting");
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}
