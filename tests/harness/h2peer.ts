/**
 * A raw HTTP/2 peer for tests: it writes whatever frames a test crafts (floods, malformed blocks, resets) and
 * records every frame it receives, so tests can assert on RST_STREAM codes and GOAWAY reasons. It speaks only as
 * much of the protocol as an attacker would: preface, SETTINGS, and then anything.
 */

import net from "node:net";
import type { Duplex } from "node:stream";
import {
  CONNECTION_PREFACE,
  encodeFrame,
  encodeHeaders,
  encodeSettings,
  type Frame,
  FrameReader,
  FrameType,
} from "../../dataplane/h2/frame.ts";
import { H2Connection, type H2Options } from "../../dataplane/h2/connection.ts";
import type { HeaderField } from "../../dataplane/h2/fields.ts";
import { HpackDecoder, HpackEncoder } from "../../dataplane/h2/hpack.ts";

export class RawPeer {
  readonly frames: Frame[] = [];
  readonly encoder = new HpackEncoder();
  readonly decoder = new HpackDecoder();
  readonly closed: Promise<void>;
  #reader: FrameReader;
  #waiters: (() => void)[] = [];

  constructor(readonly socket: Duplex, role: "client" | "server") {
    this.#reader = new FrameReader(0xffffff, role === "server");
    socket.on("data", (chunk: Uint8Array) => {
      this.#reader.push(chunk);
      for (let f = this.#reader.next(); f; f = this.#reader.next()) this.frames.push(f);
      this.#wake();
    });
    this.closed = new Promise((resolve) => socket.on("close", () => resolve()));
    this.closed.then(() => this.#wake());
    socket.on("error", () => {});
    if (role === "client") socket.write(CONNECTION_PREFACE);
  }

  #wake() {
    for (const w of this.#waiters.splice(0)) w();
  }

  write(bytes: Uint8Array): boolean {
    return this.socket.write(bytes);
  }

  settings(settings: [number, number][] = []) {
    this.write(encodeSettings(settings));
  }

  headers(streamId: number, fields: HeaderField[], endStream = false) {
    this.write(encodeHeaders(streamId, this.encoder.encode(fields), endStream, 16_384));
  }

  frame(type: number, flags: number, streamId: number, payload?: Uint8Array) {
    this.write(encodeFrame(type, flags, streamId, payload));
  }

  /** Waits until a received frame satisfies `test` (or the socket closes); returns it or undefined. */
  async waitFor(test: (f: Frame) => boolean, timeoutMs = 5000): Promise<Frame | undefined> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.frames.find(test);
      if (found || this.socket.destroyed || Date.now() > deadline) return found;
      let timer: ReturnType<typeof setTimeout> | undefined;
      await new Promise<void>((resolve) => {
        this.#waiters.push(resolve);
        timer = setTimeout(resolve, Math.max(0, deadline - Date.now()));
      });
      clearTimeout(timer);
    }
  }

  goaway(): Promise<Frame | undefined> {
    return this.waitFor((f) => f.type === FrameType.GOAWAY);
  }

  close() {
    this.socket.destroy();
    return this.closed;
  }
}

/**
 * A header block of literal fields without indexing and without Huffman (RFC 7541 §6.2.2), for fields our
 * encoder refuses to produce (uppercase names). Lengths below 127 only.
 */
export function literalBlock(fields: HeaderField[]): Uint8Array {
  const bytes: number[] = [];
  for (const [name, value] of fields) {
    bytes.push(0x00, name.length, ...[...name].map((c) => c.charCodeAt(0)));
    bytes.push(value.length, ...[...value].map((c) => c.charCodeAt(0)));
  }
  return new Uint8Array(bytes);
}

/** A loopback TCP pair: `server` and `client` sockets, connected. */
export async function socketPair(): Promise<
  { client: net.Socket; server: net.Socket; [Symbol.asyncDispose](): Promise<void> }
> {
  const listener = net.createServer();
  await new Promise<void>((resolve) => listener.listen(0, "127.0.0.1", resolve));
  const port = (listener.address() as net.AddressInfo).port;
  const accepted = new Promise<net.Socket>((resolve) => listener.once("connection", resolve));
  const client = net.connect(port, "127.0.0.1");
  await new Promise<void>((resolve) => client.once("connect", resolve));
  const server = await accepted;
  listener.close(); // its callback would wait for the accepted socket to close
  const closed = (s: net.Socket) => s.destroyed ? Promise.resolve() : new Promise<void>((r) => s.once("close", r));
  return {
    client,
    server,
    async [Symbol.asyncDispose]() {
      client.destroy();
      server.destroy();
      await Promise.all([closed(client), closed(server)]);
    },
  };
}

/** An H2Connection pair over loopback TCP (h2c with prior knowledge). */
export async function connectionPair(serverOptions: Partial<H2Options> = {}, clientOptions: Partial<H2Options> = {}) {
  const pair = await socketPair();
  const server = new H2Connection(pair.server, { role: "server", ...serverOptions });
  const client = new H2Connection(pair.client, { role: "client", ...clientOptions });
  return {
    server,
    client,
    async [Symbol.asyncDispose]() {
      client.destroy();
      server.destroy();
      await pair[Symbol.asyncDispose]();
      await Promise.all([client.closed, server.closed]);
    },
  };
}

/** A server H2Connection facing a raw peer acting as the client. */
export async function rawClientPair(serverOptions: Partial<H2Options> = {}) {
  const pair = await socketPair();
  const server = new H2Connection(pair.server, { role: "server", ...serverOptions });
  const peer = new RawPeer(pair.client, "client");
  return {
    server,
    peer,
    async [Symbol.asyncDispose]() {
      server.destroy();
      await pair[Symbol.asyncDispose]();
      await server.closed;
    },
  };
}

/** Reads a stream to its end with 'data' events: `for await` would destroy it and reset the other half. */
export async function readAll(stream: import("../../dataplane/h2/stream.ts").H2Stream): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  stream.on("data", (chunk: Uint8Array) => chunks.push(chunk));
  stream.resume();
  await new Promise<void>((resolve, reject) => {
    stream.once("end", resolve);
    stream.once("close", () => stream.readableEnded ? resolve() : reject(stream.errored ?? new Error("closed")));
  });
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.byteLength, 0));
  let at = 0;
  for (const c of chunks) out.set(c, (at += c.byteLength) - c.byteLength);
  return out;
}
