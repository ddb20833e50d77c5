/**
 * A waypoint worker thread (`--workers` N > 1 starts N − 1 of them, dataplane/proxy/workers.ts): its own HBONE
 * listener on the waypoint's address and port beside the main thread's (SO_REUSEPORT, `thread.ts`), its own copy
 * of the config, fed with every message the main thread applies, and the certificate the main thread's rotation
 * manager obtains, pushed at each renewal. It never talks to the control plane or the CA.
 *
 * Fail closed: it listens only once it holds the config snapshot and a valid certificate, both in its `init`
 * (the main thread starts the workers once it has both); an `init` without them fails, and the pool starts the
 * worker again later with the state of that moment. On `drain` it stops accepting as the main thread does, and
 * reports what it still has in flight.
 *
 * @module
 */

import { ClientConfig } from "../../mesh/control_client.ts";
import { SpiffeId } from "../../mesh/identity.ts";
import { logFromThreads, logger } from "../../mesh/log.ts";
import { loadNetnsSupport } from "../../mesh/netns_linux.ts";
import { installBugHandler } from "../proxy/bootstrap.ts";
import { applyMirrored, type ConfigMessage, type MirroredConfig } from "../proxy/worker_config.ts";
import { type CertMessage, PushedCerts, type WireCert } from "../proxy/worker_certs.ts";
import { postToMain, serveAsWorker } from "../proxy/workers.ts";
import { loadSocketSupport } from "../sockets_linux.ts";
import { WaypointMetrics } from "./telemetry.ts";
import { WaypointThread } from "./thread.ts";

/** Everything a waypoint worker needs before it serves: the main thread's `init`. */
export interface WaypointWorkerInit {
  self: { name: string; namespace: string; hostname: string; identity: string; network: string };
  trustDomain: string;
  netns?: string;
  listenAddress: string;
  hbonePort: number;
  drainDeadlineMs: number;
  /** The config the main thread holds now, as one snapshot. */
  config: MirroredConfig;
  /** The certificates it holds now. */
  certs: WireCert[];
  /** Set when the worker is (re)started during a drain: it must not listen at all. */
  draining: boolean;
}

/** Main → worker, besides the certificate messages. */
export type WaypointWorkerMessage =
  | { t: "config"; message: ConfigMessage }
  | { t: "drain" }
  | CertMessage;

/** What the main thread asks a worker. */
export type WaypointWorkerAsk = { t: "metrics" } | { t: "drain-state" };

/** A worker's drain, as it answers `drain-state` and pings. */
export interface WaypointWorkerStatus {
  inflight: number;
  /** Nothing in flight and the drain's grace over (or never listening). */
  drained: boolean;
}

let thread: WaypointThread | undefined;
let config: ClientConfig | undefined;
let certs: PushedCerts | undefined;
let metrics: WaypointMetrics | undefined;
let drained = false;
let drainDeadlineMs = 0;

function init(index: number, body: unknown): Promise<void> {
  const o = body as WaypointWorkerInit;
  logFromThreads({ worker: index });
  const log = logger("waypoint");
  installBugHandler(log, "a request");
  loadSocketSupport();
  if (o.netns !== undefined) loadNetnsSupport();
  drainDeadlineMs = o.drainDeadlineMs;
  config = new ClientConfig(log);
  applyMirrored(config, o.config);
  certs = new PushedCerts((m) => postToMain(m));
  for (const cert of o.certs) certs.accept({ t: "cert", identity: cert.identity, cert });
  metrics = new WaypointMetrics();
  const identity = SpiffeId.parse(o.self.identity, "identity");
  thread = new WaypointThread({
    self: { ...o.self, identity },
    config,
    certs,
    trustDomain: o.trustDomain,
    netns: o.netns,
    listenAddress: o.listenAddress,
    hbonePort: o.hbonePort,
    metrics,
    log,
    access: logger("access"),
  });
  if (o.draining) {
    drained = true;
    return Promise.resolve();
  }
  const cert = certs.current(identity.toString());
  if (!cert) return Promise.reject(new Error(`waypoint worker: no valid certificate for ${identity} in its init`));
  return thread.listen(cert).then(() => {});
}

function message(body: unknown): void {
  const m = body as WaypointWorkerMessage;
  if (m.t === "config") {
    config!.apply(m.message);
    thread!.configChanged();
  } else if (m.t === "cert" || m.t === "cert-error") {
    certs!.accept(m);
    thread!.rotate();
  } else if (m.t === "drain") {
    if (!thread!.listening || thread!.drain.draining) return;
    thread!.beginDrain();
    void thread!.drain.wait(drainDeadlineMs).then(() => drained = true);
  }
}

function status(): WaypointWorkerStatus {
  return { inflight: thread?.drain.inflight ?? 0, drained };
}

serveAsWorker({
  init,
  message,
  ask: (body) => (body as WaypointWorkerAsk).t === "metrics" ? metrics!.registry.getMetricsAsJSON() : status(),
  status,
});
