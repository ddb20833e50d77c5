/**
 * Certificates for a proxy's worker threads (workers.ts), from the one source the main thread keeps: the main
 * thread's rotation manager asks the CA and renews at half-life; every certificate it obtains is pushed to the
 * workers ({@link CertFeed}), and a worker that needs one it has not been given asks for it ({@link PushedCerts}).
 * A worker never talks to the CA, so a node asks the CA once per identity however many cores it has.
 *
 * A worker holds only what was pushed. It serves a certificate while it is valid and never past its `notAfter`
 * (as the rotation manager: `current()` is undefined then, and HBONE refuses); a renewal that does not arrive
 * leaves the worker refusing, not serving on an expired certificate.
 *
 * @module
 */

import { SpiffeId } from "../../mesh/identity.ts";
import type { WorkloadCert } from "./identity.ts";

/** What the proxies take their workload certificates from: a rotation manager, or a worker's {@link PushedCerts}. */
export interface CertSource {
  /** Starts keeping a certificate for `identity` ahead of need. */
  prefetch(identity: string): void;
  /** A valid certificate for `identity`, at once or when one arrives; rejects when it cannot be had. */
  get(identity: string): Promise<WorkloadCert>;
  /** The certificate held for `identity` if it is valid now. */
  current(identity: string): WorkloadCert | undefined;
  /** Drops `identity`. */
  forget(identity: string): void;
}

/** A {@link WorkloadCert} as it crosses to a worker (structured clone keeps no class, so the identity is text). */
export type WireCert = Omit<WorkloadCert, "identity"> & { identity: string };

/** Messages about certificates, both ways. */
export type CertMessage =
  | { t: "cert"; identity: string; cert: WireCert }
  | { t: "cert-error"; identity: string; error: string }
  | { t: "want-cert"; identity: string };

export function toWire(c: WorkloadCert): WireCert {
  return { ...c, identity: c.identity.toString() };
}

export function fromWire(c: WireCert): WorkloadCert {
  return { ...c, identity: SpiffeId.parse(c.identity, "identity") };
}

/** Where {@link CertFeed} sends: a WorkerPool. */
export interface CertTargets {
  broadcast(m: CertMessage): void;
  send(index: number, m: CertMessage): void;
}

/** The main thread's side: answers workers' requests from `source` and pushes every certificate it obtains. */
export class CertFeed {
  readonly #source: CertSource;
  readonly #workers: () => CertTargets | undefined;

  /** `workers` gives the worker pool, or undefined while there is none (nothing is sent then). */
  constructor(source: CertSource, workers: () => CertTargets | undefined) {
    this.#source = source;
    this.#workers = workers;
  }

  /** Pass to the rotation manager as `onIssued`. */
  issued(identity: string, cert: WorkloadCert): void {
    this.#workers()?.broadcast({ t: "cert", identity, cert: toWire(cert) });
  }

  /** Pass to the pool as `onMessage`: answers a worker's `want-cert`. */
  onWorkerMessage(index: number, body: unknown): void {
    const m = body as CertMessage;
    if (m.t === "want-cert") this.want(index, m.identity);
  }

  /** Every certificate held now, for a worker's `init`. */
  held(identities: string[]): WireCert[] {
    return identities.flatMap((id) => {
      const c = this.#source.current(id);
      return c ? [toWire(c)] : [];
    });
  }

  /** A worker's `want-cert`: it gets the certificate (the same push as a renewal) or the error. */
  want(index: number, identity: string): void {
    this.#source.get(identity).then(
      (cert) => this.#workers()?.send(index, { t: "cert", identity, cert: toWire(cert) }),
      (error) => this.#workers()?.send(index, { t: "cert-error", identity, error: String(error?.message ?? error) }),
    );
  }
}

/** A worker's certificates: those the main thread pushed, asked for when missing. */
export class PushedCerts implements CertSource {
  readonly #held = new Map<string, WorkloadCert>();
  readonly #waiters = new Map<string, { resolve: (c: WorkloadCert) => void; reject: (e: Error) => void }[]>();
  readonly #ask: (m: CertMessage) => void;
  readonly #now: () => number;

  constructor(ask: (m: CertMessage) => void, now: () => number = Date.now) {
    this.#ask = ask;
    this.#now = now;
  }

  /** Takes a `cert` or `cert-error` from the main thread. */
  accept(m: CertMessage): void {
    if (m.t === "cert") {
      const cert = fromWire(m.cert);
      const held = this.#held.get(m.identity);
      // An older one arriving late is dropped. Older by issue (notBefore), not by notAfter: a CA caps a leaf at its
      // own notAfter (certs/ca.ts), so after a rotation to a CA that ends sooner the renewal ends sooner too, and a
      // worker that dropped it kept serving the chain of the roots rotated away while the main thread had moved on.
      if (
        held &&
        (held.notBefore > cert.notBefore || (held.notBefore === cert.notBefore && held.notAfter > cert.notAfter))
      ) {
        return;
      }
      this.#held.set(m.identity, cert);
      if (this.current(m.identity)) this.#settle(m.identity, cert, undefined);
    } else if (m.t === "cert-error") {
      this.#settle(m.identity, undefined, new Error(m.error));
    }
  }

  prefetch(identity: string): void {
    if (!this.current(identity)) this.#ask({ t: "want-cert", identity });
  }

  get(identity: string): Promise<WorkloadCert> {
    const c = this.current(identity);
    if (c) return Promise.resolve(c);
    return new Promise((resolve, reject) => {
      const list = this.#waiters.get(identity);
      if (list) list.push({ resolve, reject });
      else {
        this.#waiters.set(identity, [{ resolve, reject }]);
        this.#ask({ t: "want-cert", identity });
      }
    });
  }

  current(identity: string): WorkloadCert | undefined {
    const c = this.#held.get(identity);
    const now = this.#now();
    return c && c.notBefore <= now && now < c.notAfter ? c : undefined;
  }

  forget(identity: string): void {
    this.#held.delete(identity);
    this.#settle(identity, undefined, new Error(`identity ${identity} was forgotten`));
  }

  /** The identities held. */
  identities(): string[] {
    return [...this.#held.keys()];
  }

  #settle(identity: string, cert: WorkloadCert | undefined, error: Error | undefined): void {
    const list = this.#waiters.get(identity);
    if (!list) return;
    this.#waiters.delete(identity);
    for (const w of list) cert ? w.resolve(cert) : w.reject(error!);
  }
}
