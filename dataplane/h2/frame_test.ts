import assert from "node:assert/strict";
import {
  CONNECTION_PREFACE,
  encodeFrame,
  encodeGoaway,
  encodeHeaders,
  encodePing,
  encodeSettings,
  encodeWindowUpdate,
  ErrorCode,
  Flag,
  type Frame,
  FrameReader,
  FrameType,
  H2Error,
  parseFrame,
  Setting,
} from "./frame.ts";

function readAll(reader: FrameReader): Frame[] {
  const out: Frame[] = [];
  for (let f = reader.next(); f; f = reader.next()) out.push(f);
  return out;
}

function rejects(fn: () => unknown, code: number, streamId = 0, pattern?: RegExp) {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof H2Error, `expected H2Error, got ${e}`);
    assert.equal(e.code, code, e.message);
    assert.equal(e.streamId, streamId, e.message);
    if (pattern) assert.match(e.message, pattern);
    return true;
  });
}

Deno.test("FrameReader joins frames split at every byte and frames packed together", () => {
  const frames = [
    encodeSettings([[Setting.INITIAL_WINDOW_SIZE, 4 << 20], [Setting.MAX_FRAME_SIZE, 1 << 20]]),
    encodeFrame(FrameType.DATA, Flag.END_STREAM, 1, new Uint8Array(300).fill(7)),
    encodePing(new Uint8Array(8).fill(1), true),
    encodeWindowUpdate(3, 1000),
  ];
  const wire = new Uint8Array(frames.reduce((n, f) => n + f.byteLength, 0));
  let at = 0;
  for (const f of frames) wire.set(f, (at += f.byteLength) - f.byteLength);

  for (const split of [1, 2, 5, 9, 10, 64, wire.byteLength]) {
    const reader = new FrameReader(16_384, false);
    const got: Frame[] = [];
    for (let i = 0; i < wire.byteLength; i += split) {
      reader.push(wire.subarray(i, i + split));
      got.push(...readAll(reader));
    }
    assert.equal(got.length, 4, `split ${split}`);
    assert.deepEqual(got[0], {
      type: FrameType.SETTINGS,
      streamId: 0,
      ack: false,
      settings: [[4, 4 << 20], [5, 1 << 20]],
    });
    const data = got[1] as Extract<Frame, { type: 0 }>;
    assert.equal(data.endStream, true);
    assert.equal(data.data.byteLength, 300);
    assert.ok(data.data.every((b) => b === 7));
    assert.deepEqual(got[3], { type: FrameType.WINDOW_UPDATE, streamId: 3, increment: 1000 });
    assert.equal(reader.buffered, 0);
  }
});

Deno.test("FrameReader checks the client preface, even when it arrives byte by byte", () => {
  const reader = new FrameReader(16_384, true);
  for (const b of CONNECTION_PREFACE) {
    reader.push(new Uint8Array([b]));
    assert.equal(reader.next(), null);
  }
  reader.push(encodeSettings([]));
  assert.equal(reader.next()?.type, FrameType.SETTINGS);

  const http1 = new FrameReader(16_384, true);
  http1.push(new TextEncoder().encode("GET / HTTP/1.1\r\n"));
  rejects(() => http1.next(), ErrorCode.PROTOCOL_ERROR, 0, /preface/);
  const early = new FrameReader(16_384, true);
  early.push(new TextEncoder().encode("PRI * HTTP/1.1"));
  rejects(() => early.next(), ErrorCode.PROTOCOL_ERROR, 0, /preface/);
});

Deno.test("FrameReader refuses a frame over our limit from its header, before buffering the payload", () => {
  const reader = new FrameReader(16_384, false);
  const header = encodeFrame(FrameType.DATA, 0, 1, new Uint8Array(16_385)).subarray(0, 9);
  reader.push(header);
  rejects(() => reader.next(), ErrorCode.FRAME_SIZE_ERROR, 0, /16385/);
  const ok = new FrameReader(16_384, false);
  ok.push(encodeFrame(FrameType.DATA, 0, 1, new Uint8Array(16_384)));
  assert.equal(ok.next()?.type, FrameType.DATA);
});

Deno.test("parseFrame() applies the per-type rules of RFC 9113 §6", async (t) => {
  const u32 = (n: number) => new Uint8Array([n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255]);
  const cases: [string, number, number, number, Uint8Array, number, number][] = [
    // name, type, flags, stream, payload, expected code, expected stream (0 = connection error)
    ["DATA on stream 0", FrameType.DATA, 0, 0, new Uint8Array(1), ErrorCode.PROTOCOL_ERROR, 0],
    ["DATA padding beyond payload", FrameType.DATA, Flag.PADDED, 1, new Uint8Array([5, 1, 2]), 1, 0],
    ["DATA padded but empty", FrameType.DATA, Flag.PADDED, 1, new Uint8Array(0), ErrorCode.FRAME_SIZE_ERROR, 0],
    ["HEADERS on stream 0", FrameType.HEADERS, Flag.END_HEADERS, 0, new Uint8Array(1), 1, 0],
    ["HEADERS priority too short", FrameType.HEADERS, Flag.PRIORITY, 1, new Uint8Array(3), 6, 0],
    ["HEADERS depending on itself", FrameType.HEADERS, Flag.PRIORITY, 3, new Uint8Array([0, 0, 0, 3, 16]), 1, 3],
    ["PRIORITY on stream 0", FrameType.PRIORITY, 0, 0, new Uint8Array(5), ErrorCode.PROTOCOL_ERROR, 0],
    ["PRIORITY wrong length", FrameType.PRIORITY, 0, 5, new Uint8Array(4), ErrorCode.FRAME_SIZE_ERROR, 5],
    ["RST_STREAM on stream 0", FrameType.RST_STREAM, 0, 0, u32(8), ErrorCode.PROTOCOL_ERROR, 0],
    ["RST_STREAM wrong length", FrameType.RST_STREAM, 0, 1, new Uint8Array(3), ErrorCode.FRAME_SIZE_ERROR, 0],
    ["SETTINGS on a stream", FrameType.SETTINGS, 0, 1, new Uint8Array(0), ErrorCode.PROTOCOL_ERROR, 0],
    ["SETTINGS length 7", FrameType.SETTINGS, 0, 0, new Uint8Array(7), ErrorCode.FRAME_SIZE_ERROR, 0],
    ["SETTINGS ack with payload", FrameType.SETTINGS, Flag.ACK, 0, new Uint8Array(6), ErrorCode.FRAME_SIZE_ERROR, 0],
    ["ENABLE_PUSH=2", FrameType.SETTINGS, 0, 0, new Uint8Array([0, 2, ...u32(2)]), ErrorCode.PROTOCOL_ERROR, 0],
    ["window 2^31", FrameType.SETTINGS, 0, 0, new Uint8Array([0, 4, ...u32(2 ** 31)]), 3, 0],
    ["frame size 16383", FrameType.SETTINGS, 0, 0, new Uint8Array([0, 5, ...u32(16383)]), 1, 0],
    ["frame size 2^24", FrameType.SETTINGS, 0, 0, new Uint8Array([0, 5, ...u32(2 ** 24)]), 1, 0],
    ["SETTINGS of 33 entries (flood)", FrameType.SETTINGS, 0, 0, new Uint8Array(33 * 6), 0xb, 0],
    ["SETTINGS of 174,762 entries", FrameType.SETTINGS, 0, 0, new Uint8Array(174_762 * 6), 0xb, 0],
    ["PUSH_PROMISE", FrameType.PUSH_PROMISE, Flag.END_HEADERS, 1, u32(2), ErrorCode.PROTOCOL_ERROR, 0],
    ["PING on a stream", FrameType.PING, 0, 1, new Uint8Array(8), ErrorCode.PROTOCOL_ERROR, 0],
    ["PING length 7", FrameType.PING, 0, 0, new Uint8Array(7), ErrorCode.FRAME_SIZE_ERROR, 0],
    ["GOAWAY on a stream", FrameType.GOAWAY, 0, 1, new Uint8Array(8), ErrorCode.PROTOCOL_ERROR, 0],
    ["GOAWAY too short", FrameType.GOAWAY, 0, 0, new Uint8Array(7), ErrorCode.FRAME_SIZE_ERROR, 0],
    ["WINDOW_UPDATE wrong length", FrameType.WINDOW_UPDATE, 0, 0, new Uint8Array(5), 6, 0],
    ["WINDOW_UPDATE 0 on connection", FrameType.WINDOW_UPDATE, 0, 0, u32(0), ErrorCode.PROTOCOL_ERROR, 0],
    ["WINDOW_UPDATE 0 on a stream", FrameType.WINDOW_UPDATE, 0, 7, u32(0), ErrorCode.PROTOCOL_ERROR, 7],
    ["CONTINUATION on stream 0", FrameType.CONTINUATION, 0, 0, new Uint8Array(1), ErrorCode.PROTOCOL_ERROR, 0],
  ];
  for (const [name, type, flags, stream, payload, code, errorStream] of cases) {
    await t.step(name, () => rejects(() => parseFrame(type, flags, stream, payload), code, errorStream));
  }
});

Deno.test("parseFrame() strips padding and priority, keeps the flow-control length, skips unknown types", () => {
  const padded = parseFrame(FrameType.DATA, Flag.PADDED | Flag.END_STREAM, 1, new Uint8Array([2, 9, 9, 0, 0]));
  assert.deepEqual(padded, {
    type: FrameType.DATA,
    streamId: 1,
    endStream: true,
    data: new Uint8Array([9, 9]),
    flowLength: 5,
  });
  const headers = parseFrame(
    FrameType.HEADERS,
    Flag.PADDED | Flag.PRIORITY | Flag.END_HEADERS,
    3,
    new Uint8Array([1, 0, 0, 0, 1, 16, 0x82, 0]),
  );
  assert.deepEqual(headers, {
    type: FrameType.HEADERS,
    streamId: 3,
    endStream: false,
    endHeaders: true,
    block: new Uint8Array([0x82]),
  });
  assert.deepEqual(parseFrame(0xfa, 0, 5, new Uint8Array(10)), {
    type: "unknown",
    streamId: 5,
    frameType: 0xfa,
    length: 10,
  });
  // Unknown SETTINGS identifiers are ignored, not refused (RFC 9113 §6.5.2).
  const settings = parseFrame(FrameType.SETTINGS, 0, 0, new Uint8Array([0x12, 0x34, 0, 0, 0, 1]));
  assert.equal(settings.type, FrameType.SETTINGS);
  // 32 entries are allowed (nghttp2's limit too): the six settings, extensions and GREASE fit many times over.
  const many = parseFrame(FrameType.SETTINGS, 0, 0, new Uint8Array(32 * 6).map((_, i) => i % 6 === 1 ? 0x4a : 0));
  assert.equal(many.type === FrameType.SETTINGS && many.settings.length, 32);
});

Deno.test("encodeHeaders() splits a block into HEADERS and CONTINUATION frames that read back whole", () => {
  const block = new Uint8Array(40_000).map((_, i) => i & 255);
  const wire = encodeHeaders(9, block, true, 16_384);
  const reader = new FrameReader(16_384, false);
  reader.push(wire);
  const frames = readAll(reader);
  assert.deepEqual(frames.map((f) => f.type), [FrameType.HEADERS, FrameType.CONTINUATION, FrameType.CONTINUATION]);
  const first = frames[0] as Extract<Frame, { type: 1 }>;
  const last = frames[2] as Extract<Frame, { type: 9 }>;
  assert.equal(first.endStream, true);
  assert.equal(first.endHeaders, false);
  assert.equal(last.endHeaders, true);
  const joined = frames.flatMap((f) => [...(f as { block: Uint8Array }).block]);
  assert.deepEqual(new Uint8Array(joined), block);
});

Deno.test("encodeGoaway() carries the last stream, the code and a bounded reason", () => {
  const reader = new FrameReader(16_384, false);
  reader.push(encodeGoaway(41, ErrorCode.ENHANCE_YOUR_CALM, "x".repeat(1000)));
  const f = reader.next() as Extract<Frame, { type: 7 }>;
  assert.equal(f.lastStreamId, 41);
  assert.equal(f.code, ErrorCode.ENHANCE_YOUR_CALM);
  assert.equal(f.debug.byteLength, 256);
});
