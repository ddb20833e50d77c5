/**
 * The bytes a connection has received and not consumed yet. Appending costs linear time overall, however small the
 * pieces (a peer sending a head one byte at a time must not cost quadratic copying): `bytes` is the received chunk
 * itself when nothing was pending, else a view of storage that grows by doubling.
 *
 * Storage is only ever written past the end of `bytes`, never over bytes consumed before, so views handed out
 * earlier (body bytes given to a consumer without copying) stay intact.
 */

const EMPTY = new Uint8Array(0);

/** Received bytes not consumed yet (see the module comment). */
export class ReceiveBuffer {
  /** The pending bytes; a view, valid until the next `append()`. */
  bytes: Uint8Array = EMPTY;
  #store: Uint8Array | null = null;

  get length(): number {
    return this.bytes.length;
  }

  append(chunk: Uint8Array) {
    const bytes = this.bytes;
    if (bytes.length === 0) {
      this.bytes = chunk;
      this.#store = null;
      return;
    }
    const store = this.#store;
    if (store !== null && bytes.buffer === store.buffer) {
      const start = bytes.byteOffset - store.byteOffset;
      const end = start + bytes.length;
      if (end + chunk.length <= store.length) {
        store.set(chunk, end);
        this.bytes = store.subarray(start, end + chunk.length);
        return;
      }
    }
    const grown = new Uint8Array(Math.max(16 * 1024, 2 * (bytes.length + chunk.length)));
    grown.set(bytes, 0);
    grown.set(chunk, bytes.length);
    this.#store = grown;
    this.bytes = grown.subarray(0, bytes.length + chunk.length);
  }

  /** Drops the first `n` bytes. */
  consume(n: number) {
    if (n >= this.bytes.length) return this.clear();
    this.bytes = this.bytes.subarray(n);
  }

  /** Drops everything and returns what was pending. */
  clear(): Uint8Array {
    const bytes = this.bytes;
    this.bytes = EMPTY;
    this.#store = null;
    return bytes;
  }
}
