/**
 * ztunnel's side of the handoff protocol (mesh/protocol/handoff.ts): connect to the node agent's unix socket,
 * say hello, take the snapshot of pods (add or keep, then snapshot-sent, after which every pod not named is
 * dropped), then follow adds, dels and releases (a newer ztunnel took the pod), answering each with ack or nack. Reconnects with upstream's
 * backoff (10 ms doubling to 15 s) whenever the agent goes away; ready once the first snapshot is processed.
 *
 * What serving a pod means (listeners in its namespace, its certificate) is the {@link PodHandler}'s job; a
 * handler that throws turns into a nack with its message, and the connection carries on.
 *
 * @module
 */

import { sleep } from "../../mesh/abort.ts";
import type { Logger } from "../../mesh/log.ts";
import {
  type AgentMessage,
  encodeHandoffMessage,
  HANDOFF_VERSION,
  LineSplitter,
  parseHandoffLine,
  type PodInfo,
} from "../../mesh/protocol/handoff.ts";

/** What ztunnel does for the pods the agent hands it. */
export interface PodHandler {
  /** Start serving a pod (or keep serving it when already served from the same namespace). */
  add(uid: string, workload: PodInfo, netns: string): Promise<void>;
  /** Stop serving a pod: listeners closed, certificate forgotten, connections ended. */
  del(uid: string): Promise<void>;
  /** A newer ztunnel serves the pod: stop accepting for it, let its open connections drain. */
  release(uid: string): Promise<void>;
  /** After a snapshot: stop serving every pod whose uid is not in `keep`. */
  reconcile(keep: ReadonlySet<string>): Promise<void>;
}

/** Backoff between reconnects: upstream's 10 ms doubling to 15 s. */
export const RECONNECT_MIN_MS = 10;
export const RECONNECT_MAX_MS = 15_000;

/** Options of {@link runHandoffClient}. */
export interface HandoffClientOptions {
  socketPath: string;
  handler: PodHandler;
  signal: AbortSignal;
  log?: Logger;
  /** Called once, when the first snapshot has been processed. */
  onReady?: () => void;
}

/** One connection's session: processes messages in order. */
class Session {
  readonly #handler: PodHandler;
  readonly #snapshot = new Set<string>();
  #inSnapshot = true;

  constructor(handler: PodHandler) {
    this.#handler = handler;
  }

  get snapshotDone(): boolean {
    return !this.#inSnapshot;
  }

  /** Handles one message; returns the reason to nack with, or undefined to ack. */
  async handle(msg: AgentMessage): Promise<string | undefined> {
    switch (msg.type) {
      case "add":
        await this.#handler.add(msg.uid, msg.workload, msg.netns);
        if (this.#inSnapshot) this.#snapshot.add(msg.uid);
        return undefined;
      case "keep":
        if (!this.#inSnapshot) return "keep is only valid in a snapshot";
        this.#snapshot.add(msg.uid);
        return undefined;
      case "del":
        this.#snapshot.delete(msg.uid);
        await this.#handler.del(msg.uid);
        return undefined;
      case "release":
        this.#snapshot.delete(msg.uid);
        await this.#handler.release(msg.uid);
        return undefined;
      case "snapshot-sent":
        if (!this.#inSnapshot) return "snapshot-sent was already received";
        await this.#handler.reconcile(this.#snapshot);
        this.#inSnapshot = false;
        return undefined;
    }
  }
}

/** Connects to the agent and serves handoffs until `signal` aborts. */
export async function runHandoffClient(opts: HandoffClientOptions): Promise<void> {
  let delay = RECONNECT_MIN_MS;
  let ready = false;
  while (!opts.signal.aborted) {
    let conn: Deno.UnixConn | undefined;
    try {
      conn = await Deno.connect({ transport: "unix", path: opts.socketPath });
      opts.log?.info({ socket: opts.socketPath }, "connected to the node agent");
      delay = RECONNECT_MIN_MS;
      await serve(conn, opts, () => {
        if (!ready) {
          ready = true;
          opts.onReady?.();
        }
      });
    } catch (err) {
      if (opts.signal.aborted) break;
      opts.log?.warn({ socket: opts.socketPath, err, retryInMs: delay }, "node agent connection failed");
    } finally {
      try {
        conn?.close();
      } catch {
        // already closed
      }
    }
    if (opts.signal.aborted) break;
    await sleep(delay, opts.signal);
    delay = Math.min(delay * 2, RECONNECT_MAX_MS);
  }
}

async function serve(conn: Deno.UnixConn, opts: HandoffClientOptions, snapshotDone: () => void): Promise<void> {
  const onAbort = () => conn.close();
  opts.signal.addEventListener("abort", onAbort, { once: true });
  try {
    const write = (text: string) => conn.write(new TextEncoder().encode(text));
    await write(encodeHandoffMessage({ type: "hello", version: HANDOFF_VERSION }));
    const session = new Session(opts.handler);
    const splitter = new LineSplitter();
    const buf = new Uint8Array(4096);
    for (;;) {
      const n = await conn.read(buf);
      if (n === null) throw new Error("the node agent closed the connection");
      // An over-long line or invalid UTF-8 leaves no safe place to resume: the connection ends.
      for (const line of splitter.push(buf.subarray(0, n))) {
        let reason: string | undefined;
        try {
          const msg = parseHandoffLine(line);
          if (msg.type === "hello" || msg.type === "ack" || msg.type === "nack") {
            reason = `unexpected ${msg.type} from the node agent`;
          } else {
            reason = await session.handle(msg);
            opts.log?.debug({ message: msg, reason }, "handoff message");
          }
        } catch (err) {
          reason = (err as Error).message;
        }
        if (reason !== undefined) opts.log?.warn({ reason }, "handoff message refused");
        await write(encodeHandoffMessage(reason === undefined ? { type: "ack" } : { type: "nack", reason }));
        if (session.snapshotDone) snapshotDone();
      }
    }
  } finally {
    opts.signal.removeEventListener("abort", onAbort);
  }
}
