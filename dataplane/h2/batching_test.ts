/**
 * How much a connection hands its socket before streams wait for `drain` (connection.ts, SOCKET_QUEUE_BYTES): a
 * socket's `write()` says false past its 64 KiB high-water mark, and waiting for `drain` there sent each 64 KiB
 * DATA frame alone, one write and one wait per frame (docs/performance.md, "Where the CPU goes"). The connection
 * now batches up to 256 KiB and stops there, so what it buffers for a peer that does not read stays bounded.
 */

import assert from "node:assert/strict";
import { Duplex } from "node:stream";
import { H2Connection } from "./connection.ts";
import {
  CONNECTION_PREFACE,
  encodeSettings,
  encodeWindowUpdate,
  type Frame,
  FrameReader,
  FrameType,
  Setting,
} from "./frame.ts";

const KIB = 1024;

/**
 * A socket that takes writes and completes none until `release()`; its high-water mark is the default 64 KiB. `written`
 * is what was handed to `write()`, held or not.
 */
class HeldSocket extends Duplex {
  written: Uint8Array[] = [];
  #held: (() => void)[] = [];
  #released = false;

  override _read() {}

  // deno-lint-ignore no-explicit-any
  override write(chunk: any, ...rest: any[]): boolean {
    this.written.push(chunk);
    return super.write(chunk, ...rest);
  }

  override _write(_chunk: Uint8Array, _encoding: string, callback: () => void) {
    if (this.#released) callback();
    else this.#held.push(callback);
  }

  /** Completes every held write, and every later one at once: the peer reads again. */
  release() {
    this.#released = true;
    for (const callback of this.#held.splice(0)) callback();
  }
}

/** The DATA frames in what the client wrote (after its preface). */
function dataFrames(written: Uint8Array[]): Extract<Frame, { type: 0 }>[] {
  const reader = new FrameReader(16 * KIB, false);
  const all = new Uint8Array(written.reduce((n, c) => n + c.byteLength, 0));
  written.reduce((at, c) => (all.set(c, at), at + c.byteLength), 0);
  reader.push(all.subarray(CONNECTION_PREFACE.byteLength));
  const out: Extract<Frame, { type: 0 }>[] = [];
  for (let f = reader.next(); f; f = reader.next()) if (f.type === FrameType.DATA) out.push(f);
  return out;
}

Deno.test("H2Connection batches DATA up to 256 KiB in its socket, then waits for drain, and sends the rest after", async () => {
  const socket = new HeldSocket();
  const client = new H2Connection(socket, { role: "client", pingIntervalMs: 0 });
  // The peer's SETTINGS (windows large enough that only the socket holds DATA back; frames of the default 16 KiB)
  // and its connection window.
  socket.push(encodeSettings([[Setting.INITIAL_WINDOW_SIZE, 4 * KIB * KIB]]));
  socket.push(encodeWindowUpdate(0, 16 * KIB * KIB));
  await new Promise((r) => setTimeout(r, 0));

  const body = new Uint8Array(1024 * KIB).fill(7);
  const stream = client.request([[":method", "CONNECT"], [":authority", "10.0.1.2:8080"]]);
  stream.write(body);
  await new Promise((r) => setTimeout(r, 0));

  const held = dataFrames(socket.written);
  const heldBytes = held.reduce((n, f) => n + f.data.byteLength, 0);
  assert.equal(held.length, 16, "frames taken before drain: 16 of 16 KiB, up to 256 KiB (was 4: it stopped at 64 KiB)");
  assert.ok(socket.writableLength < 256 * KIB + 16 * KIB + 1024, `bounded: ${socket.writableLength} bytes held`);

  socket.release();
  await new Promise((r) => setTimeout(r, 10));
  const sent = dataFrames(socket.written).reduce((n, f) => n + f.data.byteLength, 0);
  assert.equal(heldBytes, 16 * 16 * KIB);
  assert.equal(sent, body.byteLength, "after drain, the rest of the body went out");

  client.destroy();
  socket.destroy();
  await client.closed;
});
