/**
 * DNS over TCP's framing (RFC 1035 §4.2.2: each message after a 2-octet length), read from a byte stream that a
 * client controls. Each octet is copied once, however it arrives: a client that sends a 65,535-octet message one
 * octet per segment, or thousands of messages in one write, costs linear work, not the quadratic work of joining
 * every chunk onto what was buffered and re-slicing the rest after each message.
 *
 * @module
 */

/** Splits a byte stream into DNS messages. */
export class TcpFrames {
  #chunks: Uint8Array[] = [];
  /** Index of the first chunk not yet consumed (a queue without `shift()`, which may copy the array). */
  #head = 0;
  #size = 0;

  /** Octets received and not yet returned as a message. */
  get buffered(): number {
    return this.#size;
  }

  /** Adds received octets. */
  push(chunk: Uint8Array): void {
    if (chunk.length === 0) return;
    this.#chunks.push(chunk);
    this.#size += chunk.length;
  }

  /** The next whole message (without its length), or undefined until one has arrived. */
  next(): Uint8Array | undefined {
    if (this.#size < 2) return undefined;
    const length = (this.#peek(0) << 8) | this.#peek(1);
    if (this.#size < 2 + length) return undefined;
    this.#take(2);
    return this.#take(length);
  }

  #peek(at: number): number {
    for (let i = this.#head; i < this.#chunks.length; i++) {
      const c = this.#chunks[i];
      if (at < c.length) return c[at];
      at -= c.length;
    }
    throw new Error("BUG: TcpFrames peeked past what it holds");
  }

  #take(n: number): Uint8Array {
    const out = new Uint8Array(n);
    let off = 0;
    while (off < n) {
      const c = this.#chunks[this.#head];
      const k = Math.min(c.length, n - off);
      out.set(c.subarray(0, k), off);
      off += k;
      if (k === c.length) this.#head++;
      else this.#chunks[this.#head] = c.subarray(k);
    }
    this.#size -= n;
    if (this.#head === this.#chunks.length) {
      this.#chunks = [];
      this.#head = 0;
    } else if (this.#head > 1024) {
      this.#chunks = this.#chunks.slice(this.#head);
      this.#head = 0;
    }
    return out;
  }
}
