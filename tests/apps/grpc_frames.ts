/** gRPC's message framing (a flag byte, a 4-byte big-endian length, the message), for the test gRPC apps. */

/** One message, framed. */
export function grpcFrame(message: Uint8Array): Uint8Array {
  const out = new Uint8Array(5 + message.byteLength);
  new DataView(out.buffer).setUint32(1, message.byteLength);
  out.set(message, 5);
  return out;
}

/** Reassembles messages from DATA chunks. */
export class GrpcReader {
  #buf = new Uint8Array(0);

  push(chunk: Uint8Array): Uint8Array[] {
    const joined = new Uint8Array(this.#buf.byteLength + chunk.byteLength);
    joined.set(this.#buf);
    joined.set(chunk, this.#buf.byteLength);
    const out: Uint8Array[] = [];
    let at = 0;
    while (joined.byteLength - at >= 5) {
      const len = new DataView(joined.buffer, joined.byteOffset + at + 1, 4).getUint32(0);
      if (joined.byteLength - at - 5 < len) break;
      out.push(joined.slice(at + 5, at + 5 + len));
      at += 5 + len;
    }
    this.#buf = joined.slice(at);
    return out;
  }
}
