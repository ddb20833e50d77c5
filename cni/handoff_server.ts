/**
 * The node agent's side of the handoff protocol (mesh/protocol/handoff.ts): it listens on the unix socket, and
 * each ztunnel that connects says hello, is sent the snapshot of every pod whose traffic is redirected (one `add`
 * at a time, each answered, then `snapshot-sent`), and from then on receives each `add` and `del` as it happens.
 * As upstream's `ztunnelserver`: an `add` goes to the ztunnel that connected last (the new one, during an
 * upgrade), a `del` to every ztunnel connected; each pod a new ztunnel acknowledges in its snapshot is released by
 * the older ones (`release`: they stop accepting for it only now that the new one's listeners are up, and drain
 * what they hold), so a restart or an upgrade loses no connection; every message waits for its answer, at most
 * {@link ANSWER_TIMEOUT_MS}; a ztunnel that does not answer in time is disconnected, since its answers could no
 * longer be matched to questions. A ztunnel that goes away holding pods it took from older ones (a successor that
 * crashed mid-handoff) has them handed back to the newest ztunnel still connected.
 *
 * @module
 */

import type { Logger } from "../mesh/log.ts";
import {
  type AgentMessage,
  encodeHandoffMessage,
  HANDOFF_VERSION,
  LineSplitter,
  parseHandoffLine,
  type PodInfo,
  type ZtunnelMessage,
} from "../mesh/protocol/handoff.ts";
import { ValidationError } from "../mesh/validate.ts";

/** How long a ztunnel has to answer a message (upstream's deadline). */
export const ANSWER_TIMEOUT_MS = 5_000;

/** A pod as ztunnel is told of it. */
export interface HandoffPod {
  uid: string;
  workload: PodInfo;
  netns: string;
}

/** Why ztunnel did not take a pod. */
export class HandoffError extends Error {
  readonly code = "HANDOFF";
  constructor(message: string) {
    super(message);
    this.name = "HandoffError";
  }
}

/** ztunnel's answer to a message. */
type Answer = Extract<ZtunnelMessage, { type: "ack" | "nack" }>;

/** One connected ztunnel. */
class ZtunnelConn {
  readonly id: number;
  readonly #conn: Deno.UnixConn;
  readonly #splitter = new LineSplitter();
  readonly #lines: string[] = [];
  #waiter?: (line: string | null) => void;
  #closed = false;
  #queue: Promise<unknown> = Promise.resolve();
  /** Whether the snapshot was sent and answered: only then does it take adds. */
  ready = false;
  /** Pods it acknowledged and was not told to release or delete since. */
  readonly held = new Set<string>();
  /** Settles when the connection ends. */
  readonly done: Promise<void>;
  #ended!: () => void;

  constructor(id: number, conn: Deno.UnixConn) {
    this.id = id;
    this.#conn = conn;
    this.done = new Promise((resolve) => (this.#ended = resolve));
    this.#read();
  }

  get closed(): boolean {
    return this.#closed;
  }

  async #read(): Promise<void> {
    const buf = new Uint8Array(4096);
    try {
      for (;;) {
        const n = await this.#conn.read(buf);
        if (n === null) break;
        this.#lines.push(...this.#splitter.push(buf.subarray(0, n)));
        while (this.#lines.length > 0 && this.#waiter) {
          const w = this.#waiter;
          this.#waiter = undefined;
          w(this.#lines.shift()!);
        }
      }
    } catch {
      // a reset, an over-long line: either way this connection is over
    }
    this.close();
  }

  /** The next line from ztunnel, or null when the connection ended or `timeoutMs` passed. */
  next(timeoutMs: number): Promise<string | null> {
    if (this.#lines.length > 0) return Promise.resolve(this.#lines.shift()!);
    if (this.#closed) return Promise.resolve(null);
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.#waiter = undefined;
        resolve(null);
        this.close(); // an answer that comes later would be taken for the next question's
      }, timeoutMs);
      this.#waiter = (line) => {
        clearTimeout(timer);
        resolve(line);
      };
    });
  }

  /** Sends one message and waits for its answer; messages are sent one at a time. */
  ask(msg: AgentMessage, timeoutMs = ANSWER_TIMEOUT_MS): Promise<Answer> {
    const run = async (): Promise<Answer> => {
      if (this.#closed) throw new HandoffError("ztunnel disconnected");
      try {
        await this.#conn.write(new TextEncoder().encode(encodeHandoffMessage(msg)));
      } catch (error) {
        this.close();
        throw new HandoffError(`ztunnel disconnected: ${(error as Error).message}`);
      }
      const line = await this.next(timeoutMs);
      if (line === null) throw new HandoffError(`ztunnel did not answer ${msg.type} within ${timeoutMs} ms`);
      let answer;
      try {
        answer = parseHandoffLine(line);
      } catch (error) {
        this.close(); // answers could no longer be matched to questions
        throw new HandoffError(`ztunnel answered ${msg.type} with a bad message: ${(error as Error).message}`);
      }
      if (answer.type !== "ack" && answer.type !== "nack") {
        this.close();
        throw new HandoffError(`ztunnel answered ${msg.type} with ${answer.type}`);
      }
      return answer;
    };
    const result = this.#queue.then(run, run);
    this.#queue = result.catch(() => {});
    return result;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.ready = false;
    try {
      this.#conn.close();
    } catch { /* already closed */ }
    const w = this.#waiter;
    this.#waiter = undefined;
    w?.(null);
    this.#ended();
  }
}

/** Options of {@link HandoffServer}. */
export interface HandoffServerOptions {
  socketPath: string;
  log: Logger;
  /**
   * Sends the snapshot to a new ztunnel through `send`, under the agent's lock so no pod changes meanwhile;
   * `send` returns the uids ztunnel acknowledged.
   */
  snapshot(send: (pods: HandoffPod[]) => Promise<Set<string>>): Promise<void>;
  /** Called when the set of ready ztunnels changes. */
  onChange?: (ready: number) => void;
}

/** The handoff listener and its connected ztunnels. */
export class HandoffServer {
  readonly #opts: HandoffServerOptions;
  readonly #listener: Deno.Listener<Deno.UnixConn, Deno.UnixAddr>;
  readonly #conns: ZtunnelConn[] = [];
  /** Every accepted connection, ready or not, so that close() ends them all. */
  readonly #accepted = new Set<ZtunnelConn>();
  /** Pods the agent wants served (each snapshot's, each add; less each del), for handing back after a crash. */
  readonly #pods = new Map<string, HandoffPod>();
  #closed = false;
  #nextId = 1;
  #accepting: Promise<void>;

  constructor(opts: HandoffServerOptions) {
    this.#opts = opts;
    try {
      Deno.removeSync(opts.socketPath); // a socket left by an earlier agent
    } catch { /* none */ }
    this.#listener = Deno.listen({ transport: "unix", path: opts.socketPath });
    Deno.chmodSync(opts.socketPath, 0o600);
    opts.log.info({ socket: opts.socketPath }, "listening for ztunnel (handoff)");
    this.#accepting = this.#accept();
  }

  /** Ztunnels that took their snapshot and take pods. */
  get ready(): number {
    return this.#conns.filter((c) => c.ready && !c.closed).length;
  }

  async #accept(): Promise<void> {
    while (!this.#closed) {
      let raw: Deno.UnixConn;
      try {
        raw = await this.#listener.accept();
      } catch (error) {
        if (this.#closed) return;
        // Out of file descriptors, say: ztunnel must still be able to connect once it passes.
        this.#opts.log.error({ error: (error as Error).message }, "accepting a ztunnel connection failed");
        await new Promise((r) => setTimeout(r, 100));
        continue;
      }
      const conn = new ZtunnelConn(this.#nextId++, raw);
      this.#accepted.add(conn);
      conn.done.then(() => this.#accepted.delete(conn));
      this.#serve(conn).catch((error) =>
        this.#opts.log.warn({ ztunnel: conn.id, error: (error as Error).message }, "ztunnel connection ended")
      );
    }
  }

  async #serve(conn: ZtunnelConn): Promise<void> {
    const log = this.#opts.log;
    const line = await conn.next(ANSWER_TIMEOUT_MS);
    if (line === null) throw new HandoffError("ztunnel connected but said no hello");
    let hello;
    try {
      hello = parseHandoffLine(line);
    } catch (error) {
      conn.close();
      throw error instanceof ValidationError ? new HandoffError(`bad hello from ztunnel: ${error.message}`) : error;
    }
    if (hello.type !== "hello" || hello.version !== HANDOFF_VERSION) {
      conn.close();
      throw new HandoffError(`expected hello version ${HANDOFF_VERSION}, got ${JSON.stringify(hello)}`);
    }
    this.#conns.push(conn);
    log.info({ ztunnel: conn.id }, "ztunnel connected; sending the snapshot");
    try {
      await this.#snapshot(conn);
      this.#opts.onChange?.(this.ready);
      await conn.done;
    } finally {
      // A failed snapshot ends the connection too: ztunnel reconnects and gets a new one.
      conn.close();
      this.#conns.splice(this.#conns.indexOf(conn), 1);
      log.warn({ ztunnel: conn.id }, "ztunnel disconnected");
      this.#opts.onChange?.(this.ready);
      await this.#handBack(conn);
    }
  }

  #snapshot(conn: ZtunnelConn): Promise<void> {
    const log = this.#opts.log;
    return this.#opts.snapshot(async (pods) => {
      const acked = new Set<string>();
      for (const p of pods) {
        this.#pods.set(p.uid, p);
        const answer = await conn.ask({ type: "add", uid: p.uid, workload: p.workload, netns: p.netns });
        if (answer.type === "ack") {
          acked.add(p.uid);
          conn.held.add(p.uid);
          await this.#release(p.uid, conn);
        } else {log.warn(
            { ztunnel: conn.id, uid: p.uid, reason: answer.reason },
            "ztunnel refused a pod of the snapshot",
          );}
      }
      const done = await conn.ask({ type: "snapshot-sent" });
      if (done.type === "nack") throw new HandoffError(`ztunnel refused the snapshot: ${done.reason}`);
      conn.ready = true;
      log.info({ ztunnel: conn.id, pods: pods.length, acked: acked.size }, "ztunnel took the snapshot");
      return acked;
    });
  }

  /**
   * Tells every ztunnel older than `newer` that `newer` serves the pod now. Awaited before the next pod, so the new
   * ztunnel is ready (snapshot answered) only once the old ones stopped accepting; a failure is logged: the old
   * ztunnel then serves beside the new one until it stops.
   */
  async #release(uid: string, newer: ZtunnelConn): Promise<void> {
    for (const old of this.#conns.filter((c) => c !== newer && c.ready && !c.closed)) {
      try {
        const answer = await old.ask({ type: "release", uid });
        if (answer.type === "nack") {
          this.#opts.log.warn({ ztunnel: old.id, uid, reason: answer.reason }, "release refused");
        } else old.held.delete(uid);
      } catch (error) {
        this.#opts.log.warn({ ztunnel: old.id, uid, error: (error as Error).message }, "release not delivered");
      }
    }
  }

  /** Hands a pod to the newest ready ztunnel; throws {@link HandoffError} when none takes it. */
  async add(pod: HandoffPod): Promise<void> {
    const conn = this.#conns.findLast((c) => c.ready && !c.closed);
    if (!conn) throw new HandoffError("no ztunnel is connected to the node agent");
    this.#pods.set(pod.uid, pod);
    const answer = await conn.ask({ type: "add", uid: pod.uid, workload: pod.workload, netns: pod.netns });
    if (answer.type === "nack") throw new HandoffError(`ztunnel refused the pod: ${answer.reason}`);
    conn.held.add(pod.uid);
  }

  /**
   * A ztunnel went away. Each pod it took from an older one, which released it then, would be served by no one
   * (its traffic refused, fail-closed, but for good): a successor that crashed mid-handoff, or after its snapshot
   * while its predecessor is still connected. Such pods go back to the newest ztunnel still connected.
   */
  async #handBack(gone: ZtunnelConn): Promise<void> {
    for (const uid of gone.held) {
      // Checked just before the ask is queued: a del that came since is not undone, one that comes later follows it.
      const pod = this.#pods.get(uid);
      if (!pod || this.#conns.some((c) => !c.closed && c.held.has(uid))) continue;
      const to = this.#conns.findLast((c) => c.ready && !c.closed);
      if (!to) return; // none left: the next ztunnel's snapshot carries the pod
      try {
        const answer = await to.ask({ type: "add", uid, workload: pod.workload, netns: pod.netns });
        if (answer.type === "ack") to.held.add(uid);
        else this.#opts.log.warn({ ztunnel: to.id, uid, reason: answer.reason }, "pod not taken back");
      } catch (error) {
        this.#opts.log.warn({ ztunnel: to.id, uid, error: (error as Error).message }, "pod not taken back");
      }
    }
  }

  /** Tells every connected ztunnel to drop a pod; failures are logged, not thrown. */
  async del(uid: string): Promise<void> {
    this.#pods.delete(uid);
    for (const c of this.#conns) c.held.delete(uid);
    await Promise.all(
      this.#conns.filter((c) => c.ready && !c.closed).map(async (c) => {
        try {
          const answer = await c.ask({ type: "del", uid });
          if (answer.type === "nack") this.#opts.log.warn({ ztunnel: c.id, uid, reason: answer.reason }, "del refused");
        } catch (error) {
          this.#opts.log.warn({ ztunnel: c.id, uid, error: (error as Error).message }, "del not delivered");
        }
      }),
    );
  }

  /** Stops listening and disconnects every ztunnel. */
  async close(): Promise<void> {
    this.#closed = true;
    try {
      this.#listener.close();
    } catch { /* already closed */ }
    for (const c of this.#accepted) c.close();
    await this.#accepting;
    try {
      Deno.removeSync(this.#opts.socketPath);
    } catch { /* gone */ }
  }
}
