/**
 * What both proxies set up the same way before they serve, as upstream ztunnel's `app.rs` does for its one
 * binary: the BUG handler (a bug in one connection's handling is logged, not allowed to end every pod's traffic),
 * the shutdown signals, the certificate list of `/config_dump`, and `/metrics` over every worker thread.
 *
 * @module
 */

import client from "prom-client";
import type { Logger } from "../../mesh/log.ts";
import type { CertificateSummary } from "./admin.ts";
import type { CertSource } from "./worker_certs.ts";

/**
 * Logs an uncaught error or unhandled rejection as a BUG and serves on; `what` names the unit of work it was
 * in ("a connection", "a request"). Returns the function that removes the handler.
 */
export function installBugHandler(log: Logger, what: string): () => void {
  const onBug = (event: Event & { reason?: unknown; error?: unknown }) => {
    event.preventDefault();
    log.error({ error: String(event.reason ?? event.error) }, `BUG: unhandled error in ${what}; serving on`);
  };
  globalThis.addEventListener("unhandledrejection", onBug);
  globalThis.addEventListener("error", onBug);
  return () => {
    globalThis.removeEventListener("unhandledrejection", onBug);
    globalThis.removeEventListener("error", onBug);
  };
}

/**
 * SIGTERM and SIGINT call `stop` (a second one is the caller's to treat as "now"); SIGHUP calls `reload` when
 * given. Returns the function that removes them.
 */
export function onSignals(stop: () => void, reload?: () => void): () => void {
  Deno.addSignalListener("SIGTERM", stop);
  Deno.addSignalListener("SIGINT", stop);
  if (reload) Deno.addSignalListener("SIGHUP", reload);
  return () => {
    Deno.removeSignalListener("SIGTERM", stop);
    Deno.removeSignalListener("SIGINT", stop);
    if (reload) Deno.removeSignalListener("SIGHUP", reload);
  };
}

/** `/config_dump`'s certificates: each identity with its validity, or pending while none is held. */
export function certificateSummaries(certs: Pick<CertSource, "current">, identities: string[]): CertificateSummary[] {
  return identities.map((identity) => {
    const c = certs.current(identity);
    return c
      ? {
        identity,
        state: "available" as const,
        notBefore: new Date(c.notBefore).toISOString(),
        notAfter: new Date(c.notAfter).toISOString(),
      }
      : { identity, state: "pending" as const };
  });
}

/** A registry's series as a worker thread sends them to the main thread. */
export type MetricsJson = client.MetricObjectWithValues<client.MetricValue<string>>[];

/**
 * `/metrics` of a proxy that serves on several threads: the main thread's series and each worker's, summed by
 * name and labels (prom-client's cluster aggregation: counters and histograms add up; gauges too, as each thread
 * counts its own connections). Series only the main thread keeps (the config's) come from it alone.
 */
export class PooledMetrics {
  readonly #registry: client.Registry;
  readonly #workers: () => Promise<MetricsJson[]>;

  constructor(registry: client.Registry, workers: () => Promise<MetricsJson[]>) {
    this.#registry = registry;
    this.#workers = workers;
  }

  async expose(): Promise<{ body: string; contentType: string }> {
    const own = await this.#registry.getMetricsAsJSON() as MetricsJson;
    const others = await this.#workers();
    if (others.length === 0) return { body: await this.#registry.metrics(), contentType: this.#registry.contentType };
    const merged = client.AggregatorRegistry.aggregate([own, ...others]);
    return { body: await merged.metrics(), contentType: this.#registry.contentType };
  }
}
