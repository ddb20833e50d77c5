/**
 * A scripted node agent for ztunnel's tests: it listens on the handoff socket and sends ztunnel the messages a
 * test scripts (malformed ones included), one line at a time, returning each answer. The real agent is
 * cni/handoff_server.ts.
 */

import {
  encodeHandoffMessage,
  type HandoffMessage,
  LineSplitter,
  parseHandoffLine,
} from "../../mesh/protocol/handoff.ts";

/** One accepted connection of the fake agent, read line by line. */
export class AgentConn {
  readonly #conn: Deno.UnixConn;
  readonly #splitter = new LineSplitter();
  readonly #lines: string[] = [];
  constructor(conn: Deno.UnixConn) {
    this.#conn = conn;
  }
  async receive(): Promise<HandoffMessage> {
    const buf = new Uint8Array(4096);
    while (this.#lines.length === 0) {
      const n = await this.#conn.read(buf);
      if (n === null) throw new Error("ztunnel closed the connection");
      this.#lines.push(...this.#splitter.push(buf.subarray(0, n)));
    }
    return parseHandoffLine(this.#lines.shift()!);
  }
  async send(msg: HandoffMessage | string): Promise<HandoffMessage> {
    await this.#conn.write(new TextEncoder().encode(typeof msg === "string" ? msg : encodeHandoffMessage(msg)));
    return await this.receive();
  }
  close() {
    this.#conn.close();
  }
}
