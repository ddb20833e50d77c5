/**
 * `skiff ztunnel`: the node's L4 proxy. It takes pods from the node agent over the handoff socket, serves each one
 * from inside its network namespace (`inpod.ts`: capture on 15001/15006, HBONE on 15008), routes and authorizes
 * from the mesh state, and reports on 15000/15020/15021.
 *
 * Until the control plane exists, the state comes from `--local-config` (reloaded when the file changes; a bad
 * edit is logged and the last good state stays) and certificates from a local CA directory (`--ca-dir`, the
 * `skiff ca init` layout), through the rotation manager, which renews each at half-life.
 */

import { CertificateAuthority } from "../../certs/ca.ts";
import { RotationManager } from "../../certs/rotation_manager.ts";
import { certificatesToPem } from "../../certs/x509.ts";
import { describeOptions, loggable, option, parsers, readConfig } from "../../mesh/config.ts";
import { DEFAULT_TRUST_DOMAIN, SpiffeId, trustDomainProblem } from "../../mesh/identity.ts";
import { type Logger, logger } from "../../mesh/log.ts";
import { TcpMetrics } from "../../mesh/metrics.ts";
import { loadNetnsSupport } from "../../mesh/netns_linux.ts";
import { DEFAULT_HANDOFF_SOCKET } from "../../mesh/protocol/handoff.ts";
import type { MeshState } from "../../mesh/store.ts";
import { loadSocketSupport } from "../sockets_linux.ts";
import { accessLogFields, type ConnectionRecord } from "./access_log.ts";
import { ADMIN_PORT, METRICS_PORT, READINESS_PORT, serveAdmin } from "./admin.ts";
import { ConnectionManager } from "./connection_manager.ts";
import { runHandoffClient } from "./handoff_client.ts";
import { linuxPodNetwork, PodManager, type WorkloadCert } from "./inpod.ts";
import { readLocalConfig, stateOf } from "./local_config.ts";

const port = (flag: string, env: string, fallback: number, help: string) =>
  option({ flag, env, help, parser: parsers.int(0, 65535), default: fallback });

export const ZTUNNEL_OPTIONS = {
  localConfig: option({
    flag: "local-config",
    env: "SKIFF_LOCAL_CONFIG",
    help: "YAML of workloads, services and policies (until the control plane streams them)",
    parser: parsers.string("a file path"),
    required: true,
  }),
  caDir: option({
    flag: "ca-dir",
    env: "SKIFF_CA_DIR",
    help: "local CA directory (skiff ca init) that signs the pods' certificates",
    parser: parsers.string("a directory path"),
    required: true,
  }),
  trustDomain: option({
    flag: "trust-domain",
    env: "SKIFF_TRUST_DOMAIN",
    help: "the mesh trust domain",
    parser: { expected: "a trust domain such as cluster.local", parse: (s) => trustDomainProblem(s) ? undefined : s },
    default: DEFAULT_TRUST_DOMAIN,
  }),
  handoffSocket: option({
    flag: "handoff-socket",
    env: "SKIFF_HANDOFF_SOCKET",
    help: "the node agent's unix socket",
    parser: parsers.string("a socket path"),
    default: DEFAULT_HANDOFF_SOCKET,
  }),
  certTtl: option({
    flag: "cert-ttl",
    env: "SKIFF_CERT_TTL",
    help: "lifetime of workload certificates",
    parser: parsers.duration(),
    default: 24 * 3_600_000,
  }),
  adminPort: port("admin-port", "SKIFF_ADMIN_PORT", ADMIN_PORT, "admin (localhost): /config_dump, /logging"),
  metricsPort: port("metrics-port", "SKIFF_METRICS_PORT", METRICS_PORT, "Prometheus /metrics"),
  readinessPort: port("readiness-port", "SKIFF_READINESS_PORT", READINESS_PORT, "/healthz/ready"),
};

export const ZTUNNEL_USAGE = `Usage: skiff ztunnel --local-config FILE --ca-dir DIR [options]
${describeOptions(ZTUNNEL_OPTIONS)}`;

/** Runs `skiff ztunnel` until SIGTERM or SIGINT; returns the exit code. */
export async function runZtunnel(argv: string[]): Promise<number> {
  const { values, help } = readConfig("ztunnel", ZTUNNEL_OPTIONS, argv, Deno.env.toObject());
  if (help) {
    console.log(ZTUNNEL_USAGE);
    return 0;
  }
  const log = logger("ztunnel");
  log.info({ config: loggable(ZTUNNEL_OPTIONS, values) }, "config loaded");
  loadNetnsSupport();
  loadSocketSupport();
  // A bug in one connection's handling must not take down every pod's traffic: log it loudly and go on.
  const onBug = (event: Event & { reason?: unknown; error?: unknown }) => {
    event.preventDefault();
    log.error({ error: String(event.reason ?? event.error) }, "BUG: unhandled error in a connection; serving on");
  };
  globalThis.addEventListener("unhandledrejection", onBug);
  globalThis.addEventListener("error", onBug);

  let state: MeshState = stateOf(await readLocalConfig(values.localConfig));
  const ca = await CertificateAuthority.load(values.caDir);
  const controller = new AbortController();
  const stop = () => controller.abort();
  Deno.addSignalListener("SIGTERM", stop);
  Deno.addSignalListener("SIGINT", stop);

  const metrics = new TcpMetrics();
  const connections = new ConnectionManager();
  const access = logger("access");
  const certs = new RotationManager<WorkloadCert>({
    fetch: (id) => issueLocally(ca, id, values.certTtl),
    log,
  });
  const pods = new PodManager({
    proxy: {
      state: () => state,
      metrics,
      connections,
      log,
      access: (r) => logAccess(access, r),
      random: Math.random,
    },
    network: linuxPodNetwork,
    certs,
    trustDomain: values.trustDomain,
  });
  let ready = false;
  const admin = serveAdmin({
    state: () => state,
    certificates: () =>
      certs.identities().map((identity) => {
        const c = certs.current(identity);
        return c
          ? {
            identity,
            state: "available" as const,
            notBefore: new Date(c.notBefore).toISOString(),
            notAfter: new Date(c.notAfter).toISOString(),
          }
          : { identity, state: "pending" as const };
      }),
    metrics,
    ready: () => ready,
    config: { ...loggable(ZTUNNEL_OPTIONS, values), pods: pods.pods() },
    log,
  }, {
    adminPort: values.adminPort,
    metricsPort: values.metricsPort,
    readinessPort: values.readinessPort,
  }, controller.signal);

  const watching = watchConfig(values.localConfig, controller.signal, log, (next) => {
    state = next;
    const closed = connections.reauthorize(next);
    log.info({ closed }, "local config reloaded");
  });
  const handoff = runHandoffClient({
    socketPath: values.handoffSocket,
    handler: pods,
    signal: controller.signal,
    log,
    onReady: () => {
      ready = true;
      log.info("ready: the node agent's snapshot is served");
    },
  });

  await new Promise((resolve) => controller.signal.addEventListener("abort", resolve, { once: true }));
  log.info("shutting down");
  await pods.close();
  certs.close();
  await Promise.allSettled([handoff, watching, admin.finished]);
  Deno.removeSignalListener("SIGTERM", stop);
  Deno.removeSignalListener("SIGINT", stop);
  return 0;
}

async function issueLocally(ca: CertificateAuthority, identity: string, ttlMs: number): Promise<WorkloadCert> {
  const issued = await ca.issue(SpiffeId.parse(identity, "identity"), { ttlMs });
  const leaf = issued.chain[0];
  return {
    identity: SpiffeId.parse(identity),
    chainPem: certificatesToPem(issued.chain),
    keyPem: issued.keyPem,
    rootsPem: certificatesToPem(issued.roots),
    notBefore: leaf.notBefore.getTime(),
    notAfter: leaf.notAfter.getTime(),
  };
}

function logAccess(log: Logger, r: ConnectionRecord) {
  const fields = accessLogFields(r);
  if (r.error) log.error(fields, "connection complete");
  else log.info(fields, "connection complete");
}

/** Reloads the local config when its file changes; a bad file keeps the last good state. */
async function watchConfig(file: string, signal: AbortSignal, log: Logger, apply: (s: MeshState) => void) {
  const dir = file.includes("/") ? file.slice(0, file.lastIndexOf("/")) || "/" : ".";
  const watcher = Deno.watchFs(dir);
  signal.addEventListener("abort", () => watcher.close(), { once: true });
  let timer: ReturnType<typeof setTimeout> | undefined;
  const reload = async () => {
    try {
      apply(stateOf(await readLocalConfig(file)));
    } catch (error) {
      log.error({ file, error: (error as Error).message }, "local config rejected; the last good one stays in force");
    }
  };
  try {
    for await (const event of watcher) {
      if (!event.paths.some((p) => p.endsWith(file.slice(file.lastIndexOf("/") + 1)))) continue;
      clearTimeout(timer);
      timer = setTimeout(reload, 100); // editors write in several steps
    }
  } finally {
    clearTimeout(timer);
  }
}
