/**
 * The rotation manager: keeps certificates for a set of identities, running the schedule of `rotation.ts`
 * against a CA client. ztunnel prefetches the identities of its node's enrolled workloads, asks on demand
 * for the rest, and tells the manager to forget an identity when its last workload leaves. Time and
 * randomness come in through {@link Clock} and `random`, so tests drive it with a fake clock.
 *
 * @module
 */

import type { Logger } from "../mesh/log.ts";
import {
  afterFailure,
  afterSuccess,
  type CertTimes,
  type Entry,
  hasValidCert,
  MAX_IN_FLIGHT,
  nextWakeup,
  pickRequests,
} from "./rotation.ts";

/** Time for the manager: real in production, fake in tests. */
export interface Clock {
  now(): number;
  /** Calls `fn` after `ms`; returns a handle for {@link Clock.clearTimer}. */
  setTimer(fn: () => void, ms: number): unknown;
  clearTimer(id: unknown): void;
}

/** setTimeout's longest delay; a longer one fires at once. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/** The wall clock. A wake-up beyond setTimeout's limit comes early, and the manager sets the next one. */
export const systemClock: Clock = {
  now: () => Date.now(),
  setTimer: (fn, ms) => setTimeout(fn, Math.min(ms, MAX_TIMER_MS)),
  clearTimer: (id) => clearTimeout(id as ReturnType<typeof setTimeout>),
};

/** Options of a {@link RotationManager}. */
export interface RotationOptions<C extends CertTimes> {
  /** Asks the CA for a certificate for `identity`. */
  fetch: (identity: string) => Promise<C>;
  clock?: Clock;
  random?: () => number;
  maxInFlight?: number;
  log?: Logger;
  /**
   * Called with each certificate obtained (first issue and every renewal), after it is held: how a proxy's
   * worker threads are handed the certificates the main thread keeps (dataplane/proxy/workers.ts).
   */
  onIssued?: (identity: string, cert: C) => void;
}

interface Waiter<C> {
  resolve: (cert: C) => void;
  reject: (err: Error) => void;
}

/** Keeps a certificate for each tracked identity, renewed at half-life. */
export class RotationManager<C extends CertTimes> {
  readonly #opts: Required<Omit<RotationOptions<C>, "log" | "onIssued">> & Pick<RotationOptions<C>, "log" | "onIssued">;
  readonly #entries = new Map<string, Entry<C>>();
  readonly #waiters = new Map<string, Waiter<C>[]>();
  #seq = 0;
  /** Requests still running for identities forgotten meanwhile: each holds its slot until it ends. */
  #orphans = 0;
  #timer: unknown;
  #closed = false;

  constructor(opts: RotationOptions<C>) {
    this.#opts = { clock: systemClock, random: Math.random, maxInFlight: MAX_IN_FLIGHT, ...opts };
  }

  /** Starts keeping a certificate for `identity` ahead of need. */
  prefetch(identity: string): void {
    if (this.#closed) return;
    this.#track(identity, "prefetch");
    this.#pump();
  }

  /**
   * A valid certificate for `identity`: at once if one is held, else after an on-demand request, which goes
   * ahead of prefetch. Rejects when that request fails (the manager keeps retrying with backoff).
   */
  get(identity: string): Promise<C> {
    const now = this.#opts.clock.now();
    const e = this.#entries.get(identity);
    if (e && hasValidCert(e, now)) return Promise.resolve(e.cert!);
    if (this.#closed) return Promise.reject(new Error("the rotation manager is closed"));
    const entry = this.#track(identity, "on-demand");
    if (!entry.inFlight) {
      this.#entries.set(identity, { ...entry, priority: "on-demand", dueAt: Math.min(entry.dueAt, now) });
    }
    const p = new Promise<C>((resolve, reject) => {
      const list = this.#waiters.get(identity) ?? [];
      list.push({ resolve, reject });
      this.#waiters.set(identity, list);
    });
    this.#pump();
    return p;
  }

  /** The certificate held for `identity` if it is valid now. */
  current(identity: string): C | undefined {
    const e = this.#entries.get(identity);
    return e && hasValidCert(e, this.#opts.clock.now()) ? e.cert : undefined;
  }

  /** The identities tracked. */
  identities(): string[] {
    return [...this.#entries.keys()];
  }

  /** Stops tracking `identity` and drops its certificate; waiters are rejected. */
  forget(identity: string): void {
    const e = this.#entries.get(identity);
    if (!e) return;
    this.#entries.delete(identity);
    if (e.inFlight) this.#orphans++;
    this.#settle(identity, undefined, new Error(`identity ${identity} was forgotten`));
    this.#pump();
  }

  /** Stops all work; waiters are rejected. */
  close(): void {
    this.#closed = true;
    if (this.#timer !== undefined) this.#opts.clock.clearTimer(this.#timer);
    this.#timer = undefined;
    for (const id of [...this.#entries.keys()]) this.forget(id);
  }

  #track(identity: string, priority: Entry<C>["priority"]): Entry<C> {
    let e = this.#entries.get(identity);
    if (!e) {
      e = {
        identity,
        priority,
        dueAt: this.#opts.clock.now(),
        failures: 0,
        inFlight: false,
        seq: this.#seq++,
      };
      this.#entries.set(identity, e);
    }
    return e;
  }

  #pump(): void {
    if (this.#closed) return;
    const clock = this.#opts.clock;
    const now = clock.now();
    const picked = pickRequests(this.#entries.values(), now, this.#opts.maxInFlight - this.#orphans);
    // All marked in flight first: a fetch that fails synchronously pumps again before this loop ends.
    for (const e of picked) this.#entries.set(e.identity, { ...e, inFlight: true });
    for (const e of picked) this.#request(e.identity, e.seq);
    if (this.#timer !== undefined) clock.clearTimer(this.#timer);
    this.#timer = undefined;
    const wake = nextWakeup(this.#entries.values());
    // Due but not started means every slot is taken: the request that ends first pumps again.
    if (wake !== undefined && wake > now) {
      this.#timer = clock.setTimer(() => {
        this.#timer = undefined;
        this.#pump();
      }, wake - now);
    }
  }

  async #request(identity: string, seq: number): Promise<void> {
    let cert: C | undefined;
    let error: Error | undefined;
    try {
      cert = await this.#opts.fetch(identity);
      if (!(cert.notAfter > this.#opts.clock.now())) {
        throw new Error("the CA returned a certificate that is already expired");
      }
    } catch (err) {
      error = err instanceof Error ? err : new Error(String(err));
    }
    if (this.#closed) return;
    const e = this.#entries.get(identity);
    if (!e || e.seq !== seq) { // forgotten meanwhile: only its slot is freed
      this.#orphans--;
      this.#pump();
      return;
    }
    const now = this.#opts.clock.now();
    if (error) {
      const next = afterFailure(e, now, this.#opts.random());
      this.#entries.set(identity, next);
      this.#opts.log?.warn({
        identity,
        err: error,
        retryInMs: next.dueAt - now,
        keptValidCert: next.cert !== undefined,
      }, "certificate request failed");
      if (!next.cert) this.#settle(identity, undefined, error);
    } else {
      this.#entries.set(identity, afterSuccess(e, cert!, now));
      this.#opts.log?.debug(
        { identity, notAfter: new Date(cert!.notAfter).toISOString() },
        "certificate obtained",
      );
      this.#settle(identity, cert, undefined);
      this.#opts.onIssued?.(identity, cert!);
    }
    this.#pump();
  }

  #settle(identity: string, cert: C | undefined, error: Error | undefined): void {
    const list = this.#waiters.get(identity);
    if (!list) return;
    this.#waiters.delete(identity);
    for (const w of list) cert ? w.resolve(cert) : w.reject(error!);
  }
}
