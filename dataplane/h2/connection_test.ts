import assert from "node:assert/strict";
import type { H2Stream } from "./stream.ts";
import { connectionPair, literalBlock, rawClientPair, readAll } from "../../tests/harness/h2peer.ts";
import { ErrorCode, Flag, type Frame, FrameType } from "./frame.ts";
import type { HeaderField } from "./fields.ts";

const CONNECT: HeaderField[] = [[":method", "CONNECT"], [":authority", "10.0.1.2:8080"]];

/** A server handler that answers 200 and echoes the stream back, half-close included. */
function echo(stream: H2Stream) {
  stream.respond([[":status", "200"]]);
  stream.pipe(stream);
}

function pattern(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = (i * 31 + seed) & 255;
  return out;
}

const goawayCode = (f: Frame | undefined) => f?.type === FrameType.GOAWAY ? f.code : undefined;
const isReset = (id: number) => (f: Frame) => f.type === FrameType.RST_STREAM && f.streamId === id;

Deno.test("H2Connection carries CONNECT streams both ways with half-close, beyond every window", async () => {
  await using pair = await connectionPair({ onStream: echo });
  const size = 20 * 1024 * 1024 + 7; // more than the 16 MiB connection window and the 4 MiB stream window
  const streams = [1, 2, 3].map((seed) => {
    const stream = pair.client.request(CONNECT);
    const body = pattern(size / (seed === 1 ? 1 : 64) | 0, seed);
    stream.end(body);
    return { stream, body };
  });
  for (const { stream, body } of streams) {
    const response = await stream.response;
    assert.deepEqual(response, [[":status", "200"]]);
    const got = await readAll(stream);
    assert.equal(got.byteLength, body.byteLength);
    assert.ok(got.every((b, i) => b === body[i]), "echoed bytes differ");
  }
  assert.equal(pair.client.activeStreams, 0);
  assert.equal(pair.server.activeStreams, 0);
});

Deno.test("H2Connection keeps one direction open after the other half-closes", async () => {
  let serverSide: H2Stream | undefined;
  await using pair = await connectionPair({
    onStream: (s) => {
      serverSide = s;
      s.respond([[":status", "200"]]);
    },
  });
  const stream = pair.client.request(CONNECT);
  await stream.response;
  stream.end(new TextEncoder().encode("request"));
  assert.equal(new TextDecoder().decode(await readAll(serverSide!)), "request");
  // The client finished sending; the server can still send for as long as it likes.
  for (let i = 0; i < 3; i++) serverSide!.write(new TextEncoder().encode(`reply ${i};`));
  serverSide!.end();
  assert.equal(new TextDecoder().decode(await readAll(stream)), "reply 0;reply 1;reply 2;");
});

Deno.test("H2Connection holds a writer back when the reader stops reading, memory bounded by the windows", async () => {
  let serverSide: H2Stream | undefined;
  await using pair = await connectionPair({
    onStream: (s) => {
      serverSide = s;
      s.respond([[":status", "200"]]);
      s.pause();
    },
  });
  const stream = pair.client.request(CONNECT);
  await stream.response;
  const chunk = new Uint8Array(256 * 1024);
  let written = 0;
  // Write the way pipe() does: on until write() says stop, then wait for 'drain'. Flow control must make the
  // drain stop coming once the reader's window is full.
  while (written < 64 * 1024 * 1024) {
    written += chunk.byteLength;
    if (stream.write(chunk)) continue;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const drained = await new Promise<boolean>((resolve) => {
      stream.once("drain", () => resolve(true));
      timer = setTimeout(() => resolve(false), 300);
    });
    clearTimeout(timer);
    if (!drained) break;
  }
  const window = 4 * 1024 * 1024;
  assert.ok(written <= window + 1024 * 1024, `wrote ${written} bytes before being held back`);
  assert.ok(serverSide!.readableLength <= window, `the reader buffered ${serverSide!.readableLength}`);
  assert.ok(serverSide!.readableLength > window - chunk.byteLength, "the window was used");
  // Reading again releases the window and everything arrives.
  const reading = readAll(serverSide!);
  stream.end();
  const got = await reading;
  assert.equal(got.byteLength, written);
});

Deno.test("H2Connection carries a request with trailers and a response with trailers", async () => {
  await using pair = await connectionPair({
    onStream: async (s) => {
      await readAll(s);
      s.respond([[":status", "200"], ["content-type", "application/grpc"]]);
      s.write(new TextEncoder().encode("body"));
      s.endWithTrailers([["grpc-status", "0"], ["grpc-message", "ok"]]);
    },
  });
  const stream = pair.client.request([[":method", "POST"], [":scheme", "http"], [":path", "/svc/M"], [
    "te",
    "trailers",
  ]]);
  stream.end(new Uint8Array([0, 0, 0, 0, 0]));
  assert.equal((await stream.response)[0][1], "200");
  assert.equal(new TextDecoder().decode(await readAll(stream)), "body");
  assert.deepEqual(stream.trailers, [["grpc-status", "0"], ["grpc-message", "ok"]]);
});

Deno.test("H2Connection refuses streams beyond 200 concurrent with REFUSED_STREAM and serves the rest", async () => {
  const held: H2Stream[] = [];
  await using pair = await rawClientPair({
    onStream: (s) => {
      held.push(s);
      s.respond([[":status", "200"]]);
    },
  });
  pair.peer.settings();
  for (let i = 0; i < 201; i++) pair.peer.headers(1 + 2 * i, CONNECT);
  const refused = await pair.peer.waitFor(isReset(401));
  assert.equal(refused?.type === FrameType.RST_STREAM && refused.code, ErrorCode.REFUSED_STREAM);
  assert.equal(held.length, 200);
  assert.equal(pair.server.activeStreams, 200);
  // A finished stream frees a slot.
  pair.peer.frame(FrameType.RST_STREAM, 0, 1, new Uint8Array([0, 0, 0, 8]));
  pair.peer.headers(403, CONNECT);
  await pair.peer.waitFor((f) => f.type === FrameType.HEADERS && f.streamId === 403);
  assert.equal(held.length, 201);
});

Deno.test("H2Connection resets a malformed request with PROTOCOL_ERROR and keeps the connection", async (t) => {
  const seen: H2Stream[] = [];
  await using pair = await rawClientPair({ onStream: (s) => (seen.push(s), echo(s)) });
  pair.peer.settings();
  const bad: [string, HeaderField[]][] = [
    ["CONNECT with :path", [...CONNECT, [":path", "/"]]],
    ["extended CONNECT", [...CONNECT, [":protocol", "websocket"]]],
    ["uppercase field name", [...CONNECT, ["Forwarded", "for=x"]]],
    ["CRLF in a value", [...CONNECT, ["baggage", "a\r\nb: c"]]],
    ["no :authority", [[":method", "CONNECT"]]],
  ];
  let id = 1;
  for (const [name, fields] of bad) {
    await t.step(name, async () => {
      pair.peer.frame(FrameType.HEADERS, Flag.END_HEADERS, id, literalBlock(fields));
      const reset = await pair.peer.waitFor(isReset(id));
      assert.equal(reset?.type === FrameType.RST_STREAM && reset.code, ErrorCode.PROTOCOL_ERROR);
      id += 2;
    });
  }
  assert.equal(seen.length, 0, "no malformed request reached the handler");
  pair.peer.headers(id, CONNECT);
  const ok = await pair.peer.waitFor((f) => f.type === FrameType.HEADERS && f.streamId === id);
  assert.ok(ok, "a good request after the bad ones is served");
  assert.equal(goawayCode(pair.peer.frames.find((f) => f.type === FrameType.GOAWAY)), undefined);
});

Deno.test("H2Connection answers a header list over 64 KiB with 431 and keeps HPACK in sync", async () => {
  const seen: H2Stream[] = [];
  await using pair = await rawClientPair({ onStream: (s) => (seen.push(s), echo(s)) });
  pair.peer.settings();
  // Many small fields: the encoded block stays small (indexed repeats), the decoded list is huge.
  const fields: HeaderField[] = [...CONNECT];
  for (let i = 0; i < 3000; i++) fields.push(["x-padding", "y".repeat(20)]);
  pair.peer.headers(1, fields, true);
  const response = await pair.peer.waitFor((f) => f.type === FrameType.HEADERS && f.streamId === 1);
  assert.ok(response?.type === FrameType.HEADERS);
  assert.deepEqual(pair.peer.decoder.decode(response.block), [[":status", "431"]]);
  pair.peer.headers(3, CONNECT);
  const next = await pair.peer.waitFor((f) => f.type === FrameType.HEADERS && f.streamId === 3);
  assert.ok(next?.type === FrameType.HEADERS);
  assert.deepEqual(pair.peer.decoder.decode(next.block), [[":status", "200"]]);
  assert.equal(seen.length, 1);
});

Deno.test("H2Connection answers floods with GOAWAY ENHANCE_YOUR_CALM", async (t) => {
  const u32 = (n: number) => new Uint8Array([n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255]);
  const floods: [string, (peer: Awaited<ReturnType<typeof rawClientPair>>["peer"]) => void][] = [
    ["rapid reset (CVE-2023-44487)", (peer) => {
      for (let id = 1; id < 20_000; id += 2) {
        peer.headers(id, CONNECT);
        peer.frame(FrameType.RST_STREAM, 0, id, u32(ErrorCode.CANCEL));
      }
    }],
    ["PING", (peer) => {
      for (let i = 0; i < 2000; i++) peer.frame(FrameType.PING, 0, 0, new Uint8Array(8));
    }],
    ["SETTINGS", (peer) => {
      for (let i = 0; i < 2000; i++) peer.settings([[4, 65535]]);
    }],
    ["empty DATA", (peer) => {
      peer.headers(1, CONNECT);
      for (let i = 0; i < 10; i++) peer.frame(FrameType.DATA, 0, 1);
    }],
    ["padding-only DATA", (peer) => {
      peer.headers(1, CONNECT);
      for (let i = 0; i < 10; i++) peer.frame(FrameType.DATA, Flag.PADDED, 1, new Uint8Array([3, 0, 0, 0]));
    }],
    ["WINDOW_UPDATE", (peer) => {
      for (let i = 0; i < 100; i++) peer.frame(FrameType.WINDOW_UPDATE, 0, 0, u32(1));
    }],
    ["PRIORITY", (peer) => {
      for (let i = 0; i < 200; i++) peer.frame(FrameType.PRIORITY, 0, 1, new Uint8Array([0, 0, 0, 0, 16]));
    }],
    ["CONTINUATION without END_HEADERS (CVE-2024-27919)", (peer) => {
      peer.frame(FrameType.HEADERS, 0, 1, peer.encoder.encode(CONNECT));
      // Fragments large enough that the block's byte limit, not the CONTINUATION count, is what stops it.
      const junk = peer.encoder.encode([["x-junk", "~".repeat(16_000)]]);
      for (let i = 0; i < 200; i++) peer.frame(FrameType.CONTINUATION, 0, 1, junk);
    }],
    ["one-byte CONTINUATIONs, each under every byte limit (CVE-2024-28182)", (peer) => {
      const block = peer.encoder.encode(CONNECT);
      peer.frame(FrameType.HEADERS, 0, 1, block.subarray(0, 1));
      for (let i = 0; i < 100; i++) peer.frame(FrameType.CONTINUATION, 0, 1, new Uint8Array([0x40]));
    }],
    ["empty CONTINUATION", (peer) => {
      peer.frame(FrameType.HEADERS, 0, 1, peer.encoder.encode(CONNECT));
      for (let i = 0; i < 10; i++) peer.frame(FrameType.CONTINUATION, 0, 1);
    }],
  ];
  for (const [name, attack] of floods) {
    await t.step(name, async () => {
      const opened: H2Stream[] = [];
      await using pair = await rawClientPair({ onStream: (s) => (opened.push(s), echo(s)) });
      pair.peer.settings();
      attack(pair.peer);
      assert.equal(goawayCode(await pair.peer.goaway()), ErrorCode.ENHANCE_YOUR_CALM);
      await pair.server.closed;
      assert.ok(opened.length <= 500, `${opened.length} streams reached the handler`);
    });
  }
});

Deno.test("H2Connection tolerates what legitimate peers do: a few empty frames, regular PINGs, resets", async () => {
  await using pair = await rawClientPair({ onStream: echo });
  pair.peer.settings();
  for (let id = 1; id < 400; id += 2) {
    pair.peer.headers(id, CONNECT);
    pair.peer.frame(FrameType.DATA, 0, id, new Uint8Array(10));
    pair.peer.frame(FrameType.DATA, Flag.END_STREAM, id);
  }
  for (let i = 0; i < 100; i++) pair.peer.frame(FrameType.PING, 0, 0, new Uint8Array(8));
  const last = await pair.peer.waitFor((f) => f.type === FrameType.DATA && f.streamId === 399 && f.endStream);
  assert.ok(last, "the last stream completed");
  assert.equal(pair.peer.frames.find((f) => f.type === FrameType.GOAWAY), undefined);
});

Deno.test("H2Connection serves a large header block split over CONTINUATION frames, as peers split it", async () => {
  await using pair = await rawClientPair({ onStream: echo });
  pair.peer.settings();
  // '~' has a 13-bit Huffman code, so the value goes as a 60,000-byte literal: HEADERS and 3 CONTINUATION frames.
  pair.peer.headers(1, [...CONNECT, ["x-big", "~".repeat(60_000)]]);
  const continuations = Math.ceil(60_000 / 16_384) - 1;
  assert.equal(continuations, 3);
  const answer = await pair.peer.waitFor((f) => f.type === FrameType.HEADERS && f.streamId === 1);
  assert.ok(answer, "the stream was answered");
  assert.equal(pair.peer.frames.find((f) => f.type === FrameType.GOAWAY), undefined);
});

Deno.test("H2Connection refuses a peer that does not start with SETTINGS, and a bad preface", async () => {
  {
    await using pair = await rawClientPair({ onStream: echo });
    pair.peer.headers(1, CONNECT);
    assert.equal(goawayCode(await pair.peer.goaway()), ErrorCode.PROTOCOL_ERROR);
  }
  {
    await using pair = await rawClientPair({ onStream: echo });
    pair.peer.settings();
    pair.peer.frame(FrameType.WINDOW_UPDATE, 0, 9, new Uint8Array([0, 0, 0, 1]));
    assert.equal(goawayCode(await pair.peer.goaway()), ErrorCode.PROTOCOL_ERROR, "frame on an idle stream");
  }
  {
    await using pair = await rawClientPair({ onStream: echo });
    pair.peer.settings();
    pair.peer.frame(FrameType.DATA, 0, 1, new Uint8Array(1));
    assert.equal(goawayCode(await pair.peer.goaway()), ErrorCode.PROTOCOL_ERROR, "DATA on an idle stream");
  }
});

Deno.test("H2Connection enforces the receive windows it advertised", async () => {
  await using pair = await rawClientPair({ onStream: (s) => (s.respond([[":status", "200"]]), s.pause()) });
  pair.peer.settings();
  pair.peer.headers(1, CONNECT);
  const frame = new Uint8Array(1024 * 1024);
  for (let i = 0; i < 4; i++) pair.peer.frame(FrameType.DATA, 0, 1, frame); // exactly the 4 MiB window
  pair.peer.frame(FrameType.DATA, 0, 1, new Uint8Array(1));
  const reset = await pair.peer.waitFor(isReset(1));
  assert.equal(reset?.type === FrameType.RST_STREAM && reset.code, ErrorCode.FLOW_CONTROL_ERROR);
});

Deno.test("H2Connection closes gracefully: open streams finish, new ones are refused", async () => {
  let serverSide: H2Stream | undefined;
  await using pair = await connectionPair({ onStream: (s) => (serverSide = s, s.respond([[":status", "200"]])) });
  const stream = pair.client.request(CONNECT);
  await stream.response;
  const closing = pair.server.close();
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(pair.client.usable, false, "the client saw GOAWAY");
  assert.throws(() => pair.client.request(CONNECT), /closing/);
  serverSide!.end(new TextEncoder().encode("bye"));
  stream.end();
  assert.equal(new TextDecoder().decode(await readAll(stream)), "bye");
  await closing;
  await pair.client.closed;
});

Deno.test("H2Connection fails open streams when the socket dies", async () => {
  await using pair = await connectionPair({ onStream: (s) => s.respond([[":status", "200"]]) });
  const stream = pair.client.request(CONNECT);
  await stream.response;
  const closed = new Promise((resolve) => stream.once("close", resolve));
  pair.server.destroy(new Error("test"));
  await closed;
  assert.ok(stream.destroyed);
  await pair.client.closed;
});

Deno.test("H2Connection closes a connection whose peer stops answering PINGs", async () => {
  await using pair = await rawClientPair({ onStream: echo, pingIntervalMs: 20, pingTimeoutMs: 60 });
  pair.peer.settings();
  const ping = await pair.peer.waitFor((f) => f.type === FrameType.PING && !f.ack);
  assert.ok(ping, "the server sends keepalive PINGs");
  assert.equal(goawayCode(await pair.peer.goaway()), ErrorCode.NO_ERROR);
  await pair.server.closed;
  assert.match(String(pair.server.closeError), /PING/);
});
