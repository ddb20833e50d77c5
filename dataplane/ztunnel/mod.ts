/**
 * `skiff ztunnel`: the node's L4 proxy. It takes pods from the node agent over the handoff socket, serves each one
 * from inside its network namespace (`inpod.ts`: capture on 15001/15006, HBONE on 15008; `dns/`: DNS on 15053),
 * routes and authorizes from the mesh state, and reports on 15000/15020/15021.
 *
 * With `--control URL --token-file F` the state comes from the control plane's config stream (kept while the
 * control plane is away; mesh/control_client.ts) and certificates from its CA service. Without it, the state
 * comes from `--local-config` (reloaded when the file changes; a bad edit is logged and the last good state
 * stays) and certificates from a local CA directory (`--ca-dir`, the `skiff ca init` layout). Either way
 * certificates go through the rotation manager, which renews each at half-life.
 *
 * SIGTERM drains (stop accepting, keep open connections until they end or `--drain-deadline`); SIGHUP starts a
 * successor that takes the pods over, then drains (`drain.ts`). The pods' listeners are SO_REUSEPORT and the admin
 * ones are taken over once released, so a second ztunnel starts beside a running one.
 *
 * With `--workers N` (default: the machine's cores) N − 1 worker threads serve every pod beside this one, from
 * their own SO_REUSEPORT listeners, fed config, certificates and pods from here (threads.ts, worker.ts).
 */

import { CertificateAuthority } from "../../certs/ca.ts";
import { RotationManager } from "../../certs/rotation_manager.ts";
import { hostname } from "node:os";
import { requestCertificate } from "../../certs/ca_client.ts";
import { describeOptions, loggable, option, parsers, readConfig, UsageError, type Values } from "../../mesh/config.ts";
import {
  ClientConfig,
  CONTROL_CLIENT_OPTIONS,
  ControlConnection,
  controlEndpoint,
  runConfigClient,
  tokenSubject,
} from "../../mesh/control_client.ts";
import { SpiffeId } from "../../mesh/identity.ts";
import { logFromThreads, type Logger, logger } from "../../mesh/log.ts";
import { TcpMetrics } from "../../mesh/metrics.ts";
import { loadNetnsSupport } from "../../mesh/netns_linux.ts";
import { DEFAULT_HANDOFF_SOCKET } from "../../mesh/protocol/handoff.ts";
import type { MeshState } from "../../mesh/store.ts";
import { loadSocketSupport } from "../sockets_linux.ts";
import { writeAccessLog } from "./access_log.ts";
import { serveAdmin } from "../proxy/admin.ts";
import { certificateSummaries, installBugHandler, onSignals } from "../proxy/bootstrap.ts";
import { PROXY_OPTIONS } from "../proxy/options.ts";
import { ConnectionManager } from "./connection_manager.ts";
import { DialGuard } from "../proxy/dial_guard.ts";
import { DEFAULT_DRAIN_DEADLINE_MS, drainConnections, startSuccessor, takeOverFromPredecessor } from "./drain.ts";
import { runHandoffClient } from "./handoff_client.ts";
import { DNS_OPTIONS, DnsProxy } from "./dns/mod.ts";
import { issueLocally, type WorkloadCert } from "../proxy/identity.ts";
import { linuxPodNetwork, PodManager } from "./inpod.ts";
import { readLocalConfigText, stateOf } from "./local_config.ts";
import { ZtunnelThreads } from "./threads.ts";
import { nodeIdentities, prefetchPlan } from "./prefetch.ts";

export const ZTUNNEL_OPTIONS = {
  localConfig: option({
    flag: "local-config",
    env: "SKIFF_LOCAL_CONFIG",
    help: "YAML of workloads, services and policies (without a control plane)",
    parser: parsers.string("a file path"),
  }),
  caDir: option({
    flag: "ca-dir",
    env: "SKIFF_CA_DIR",
    help: "local CA directory (skiff ca init) that signs the pods' certificates (without a control plane)",
    parser: parsers.string("a directory path"),
  }),
  ...CONTROL_CLIENT_OPTIONS,
  caAddress: PROXY_OPTIONS.caAddress,
  nodeName: option({
    flag: "node-name",
    env: "NODE_NAME",
    help: "this node's name in the mesh (default: the node token's, else the host name)",
    parser: parsers.string("a node name"),
  }),
  trustDomain: PROXY_OPTIONS.trustDomain,
  handoffSocket: option({
    flag: "handoff-socket",
    env: "SKIFF_HANDOFF_SOCKET",
    help: "the node agent's unix socket",
    parser: parsers.string("a socket path"),
    default: DEFAULT_HANDOFF_SOCKET,
  }),
  certTtl: PROXY_OPTIONS.certTtl,
  drainDeadline: option({
    flag: "drain-deadline",
    env: "CONNECTION_TERMINATION_DEADLINE",
    help: "on SIGTERM or once a successor took the pods: how long open connections may run on before they are closed",
    parser: parsers.duration(),
    default: DEFAULT_DRAIN_DEADLINE_MS,
  }),
  adminPort: PROXY_OPTIONS.adminPort,
  metricsPort: PROXY_OPTIONS.metricsPort,
  readinessPort: PROXY_OPTIONS.readinessPort,
  workers: PROXY_OPTIONS.workers,
  ...DNS_OPTIONS,
};

export const ZTUNNEL_USAGE = `Usage: skiff ztunnel --control https://HOST:15012 --token-file FILE [options]
       skiff ztunnel --local-config FILE --ca-dir DIR [options]
${describeOptions(ZTUNNEL_OPTIONS)}`;

/** Runs `skiff ztunnel` until SIGTERM or SIGINT and its drain; SIGHUP starts its successor. Returns the exit code. */
export async function runZtunnel(argv: string[]): Promise<number> {
  const { values, help } = readConfig("ztunnel", ZTUNNEL_OPTIONS, argv, Deno.env.toObject());
  if (help) {
    console.log(ZTUNNEL_USAGE);
    return 0;
  }
  checkSourceFlags(values);
  // Several threads write to stderr: each line whole, and each says which thread wrote it (threads.ts).
  if (values.workers > 1) logFromThreads({ worker: 0 });
  const log = logger("ztunnel");
  log.info({ config: loggable(ZTUNNEL_OPTIONS, values) }, "config loaded");
  loadNetnsSupport();
  loadSocketSupport();
  // A bug in one connection's handling must not take down every pod's traffic: log it loudly and go on.
  const removeBugHandler = installBugHandler(log, "a connection");

  const source = await configSource(values, log);
  let state: MeshState = source.initial;
  // `draining` stops accepting (and the admin listeners, so the successor answers them); `cut` ends a drain early
  // (a second SIGTERM or SIGINT); `controller` ends the rest once the drain is over.
  const controller = new AbortController();
  const draining = new AbortController();
  const cut = new AbortController();
  let signalled = false;
  const stop = () => {
    if (signalled) cut.abort();
    signalled = true;
    draining.abort();
  };
  let successor: number | undefined;
  const reload = () => {
    if (successor !== undefined || draining.signal.aborted) return;
    try {
      const started = startSuccessor(log);
      successor = started.pid;
      started.exited.then((code) => {
        if (!draining.signal.aborted) log.error({ pid: started.pid, code }, "reload failed: the successor exited");
        successor = undefined;
      });
    } catch (error) {
      log.error({ error: (error as Error).message }, "reload failed: could not start the successor; serving on");
    }
  };
  const removeSignals = onSignals(stop, reload);

  const metrics = new TcpMetrics();
  if (source.kind === "control") source.config.registerMetrics(metrics.registry);
  const connections = new ConnectionManager();
  const access = logger("access");
  const certs = new RotationManager<WorkloadCert>({
    fetch: source.issue,
    log,
    onIssued: (identity, cert) => threads?.issued(identity, cert),
  });
  const pods = new PodManager({
    proxy: {
      state: () => state,
      metrics,
      connections,
      dials: new DialGuard(values.workers),
      log,
      access: (r) => writeAccessLog(access, r),
      random: Math.random,
    },
    network: linuxPodNetwork,
    certs,
    trustDomain: values.trustDomain,
    retain: (id) => prefetched.has(id),
    dns: new DnsProxy({ state: () => state, log, domain: values.clusterDomain, resolvConf: values.dnsResolvConf }),
  });
  // With --workers N, N − 1 more threads serve every pod beside this one (threads.ts, worker.ts).
  const threads: ZtunnelThreads | undefined = values.workers > 1
    ? new ZtunnelThreads({
      count: values.workers - 1,
      log,
      trustDomain: values.trustDomain,
      certs,
      local: source.kind === "local" ? { file: source.file, text: source.text } : undefined,
      config: source.kind === "control" ? source.config : undefined,
    })
    : undefined;
  const handler = threads ? threads.handler(pods) : pods;
  // Identities of this node's HBONE workloads are fetched as soon as the config names them (prefetch.ts).
  const prefetched = new Set<string>();
  const nodeName = values.nodeName ?? (source.kind === "control" ? await tokenSubject(values.tokenFile) : undefined) ??
    hostname();
  const prefetchForNode = () => {
    const wanted = nodeIdentities(state.workloads.onNode(nodeName), values.trustDomain);
    const plan = prefetchPlan(wanted, prefetched, (id) => pods.usesIdentity(id));
    for (const id of plan.prefetch) {
      prefetched.add(id);
      certs.prefetch(id);
    }
    for (const id of plan.release) prefetched.delete(id);
    for (const id of plan.forget) certs.forget(id);
    if (plan.prefetch.length + plan.forget.length > 0) {
      log.info({ node: nodeName, prefetch: plan.prefetch, forget: plan.forget }, "node's certificates updated");
    }
  };
  if (source.kind === "local") prefetchForNode();
  let ready = false;
  let handoffReady = false;
  let configReady = source.kind === "local";
  const admin = serveAdmin({
    state: () => state,
    certificates: () => certificateSummaries(certs, certs.identities()),
    metrics: threads ? threads.metrics(metrics.registry) : metrics,
    ready: () => ready,
    // A getter: read at each /config_dump (a value here was the pods of the moment ztunnel started, none).
    config: {
      ...loggable(ZTUNNEL_OPTIONS, values),
      get pods() {
        return pods.pods();
      },
    },
    log,
  }, {
    adminPort: values.adminPort,
    metricsPort: values.metricsPort,
    readinessPort: values.readinessPort,
  }, draining.signal);

  const markReady = () => {
    if (ready || !handoffReady || !configReady) return;
    ready = true;
    log.info({ pid: Deno.pid }, "ready: config held and the node agent's snapshot served");
    takeOverFromPredecessor(log);
  };
  const watching = source.kind === "local"
    ? watchConfig(source.file, controller.signal, log, (next, text) => {
      state = next;
      threads?.localApplied(source.file, text);
      prefetchForNode();
      const closed = connections.reauthorize(next);
      // "Reloaded" means in force on every thread, and counts what every thread closed for it.
      if (threads === undefined) log.info({ closed }, "local config reloaded");
      else {
        void threads.applied().then((others) => log.info({ closed: closed + others }, "local config reloaded"));
      }
    })
    : runConfigClient({
      connection: source.connection,
      config: source.config,
      log,
      signal: controller.signal,
      onMessage: (message) => threads?.configApplied(message),
      onChange: (change) => {
        const closed = connections.reauthorize(state);
        prefetchForNode();
        if (change.type === "snapshot") {
          configReady = true;
          markReady();
        }
        log.debug({ ...change, closed }, "config applied");
      },
    });
  const handoff = runHandoffClient({
    socketPath: values.handoffSocket,
    handler: {
      add: (uid, info, netns) => handler.add(uid, info, netns),
      del: (uid) => handler.del(uid),
      reconcile: (keep) => handler.reconcile(keep),
      release: async (uid) => {
        await handler.release(uid);
        // A newer ztunnel took every pod: nothing is left to serve here, so drain and exit as on SIGTERM (the ack
        // goes out first; closing the handoff connection at once would lose it).
        if (pods.pods().length === 0 && !draining.signal.aborted) {
          log.info("every pod was taken by a newer ztunnel; draining");
          setTimeout(() => draining.abort(), 100);
        }
      },
    },
    signal: draining.signal,
    log,
    onReady: () => {
      handoffReady = true;
      markReady();
    },
  });

  await new Promise((resolve) => draining.signal.addEventListener("abort", resolve, { once: true }));
  await Promise.all([pods.releaseAll(), threads?.releaseAll()]);
  const deadline = values.drainDeadline;
  // Every thread's connections: this one's and each worker's, asked afresh at each step.
  const open = async () => pods.openConnections() + (threads ? await threads.openConnections() : 0);
  log.info({ open: await open(), deadlineMs: deadline }, "shutting down: not accepting; draining");
  if (await drainConnections(open, deadline, cut.signal) === "deadline") {
    log.info({ open: await open() }, "drain deadline reached; closing what is left");
  } else {
    log.info("drained: no connection left open");
  }
  controller.abort();
  await Promise.all([pods.close(), threads?.close()]);
  certs.close();
  await Promise.allSettled([handoff, watching, admin.finished]);
  removeSignals();
  removeBugHandler();
  return 0;
}

type ZtunnelValues = Values<typeof ZTUNNEL_OPTIONS>;

/** Where config and certificates come from: the control plane, or a local file and CA directory. */
type ConfigSource =
  & { initial: MeshState; issue: (identity: string) => Promise<WorkloadCert> }
  & ({ kind: "local"; file: string; text: string } | {
    kind: "control";
    connection: ControlConnection;
    config: ClientConfig;
  });

/** The flags of exactly one config source are given. */
function checkSourceFlags(values: ZtunnelValues): void {
  if (values.control !== undefined && (values.localConfig !== undefined || values.caDir !== undefined)) {
    throw new UsageError("ztunnel: --control replaces --local-config and --ca-dir; give one or the other, not both");
  }
  if (values.control === undefined && (values.localConfig === undefined || values.caDir === undefined)) {
    throw new UsageError(
      "ztunnel: give --control URL (SKIFF_CONTROL) with --token-file (SKIFF_TOKEN_FILE), " +
        "or --local-config FILE (SKIFF_LOCAL_CONFIG) with --ca-dir DIR (SKIFF_CA_DIR)",
    );
  }
}

async function configSource(values: ZtunnelValues, log: Logger): Promise<ConfigSource> {
  if (values.control !== undefined) {
    const connection = new ControlConnection(controlEndpoint(values.control, values));
    const caConnection = values.caAddress === undefined
      ? connection
      : new ControlConnection(controlEndpoint(values.caAddress, values));
    const config = new ClientConfig(log);
    return {
      kind: "control",
      connection,
      config,
      initial: config.state,
      issue: (id) => requestCertificate(caConnection, SpiffeId.parse(id, "identity"), values.certTtl),
    };
  }
  const ca = await CertificateAuthority.load(values.caDir!);
  const file = values.localConfig!;
  const { text, config } = await readLocalConfigText(file);
  return {
    kind: "local",
    file,
    text,
    initial: stateOf(config),
    issue: (id) => issueLocally(ca, id, values.certTtl),
  };
}

/** Reloads the local config when its file changes; a bad file keeps the last good state. */
async function watchConfig(
  file: string,
  signal: AbortSignal,
  log: Logger,
  apply: (s: MeshState, text: string) => void,
) {
  const dir = file.includes("/") ? file.slice(0, file.lastIndexOf("/")) || "/" : ".";
  const watcher = Deno.watchFs(dir);
  signal.addEventListener("abort", () => watcher.close(), { once: true });
  let timer: ReturnType<typeof setTimeout> | undefined;
  const reload = async () => {
    try {
      const { text, config } = await readLocalConfigText(file);
      apply(stateOf(config), text);
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
