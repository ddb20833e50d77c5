/**
 * Worker threads for a proxy, so that ztunnel and the waypoint serve on every core. The main thread keeps the
 * one config stream, the one certificate source, the admin ports and the signals; it serves traffic itself and
 * starts `--workers` − 1 Deno Workers beside it, each an isolate on its own thread with its own event loop. Each
 * opens its own SO_REUSEPORT listeners on the same ports (the kernel spreads new connections between them by
 * their addresses' hash, and a connection stays on the thread that accepted it), and holds its own copy of the
 * config, fed from the main thread's. Upstream ztunnel runs one tokio runtime over every core instead; a V8
 * isolate is single-threaded, so threads here share nothing but the file descriptors of the process.
 *
 * Deno's Worker reports an uncaught error (`error` event) but not a worker that closed itself or hangs, so the
 * pool also pings each worker every second: a worker that errs, or leaves `deadAfterMs` without answering, is
 * terminated (its sockets close with it), logged, and started again with the state of the moment (`init`).
 * Restarts back off from 100 ms to 10 s while a worker keeps dying, so a worker that cannot start (a bad
 * listener, say) costs a log line every 10 s and not a core.
 *
 * Messages main → worker come in three kinds: `msg` (delivered at once, in order: config and certificates),
 * `ask` (answered at once: metrics) and `call` (run one at a time, in order, answered when done: pods). A worker
 * answers pings with its `status()`, which the main thread reads for counts (open connections) without a
 * round trip. Role code lives in each role's `worker.ts`; this module knows nothing of pods or routes.
 *
 * @module
 */

import { flushLogsAsync, type Logger } from "../../mesh/log.ts";

/** What the main thread posts to a worker. */
type ToWorker =
  | { k: "init"; index: number; body: unknown }
  | { k: "msg"; body: unknown }
  | { k: "ask"; id: number; body: unknown }
  | { k: "call"; id: number; body: unknown }
  | { k: "end"; id: number }
  | { k: "ping" };

/** What a worker posts to the main thread. */
type FromWorker =
  | { k: "msg"; body: unknown }
  | { k: "reply"; id: number; ok: true; body: unknown }
  | { k: "reply"; id: number; ok: false; error: string }
  | { k: "pong"; status: unknown }
  | { k: "fatal"; error: string };

/** Options of a {@link WorkerPool}. */
export interface WorkerPoolOptions {
  /** The worker's entry module; it calls {@link serveAsWorker}. */
  module: URL;
  /** How many workers beside the main thread (`--workers` − 1); 0 starts none. */
  count: number;
  /** The role, for logs and thread names ("ztunnel", "waypoint"). */
  role: string;
  log: Logger;
  /** The first message a worker gets, at each start: everything it needs before it serves. */
  init: (index: number) => unknown;
  /** A worker's own messages (not replies). */
  onMessage?: (index: number, body: unknown) => void;
  /** Between pings; 1 s. */
  heartbeatMs?: number;
  /** A worker silent this long, once it has answered a first time, is dead; 10 s (before that: `callTimeoutMs`). */
  deadAfterMs?: number;
  /**
   * A worker that leaves a call (or its init, which calls wait behind) unanswered this long is dead too, though it
   * still answers pings: its work hangs, and whatever waits on the call (the node agent's ack) would wait forever;
   * 60 s.
   */
  callTimeoutMs?: number;
}

interface Pending {
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
  /** When a call was posted; undefined for an ask, which is answered at once or never. */
  calledAt?: number;
}

interface Slot {
  /** 1-based: the main thread is worker 0. */
  index: number;
  worker: Worker | undefined;
  /** When the worker last answered; 0 until its first answer (it is still loading its modules). */
  heardAt: number;
  status: unknown;
  pending: Map<number, Pending>;
  /** Deaths in a row without a minute of life between them; sets the restart delay. */
  streak: number;
  startedAt: number;
  restart?: ReturnType<typeof setTimeout>;
}

/** A worker's answer to a call or ask was an error (as opposed to the worker dying meanwhile). */
class CallFailed extends Error {}

const MIN_RESTART_MS = 100;
const MAX_RESTART_MS = 10_000;
/** A worker alive this long has recovered: its next death restarts it at once again. */
const HEALTHY_AFTER_MS = 60_000;

/** The worker threads of one proxy, restarted when they die. */
export class WorkerPool {
  readonly #o: Required<Omit<WorkerPoolOptions, "onMessage">> & Pick<WorkerPoolOptions, "onMessage">;
  readonly #slots: Slot[] = [];
  #nextId = 0;
  #heartbeat: ReturnType<typeof setInterval> | undefined;
  #closed = false;
  /** Workers restarted since start, of all slots. */
  restarts = 0;

  constructor(opts: WorkerPoolOptions) {
    this.#o = { heartbeatMs: 1_000, deadAfterMs: 10_000, callTimeoutMs: 60_000, ...opts };
    for (let i = 1; i <= opts.count; i++) {
      const slot: Slot = {
        index: i,
        worker: undefined,
        heardAt: 0,
        status: undefined,
        pending: new Map(),
        streak: 0,
        startedAt: 0,
      };
      this.#slots.push(slot);
      this.#start(slot);
    }
    if (opts.count > 0) this.#heartbeat = setInterval(() => this.#beat(), this.#o.heartbeatMs);
  }

  /** The number of worker threads (not counting the main thread). */
  get size(): number {
    return this.#slots.length;
  }

  /** Each running worker's last reported status, by index. */
  statuses(): unknown[] {
    return this.#slots.filter((s) => s.worker !== undefined && s.status !== undefined).map((s) => s.status);
  }

  /** Posts `body` to every running worker (a stopped one gets the state of its restart in `init` instead). */
  broadcast(body: unknown): void {
    for (const s of this.#slots) this.#post(s, { k: "msg", body });
  }

  /** Posts `body` to one worker. */
  send(index: number, body: unknown): void {
    const s = this.#slots[index - 1];
    if (s) this.#post(s, { k: "msg", body });
  }

  /** Asks every running worker at once (not queued behind its calls); a worker that dies meanwhile is left out. */
  async askAll(body: unknown): Promise<unknown[]> {
    const answers = await Promise.allSettled(this.#slots.map((s) => this.#request(s, "ask", body)));
    return answers.flatMap((a) => a.status === "fulfilled" ? [a.value] : []);
  }

  /**
   * Runs `body` on every running worker, after the calls before it; resolves when each has answered or died
   * (a dead worker holds no sockets, so whatever the call would have undone is undone). Rejects when a worker
   * answered with an error (the call threw there), naming the worker, once every worker has answered.
   */
  async callAll(body: unknown): Promise<void> {
    const answers = await Promise.allSettled(this.#slots.map((s) => this.#request(s, "call", body)));
    const failed = answers.flatMap((a) => a.status === "rejected" && a.reason instanceof CallFailed ? [a.reason] : []);
    if (failed.length > 0) throw new Error(failed.map((e) => e.message).join("; "));
  }

  /**
   * Stops every worker once it has written out its buffered log lines (the access log of the connections it
   * closed last among them), waiting `timeoutMs` at most: terminating a Worker drops what its event loop had not
   * written yet.
   */
  async end(timeoutMs = 2_000): Promise<void> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([
      Promise.allSettled(this.#slots.map((s) => this.#request(s, "end", undefined))),
      new Promise((resolve) => timer = setTimeout(resolve, timeoutMs)),
    ]);
    clearTimeout(timer);
    this.close();
  }

  /** Stops every worker at once. */
  close(): void {
    this.#closed = true;
    clearInterval(this.#heartbeat);
    for (const s of this.#slots) {
      clearTimeout(s.restart);
      this.#stop(s, new Error("the worker pool is closed"));
    }
  }

  #start(slot: Slot): void {
    if (this.#closed) return;
    let worker: Worker;
    try {
      worker = new Worker(this.#o.module, { type: "module", name: `${this.#o.role}-worker-${slot.index}` });
    } catch (error) {
      // No thread (out of memory, a resource limit): the slot is tried again later, not given up.
      this.#o.log.error(
        { worker: slot.index, error: String(error), restartInMs: MAX_RESTART_MS },
        `${this.#o.role} worker could not be started; trying again`,
      );
      slot.restart = setTimeout(() => this.#start(slot), MAX_RESTART_MS);
      return;
    }
    slot.worker = worker;
    slot.startedAt = Date.now();
    slot.heardAt = 0;
    slot.status = undefined;
    worker.onmessage = (e: MessageEvent<FromWorker>) => {
      if (slot.worker !== worker) return;
      slot.heardAt = Date.now();
      const m = e.data;
      if (m.k === "pong") slot.status = m.status;
      else if (m.k === "fatal") this.#died(slot, m.error);
      else if (m.k === "msg") this.#o.onMessage?.(slot.index, m.body);
      else if (m.k === "reply") {
        const p = slot.pending.get(m.id);
        slot.pending.delete(m.id);
        if (m.ok) p?.resolve(m.body);
        else p?.reject(new CallFailed(`${this.#o.role} worker ${slot.index}: ${m.error}`));
      }
    };
    worker.onerror = (e: ErrorEvent) => {
      e.preventDefault(); // one worker's death must not end the process
      if (slot.worker === worker) this.#died(slot, `uncaught error: ${e.message}`);
    };
    worker.onmessageerror = () => {
      if (slot.worker === worker) this.#died(slot, "a message from it could not be read");
    };
    worker.postMessage({ k: "init", index: slot.index, body: this.#o.init(slot.index) } satisfies ToWorker);
  }

  #beat(): void {
    const now = Date.now();
    for (const s of this.#slots) {
      if (s.worker === undefined) continue;
      const oldest = Math.min(...[...s.pending.values()].map((p) => p.calledAt ?? now), now);
      // A worker still loading its modules (slow on a loaded machine) has until the call timeout to answer once;
      // after its first answer, a silence of deadAfterMs is death.
      if (s.heardAt === 0 && now - s.startedAt > this.#o.callTimeoutMs) {
        this.#died(s, `no answer ${now - s.startedAt} ms after it was started (it exited or hangs)`);
      } else if (s.heardAt !== 0 && now - s.heardAt > this.#o.deadAfterMs) {
        this.#died(s, `no answer for ${now - s.heardAt} ms (it exited or hangs)`);
      } else if (now - oldest > this.#o.callTimeoutMs) {
        this.#died(s, `a call went unanswered for ${now - oldest} ms (its work hangs)`);
      } else this.#post(s, { k: "ping" });
    }
  }

  #died(slot: Slot, reason: string): void {
    if (this.#closed || slot.worker === undefined) return;
    const lived = Date.now() - slot.startedAt;
    slot.streak = lived >= HEALTHY_AFTER_MS ? 0 : slot.streak + 1;
    const delay = Math.min(MAX_RESTART_MS, MIN_RESTART_MS * 2 ** Math.max(0, slot.streak - 1));
    this.#stop(slot, new Error(`${this.#o.role} worker ${slot.index} died: ${reason}`));
    this.restarts++;
    this.#o.log.error(
      { worker: slot.index, reason, livedMs: lived, restartInMs: delay },
      `BUG: ${this.#o.role} worker died; its connections are lost; restarting it`,
    );
    slot.restart = setTimeout(() => this.#start(slot), delay);
  }

  #stop(slot: Slot, why: Error): void {
    slot.worker?.terminate();
    slot.worker = undefined;
    slot.status = undefined;
    for (const p of slot.pending.values()) p.reject(why);
    slot.pending.clear();
  }

  #request(slot: Slot, k: "ask" | "call" | "end", body: unknown): Promise<unknown> {
    if (slot.worker === undefined) return Promise.reject(new Error(`worker ${slot.index} is not running`));
    const id = ++this.#nextId;
    return new Promise((resolve, reject) => {
      slot.pending.set(id, { resolve, reject, calledAt: k === "call" ? Date.now() : undefined });
      this.#post(slot, k === "end" ? { k, id } : { k, id, body });
    });
  }

  #post(slot: Slot, m: ToWorker): void {
    try {
      slot.worker?.postMessage(m);
    } catch (error) {
      this.#died(slot, `a message to it could not be posted: ${(error as Error).message}`);
    }
  }
}

/** What a worker's entry module does with the main thread's messages. */
export interface WorkerHandlers {
  /** The first message, at start; messages that come meanwhile wait for it to end. */
  init(index: number, body: unknown): Promise<void> | void;
  /** A `msg`: handled at once, in order. */
  message(body: unknown): void;
  /**
   * Messages are handled once `init` has run up to its first `await`, not once it has ended: for a worker whose
   * init serves before it ends (ztunnel's opens each pod's listeners in turn), so that a config message sent
   * meanwhile is in force at once rather than after every pod is served.
   */
  messagesDuringInit?: boolean;
  /** An `ask`: answered at once. */
  ask?(body: unknown): Promise<unknown> | unknown;
  /** A `call`: one at a time, in order. */
  call?(body: unknown): Promise<unknown> | unknown;
  /** Sent with each answer to a ping. */
  status?(): unknown;
}

/** The parts of a worker's global scope used here. */
interface WorkerScope {
  postMessage(m: unknown): void;
  onmessage: ((e: MessageEvent) => void) | null;
  close(): void;
}

function workerScope(): WorkerScope {
  return globalThis as unknown as WorkerScope;
}

/**
 * The worker side of a {@link WorkerPool}: call once from the worker's entry module. An `init` that fails ends
 * the worker (reported to the pool, which logs it and starts it again later).
 */
export function serveAsWorker(h: WorkerHandlers, scope: WorkerScope = workerScope()): void {
  const post = (m: FromWorker) => scope.postMessage(m);
  let ready: Promise<void> | undefined;
  /** Where messages wait: `ready`, or the end of init's synchronous part ({@link WorkerHandlers.messagesDuringInit}). */
  let accepting: Promise<unknown> | undefined;
  let calls: Promise<void> = Promise.resolve();
  const reply = async (id: number, work: () => unknown) => {
    try {
      post({ k: "reply", id, ok: true, body: await work() });
    } catch (error) {
      post({ k: "reply", id, ok: false, error: error instanceof Error ? error.message : String(error) });
    }
  };
  scope.onmessage = (e: MessageEvent<ToWorker>) => {
    const m = e.data;
    switch (m.k) {
      case "ping":
        post({ k: "pong", status: h.status?.() });
        return;
      case "init":
        {
          const began = Promise.resolve().then(() => ({ done: h.init(m.index, m.body) }));
          ready = began.then((b) => b.done);
          accepting = h.messagesDuringInit ? began : ready;
        }
        ready.catch((error) => {
          post({ k: "fatal", error: `init failed: ${error instanceof Error ? error.message : String(error)}` });
          scope.close();
        });
        calls = ready.catch(() => {});
        return;
      case "msg":
        if (accepting === undefined) return; // never before init: the pool posts init first
        void accepting.then(() => h.message(m.body), () => {});
        return;
      case "ask":
        void (ready ?? Promise.resolve()).then(() => reply(m.id, () => h.ask?.(m.body)), () => {});
        return;
      case "call":
        calls = calls.then(() => reply(m.id, () => h.call?.(m.body)));
        return;
      case "end":
        // After the calls before it (a pod's close writes its connections' access lines), the log lines out.
        calls = calls.then(() => reply(m.id, () => flushLogsAsync()));
        return;
    }
  };
}

/** Posts a worker's own message to the main thread (`onMessage` there). */
export function postToMain(body: unknown, scope: WorkerScope = workerScope()): void {
  scope.postMessage({ k: "msg", body } satisfies FromWorker);
}
