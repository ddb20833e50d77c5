/**
 * ztunnel's worker threads, main thread side (`--workers N`, dataplane/proxy/workers.ts): N − 1 workers running
 * `worker.ts` beside the main thread, which serves traffic too. Each thread opens its own SO_REUSEPORT listeners in
 * every pod (inpod.ts), so the kernel spreads a pod's new connections over the threads and a connection stays on the
 * thread that accepted it. What the main thread keeps alone, and hands on:
 *
 * - config: each applied config stream message is posted to every worker, which applies it to its own copy and
 *   re-decides its own open connections (connection_manager.ts); a local config file is posted as its text once the
 *   main thread has parsed it. A worker (re)started gets the config of the moment first.
 * - certificates: the one rotation manager asks the CA; every certificate it obtains is pushed (worker_certs.ts).
 * - pods: each handoff (add, del, release, reconcile) is run on the main thread and on every worker, and the agent's
 *   ack waits for all of them; a pod refused by one thread is undone on all and nacked, so a pod is served by every
 *   thread or by none. The main thread keeps the list, which a restarted worker gets after config and certificates.
 * - counts: open connections (the drain) and `/metrics` are the main thread's plus every worker's.
 *
 * DNS (15053) stays on the main thread: its listeners are not SO_REUSEPORT, and it is a small share of the work.
 *
 * @module
 */

import type { Logger } from "../../mesh/log.ts";
import type { PodInfo } from "../../mesh/protocol/handoff.ts";
import type client from "prom-client";
import type { ConfigMessage, MirroredConfig } from "../proxy/worker_config.ts";
import { ConfigMirror, type HeldVersions } from "../proxy/worker_config.ts";
import { CertFeed, type CertMessage, type CertSource, type WireCert } from "../proxy/worker_certs.ts";
import { type MetricsJson, PooledMetrics } from "../proxy/bootstrap.ts";
import { WorkerPool } from "../proxy/workers.ts";
import type { WorkloadCert } from "../proxy/identity.ts";
import type { PodHandler } from "./handoff_client.ts";

/** A pod as the handoff gave it. */
export interface HandedPod {
  uid: string;
  info: PodInfo;
  netns: string;
}

/** A worker's state source: the control plane's stream (as one snapshot), or a local config file's text. */
export type WorkerState =
  | { kind: "control"; snapshot: MirroredConfig }
  | { kind: "local"; file: string; text: string };

/** What a ztunnel worker is started with, in the order it takes it: state, certificates, pods. */
export interface WorkerInit {
  trustDomain: string;
  /** Threads serving, the main one included: each takes its share of the node-wide dial bound. */
  threads: number;
  state: WorkerState;
  certs: WireCert[];
  pods: HandedPod[];
}

/** Messages to a worker, taken at once and in order. */
export type WorkerMessage =
  | { t: "config"; message: ConfigMessage }
  | { t: "local"; file: string; text: string }
  | CertMessage;

/** Calls to a worker, one at a time: the handoff's. */
export type WorkerCall =
  | { op: "add"; pod: HandedPod }
  | { op: "del"; uid: string }
  | { op: "release"; uid: string }
  | { op: "reconcile"; keep: string[] }
  | { op: "releaseAll" }
  | { op: "close" };

/** Questions to a worker, answered at once. */
export type WorkerAsk = { q: "metrics" } | { q: "open" } | { q: "applied" };

/** What a worker says with each answer to a ping. */
export interface WorkerStatus {
  open: number;
}

/** How long the workers get to close their pods at the end before they are terminated. */
const CLOSE_TIMEOUT_MS = 5_000;

/** The main thread's side of ztunnel's worker threads. */
export class ZtunnelThreads {
  readonly #pool: WorkerPool;
  readonly #feed: CertFeed;
  readonly #mirror: ConfigMirror;
  readonly #pods = new Map<string, HandedPod>();
  #local: { file: string; text: string } | undefined;

  /**
   * Starts `count` workers. `certs` is the main thread's rotation manager; `local` is the local config file's
   * text when there is no control plane; `config` is the config stream's (the mirror tells from it which updates
   * were refused, worker_config.ts).
   */
  constructor(opts: {
    count: number;
    log: Logger;
    trustDomain: string;
    certs: CertSource & { identities(): string[] };
    local?: { file: string; text: string };
    config?: HeldVersions;
  }) {
    this.#local = opts.local;
    this.#mirror = new ConfigMirror(opts.config);
    this.#feed = new CertFeed(opts.certs, () => this.#pool);
    this.#pool = new WorkerPool({
      module: new URL("./worker.ts", import.meta.url),
      count: opts.count,
      role: "ztunnel",
      log: opts.log,
      init: (): WorkerInit => ({
        trustDomain: opts.trustDomain,
        threads: opts.count + 1,
        state: this.#local ? { kind: "local", ...this.#local } : { kind: "control", snapshot: this.#mirror.snapshot() },
        certs: this.#feed.held(opts.certs.identities()),
        pods: [...this.#pods.values()],
      }),
      onMessage: (index, body) => this.#feed.onWorkerMessage(index, body),
    });
  }

  /** The rotation manager's `onIssued`: every certificate goes to every worker. */
  issued(identity: string, cert: WorkloadCert): void {
    this.#feed.issued(identity, cert);
  }

  /** A config stream message the main thread applied (runConfigClient's `onMessage`). */
  configApplied(message: ConfigMessage): void {
    this.#mirror.observe(message);
    this.#post({ t: "config", message });
  }

  /** A local config file the main thread parsed and put in force. */
  localApplied(file: string, text: string): void {
    this.#local = { file, text };
    this.#post({ t: "local", file, text });
  }

  /**
   * The handoff's handler: `main` (the main thread's PodManager) and every worker; a pod refused by any is undone
   * on all and the refusal is the agent's nack.
   */
  handler(main: PodHandler): PodHandler {
    return {
      add: async (uid, info, netns) => {
        const pod = { uid, info, netns };
        this.#pods.set(uid, pod); // before the calls: a worker restarting meanwhile gets it in its init
        const results = await Promise.allSettled([main.add(uid, info, netns), this.#call({ op: "add", pod })]);
        const failed = results.find((r) => r.status === "rejected") as PromiseRejectedResult | undefined;
        if (failed === undefined) return;
        this.#pods.delete(uid);
        await Promise.allSettled([main.del(uid), this.#call({ op: "del", uid })]);
        throw failed.reason;
      },
      del: (uid) => this.#both(main.del(uid), { op: "del", uid }, () => this.#pods.delete(uid)),
      release: (uid) => this.#both(main.release(uid), { op: "release", uid }, () => this.#pods.delete(uid)),
      reconcile: (keep) =>
        this.#both(main.reconcile(keep), { op: "reconcile", keep: [...keep] }, () => {
          for (const uid of [...this.#pods.keys()]) if (!keep.has(uid)) this.#pods.delete(uid);
        }),
    };
  }

  /** Every worker stops accepting (shutting down). */
  async releaseAll(): Promise<void> {
    this.#pods.clear();
    await this.#call({ op: "releaseAll" }).catch(() => {});
  }

  /**
   * Resolves once every worker has applied the changes posted so far, with the connections they closed for the
   * last one: a reload is logged as in force only when it is on every thread.
   */
  async applied(): Promise<number> {
    const answers = await this.#pool.askAll({ q: "applied" } satisfies WorkerAsk) as number[];
    return answers.reduce((a, b) => a + b, 0);
  }

  /** Connections open on the workers now (asked, not the last ping's: the drain must not end on a stale 0). */
  async openConnections(): Promise<number> {
    const answers = await this.#pool.askAll({ q: "open" } satisfies WorkerAsk) as number[];
    return answers.reduce((a, b) => a + b, 0);
  }

  /** `/metrics` over the main thread's `registry` and every worker's. */
  metrics(registry: client.Registry): PooledMetrics {
    return new PooledMetrics(
      registry,
      () => this.#pool.askAll({ q: "metrics" } satisfies WorkerAsk) as Promise<MetricsJson[]>,
    );
  }

  /** Workers restarted since start. */
  get restarts(): number {
    return this.#pool.restarts;
  }

  /** Ends every worker: each closes its pods (connections ended), then the threads stop. */
  async close(): Promise<void> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([
      this.#call({ op: "close" }).catch(() => {}),
      new Promise((resolve) => timer = setTimeout(resolve, CLOSE_TIMEOUT_MS)),
    ]);
    clearTimeout(timer);
    await this.#pool.end();
  }

  #post(m: WorkerMessage): void {
    this.#pool.broadcast(m);
  }

  #call(c: WorkerCall): Promise<void> {
    return this.#pool.callAll(c);
  }

  async #both(main: Promise<void>, call: WorkerCall, forget: () => void): Promise<void> {
    forget(); // before the calls: a worker restarting meanwhile must not get the pod back
    const results = await Promise.allSettled([main, this.#call(call)]);
    const failed = results.find((r) => r.status === "rejected") as PromiseRejectedResult | undefined;
    if (failed) throw failed.reason;
  }
}
