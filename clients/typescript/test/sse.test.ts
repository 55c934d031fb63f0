// The text/event-stream parser and SSE ids.

import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { formatEventId, parseEventId } from "../src/order.js";
import { SseParser } from "../src/transport/sse.js";

describe("SseParser", () => {
  it("reads id, event and data of the gateway's job stream", () => {
    const parser = new SseParser();
    const messages = parser.push('id: 1\nevent: queued\ndata: {"seq":1}\n\nid: 2:5\nevent: progress\ndata: {"seq":5}\n\n');
    assert.deepEqual(messages, [
      { lastEventId: "1", hasId: true, event: "queued", data: '{"seq":1}' },
      { lastEventId: "2:5", hasId: true, event: "progress", data: '{"seq":5}' },
    ]);
  });

  it("takes chunks split anywhere, CRLF and CR line ends, comments and multi-line data", () => {
    const text = ": keep-alive\r\nid: 3\r\ndata: a\r\ndata: b\r\n\r\nevent: x\rdata: c\r\r\n";
    for (let split = 0; split <= text.length; split += 1) {
      const parser = new SseParser();
      const messages = [...parser.push(text.slice(0, split)), ...parser.push(text.slice(split))];
      assert.deepEqual(
        messages.map((m) => [m.lastEventId, m.event, m.data]),
        [
          ["3", "message", "a\nb"],
          ["3", "x", "c"],
        ],
        `split at ${split}`,
      );
      assert.equal(messages[1]!.hasId, false);
    }
  });

  it("ignores a message without data", () => {
    const parser = new SseParser();
    assert.deepEqual(parser.push("event: ping\n\n"), []);
  });
});

describe("SSE ids", () => {
  it("<seq> in epoch 1, <epoch>:<seq> after", () => {
    assert.equal(formatEventId({ epoch: 1, seq: 7 }), "7");
    assert.equal(formatEventId({ epoch: 3, seq: 7 }), "3:7");
    assert.deepEqual(parseEventId("7"), { epoch: 1, seq: 7 });
    assert.deepEqual(parseEventId("3:7"), { epoch: 3, seq: 7 });
    assert.equal(parseEventId("x"), null);
    assert.equal(parseEventId("0:1"), null);
  });
});
