/** Helpers for the codec's tests: in-memory socket pairs, raw byte I/O. Not exported from mod.ts. */

import { type Duplex, duplexPair, type Readable } from "node:stream";

/**
 * Two connected in-memory duplexes with real backpressure (one chunk in flight per direction). Unlike a bare
 * `duplexPair()` in Deno 2.9, destroying one side destroys the other, as a TCP reset would.
 */
export function socketPair(): [Duplex, Duplex] & AsyncDisposable {
  const [a, b] = duplexPair();
  for (const [side, other] of [[a, b], [b, a]]) {
    side.on("error", () => {});
    side.on("close", () => {
      if (!other.destroyed) other.destroy();
    });
  }
  return Object.assign([a, b] as [Duplex, Duplex], {
    async [Symbol.asyncDispose]() {
      a.destroy();
      b.destroy();
      await new Promise((resolve) => setTimeout(resolve, 0));
    },
  });
}

export function bytes(text: string): Uint8Array {
  const out = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) out[i] = text.charCodeAt(i);
  return out;
}

export function text(data: Uint8Array): string {
  let s = "";
  for (let i = 0; i < data.length; i++) s += String.fromCharCode(data[i]);
  return s;
}

export async function readAll(stream: Readable): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  let size = 0;
  for await (const chunk of stream) {
    chunks.push(chunk);
    size += chunk.length;
  }
  const out = new Uint8Array(size);
  let at = 0;
  for (const chunk of chunks) {
    out.set(chunk, at);
    at += chunk.length;
  }
  return out;
}

/** Reads from a raw duplex until `predicate` holds for everything read so far, returns it as latin1 text. */
export function readUntil(stream: Duplex, predicate: (soFar: string) => boolean): Promise<string> {
  return new Promise((resolve, reject) => {
    let got = "";
    const onData = (chunk: Uint8Array) => {
      got += text(chunk);
      if (predicate(got)) finish(() => resolve(got));
    };
    const onEnd = () =>
      finish(() => predicate(got) ? resolve(got) : reject(new Error(`stream ended after ${JSON.stringify(got)}`)));
    const finish = (then: () => void) => {
      stream.off("data", onData);
      stream.off("end", onEnd);
      stream.pause();
      then();
    };
    stream.on("data", onData);
    stream.on("end", onEnd);
  });
}

/** Everything a raw duplex sends until it ends. */
export async function readToEnd(stream: Duplex): Promise<string> {
  return text(await readAll(stream));
}

export const delay = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
