/**
 * `skiff waypoint --name NAME --namespace NS`: the L7 proxy of the services and workloads bound to the
 * waypoint that a Gateway of class `istio-waypoint` declares. It is a workload of the mesh with its own
 * identity (`spiffe://TD/ns/NS/sa/SA`, the service account defaulting to the Gateway's name, as istiod's
 * generated Deployment has it), which it obtains from the CA service with its node's token, so the workload
 * that runs it (a pod or a WorkloadEntry labelled `gateway.networking.k8s.io/gateway-name: NAME`) must be
 * declared on that node. It takes its config (workloads, services, HTTPRoutes, L7 policies) from the control
 * plane's stream, keeps it while the control plane is away, and serves HBONE on 15008 (`server.ts`), with
 * Prometheus metrics on 15020 and readiness on 15021 as ztunnel does. SIGTERM drains (`drain.ts`): no new
 * connection, GOAWAY and `Connection: close` to clients, the requests in flight served to their end or until
 * `--drain-deadline`; a second SIGTERM or SIGINT ends the drain at once.
 *
 * It serves on `--workers` threads (default: the machine's cores): this one, which also keeps the config stream,
 * the certificate, the admin ports and the signals, and N − 1 worker threads (`worker.ts`), each with its own
 * SO_REUSEPORT listener on the same port (`thread.ts`), its own copy of the config fed from this thread's stream,
 * and the certificate pushed from this thread's rotation manager. The drain covers every thread.
 *
 * @module
 */

import { requestCertificate } from "../../certs/ca_client.ts";
import { RotationManager } from "../../certs/rotation_manager.ts";
import { describeOptions, loggable, option, parsers, readConfig, UsageError } from "../../mesh/config.ts";
import {
  ClientConfig,
  CONTROL_CLIENT_OPTIONS,
  ControlConnection,
  controlEndpoint,
  runConfigClient,
} from "../../mesh/control_client.ts";
import { sleep } from "../../mesh/abort.ts";
import { SpiffeId } from "../../mesh/identity.ts";
import { logFromThreads, logger } from "../../mesh/log.ts";
import { HBONE_PORT } from "../../mesh/workload.ts";
import { loadSocketSupport } from "../sockets_linux.ts";
import { loadNetnsSupport } from "../../mesh/netns_linux.ts";
import { serveAdmin } from "../proxy/admin.ts";
import {
  certificateSummaries,
  installBugHandler,
  type MetricsJson,
  onSignals,
  PooledMetrics,
} from "../proxy/bootstrap.ts";
import { PROXY_OPTIONS } from "../proxy/options.ts";
import type { WorkloadCert } from "../proxy/identity.ts";
import { CertFeed } from "../proxy/worker_certs.ts";
import { ConfigMirror } from "../proxy/worker_config.ts";
import { WorkerPool } from "../proxy/workers.ts";
import { DEFAULT_DRAIN_DEADLINE_MS } from "./drain.ts";
import { WaypointMetrics } from "./telemetry.ts";
import { WaypointThread } from "./thread.ts";
import type { WaypointWorkerAsk, WaypointWorkerInit, WaypointWorkerMessage, WaypointWorkerStatus } from "./worker.ts";

export const WAYPOINT_OPTIONS = {
  name: option({
    flag: "name",
    env: "SKIFF_WAYPOINT_NAME",
    help: "the waypoint's Gateway name (class istio-waypoint)",
    parser: parsers.string("a Gateway name"),
  }),
  namespace: option({
    flag: "namespace",
    env: "SKIFF_WAYPOINT_NAMESPACE",
    help: "the Gateway's namespace",
    parser: parsers.string("a namespace"),
  }),
  serviceAccount: option({
    flag: "service-account",
    env: "SKIFF_WAYPOINT_SERVICE_ACCOUNT",
    help: "the service account of the waypoint's identity (default: the Gateway name)",
    parser: parsers.string("a service account name"),
  }),
  ...CONTROL_CLIENT_OPTIONS,
  caAddress: PROXY_OPTIONS.caAddress,
  trustDomain: PROXY_OPTIONS.trustDomain,
  network: option({
    flag: "network",
    env: "SKIFF_NETWORK",
    help: "the network of the waypoint's workload",
    parser: { expected: "a network name", parse: (raw) => raw },
    default: "",
  }),
  listenAddress: option({
    flag: "listen-address",
    env: "SKIFF_LISTEN_ADDRESS",
    help: "address of the HBONE listener",
    parser: parsers.string("an IP address"),
    default: "0.0.0.0",
  }),
  netns: option({
    flag: "netns",
    env: "SKIFF_WAYPOINT_NETNS",
    help: "serve inside this network namespace (a pod's, /var/run/netns/NAME) while the process stays in the " +
      "node's, where the control plane is reached",
    parser: parsers.string("a network namespace path"),
  }),
  hbonePort: option({
    flag: "hbone-port",
    env: "SKIFF_HBONE_PORT",
    help: "HBONE listener",
    parser: parsers.int(0, 65535),
    default: HBONE_PORT,
  }),
  drainDeadline: option({
    flag: "drain-deadline",
    env: "SKIFF_DRAIN_DEADLINE",
    help: "on SIGTERM: how long requests in flight may run on before the waypoint exits",
    parser: parsers.duration(),
    default: DEFAULT_DRAIN_DEADLINE_MS,
  }),
  // As ztunnel's: the same flags, variables and defaults.
  certTtl: PROXY_OPTIONS.certTtl,
  adminPort: PROXY_OPTIONS.adminPort,
  metricsPort: PROXY_OPTIONS.metricsPort,
  readinessPort: PROXY_OPTIONS.readinessPort,
  workers: PROXY_OPTIONS.workers,
};

export const WAYPOINT_USAGE =
  `Usage: skiff waypoint --name NAME --namespace NS --control https://HOST:15012 --token-file FILE [options]
${describeOptions(WAYPOINT_OPTIONS)}`;

/** How often a renewed certificate is put on the listener. */
const ROTATION_CHECK_MS = 30_000;
/** How often the drain asks the worker threads what they still have in flight. */
const WORKER_DRAIN_POLL_MS = 100;

/** Runs `skiff waypoint` until SIGTERM or SIGINT; returns the exit code. */
export async function runWaypoint(argv: string[]): Promise<number> {
  const { values, help } = readConfig("waypoint", WAYPOINT_OPTIONS, argv, Deno.env.toObject());
  if (help) {
    console.log(WAYPOINT_USAGE);
    return 0;
  }
  for (const [flag, v] of [["name", values.name], ["namespace", values.namespace], ["control", values.control]]) {
    if (v === undefined) {
      throw new UsageError(`waypoint: --${flag} is required (${WAYPOINT_OPTIONS[flag as "name"].env})`);
    }
  }
  const name = values.name!;
  const namespace = values.namespace!;
  if (values.workers > 1) logFromThreads({ worker: 0 });
  const log = logger("waypoint");
  log.info({ config: loggable(WAYPOINT_OPTIONS, values) }, "config loaded");
  const removeBugHandler = installBugHandler(log, "a request");

  const identity = SpiffeId.parse(
    `spiffe://${values.trustDomain}/ns/${namespace}/sa/${values.serviceAccount ?? name}`,
    "--service-account",
  );
  const self = {
    name,
    namespace,
    hostname: `${name}.${namespace}.svc.cluster.local`,
    identity,
    network: values.network,
  };
  const connection = new ControlConnection(controlEndpoint(values.control!, values));
  const caConnection = values.caAddress === undefined
    ? connection
    : new ControlConnection(controlEndpoint(values.caAddress, values));
  const config = new ClientConfig(log);
  // `draining` (SIGTERM) starts the drain; `controller` ends everything: after the drain, or at once on a second
  // signal, or on the first one while nothing is served yet.
  const controller = new AbortController();
  const draining = new AbortController();
  const drainBegins = new Promise((resolve) => draining.signal.addEventListener("abort", resolve, { once: true }));
  let configReady = false;
  let synced: () => void = () => {};
  const configSynced = new Promise<void>((resolve) => synced = resolve);
  let listening = false;
  const removeSignals = onSignals(() => {
    if (draining.signal.aborted || !listening) controller.abort();
    draining.abort();
  });

  // The worker threads (--workers N > 1): N − 1 of them beside this one, started once this thread serves with a
  // synced config; each gets the config and the certificate from here (worker.ts).
  let pool: WorkerPool | undefined;
  const certs = new RotationManager<WorkloadCert>({
    fetch: (id) => requestCertificate(caConnection, SpiffeId.parse(id, "identity"), values.certTtl),
    log,
    onIssued: (id, cert) => feed.issued(id, cert),
  });
  const feed = new CertFeed(certs, () => pool);
  // What a worker starts from, kept only when there are workers: it holds the whole mesh as text. Refused updates
  // are kept apart from the versions held (worker_config.ts).
  const mirror = values.workers > 1 ? new ConfigMirror(config) : undefined;
  const metrics = new WaypointMetrics();
  config.registerMetrics(metrics.registry);
  const admin = serveAdmin({
    state: () => config.state,
    certificates: () => certificateSummaries(certs, [identity.toString()]),
    metrics: new PooledMetrics(
      metrics.registry,
      async () => pool ? await pool.askAll({ t: "metrics" } satisfies WaypointWorkerAsk) as MetricsJson[] : [],
    ),
    ready: () => configReady && listening && !draining.signal.aborted,
    config: loggable(WAYPOINT_OPTIONS, values),
    log,
  }, {
    adminPort: values.adminPort,
    metricsPort: values.metricsPort,
    readinessPort: values.readinessPort,
  }, controller.signal);

  loadSocketSupport();
  if (values.netns !== undefined) loadNetnsSupport();
  const thread = new WaypointThread({
    self,
    config,
    certs,
    trustDomain: values.trustDomain,
    netns: values.netns,
    listenAddress: values.listenAddress,
    hbonePort: values.hbonePort,
    metrics,
    log,
    access: logger("access"),
  });

  const watching = runConfigClient({
    connection,
    config,
    log,
    signal: controller.signal,
    onMessage: (message) => {
      // Every thread decides from the same config: each message applied here is applied there too.
      mirror?.observe(message);
      pool?.broadcast({ t: "config", message } satisfies WaypointWorkerMessage);
    },
    onChange: (change) => {
      thread.configChanged();
      if (change.type === "snapshot" && !configReady) {
        configReady = true;
        synced();
        log.info("config synced");
      }
    },
  });
  let hbonePort = values.hbonePort;
  const workerInit = (): WaypointWorkerInit => ({
    self: { ...self, identity: identity.toString() },
    trustDomain: values.trustDomain,
    netns: values.netns,
    listenAddress: values.listenAddress,
    hbonePort, // the port this thread listens on: --hbone-port=0 picks one, and every thread must share it
    drainDeadlineMs: values.drainDeadline,
    config: mirror!.snapshot(), // only called by the pool, which exists only with workers
    certs: feed.held([identity.toString()]),
    draining: draining.signal.aborted,
  });

  let rotation: ReturnType<typeof setInterval> | undefined;
  try {
    certs.prefetch(identity.toString());
    let cert: WorkloadCert | undefined;
    for (let wait = 500; cert === undefined; wait = Math.min(wait * 2, 15_000)) {
      try {
        cert = await abortable(certs.get(identity.toString()), controller.signal);
      } catch (error) {
        if (controller.signal.aborted) throw error;
        log.error(
          { identity: identity.toString(), error: String(error), retryInMs: wait },
          "no certificate for the waypoint's identity yet (is its workload declared on this node?)",
        );
        await sleep(wait, controller.signal);
      }
    }
    log.info({ identity: identity.toString() }, "certificate obtained");
    hbonePort = (await thread.listen(cert)).port;
    listening = true;
    rotation = setInterval(() => thread.rotate(), ROTATION_CHECK_MS);
    if (values.workers > 1) {
      // Fail closed: a worker serves only with the config this thread has synced, never an empty one.
      await Promise.race([configSynced, drainBegins]);
      if (!draining.signal.aborted) {
        pool = new WorkerPool({
          module: new URL("./worker.ts", import.meta.url),
          count: values.workers - 1,
          role: "waypoint",
          log,
          init: workerInit,
          onMessage: (index, body) => feed.onWorkerMessage(index, body),
        });
        log.info({ workers: pool.size }, "worker threads started");
      }
    }
    await drainBegins;
    // No new connection from here, on any thread; clients are told to go away, and what is in flight runs on.
    thread.beginDrain();
    pool?.broadcast({ t: "drain" } satisfies WaypointWorkerMessage);
    const inflight = thread.drain.inflight + sum(await workerDrains(pool));
    log.info({ inflight, deadlineMs: values.drainDeadline }, "shutting down: draining");
    const deadline = Date.now() + values.drainDeadline;
    const [own, others] = await Promise.all([
      thread.drain.wait(values.drainDeadline, controller.signal),
      workersDrained(pool, deadline, controller.signal),
    ]);
    if (own === "drained" && others === "drained") log.info("drained: no request left in flight");
    else {
      const left = thread.drain.inflight + sum(await workerDrains(pool));
      log.info({ inflight: left }, "drain ended with requests in flight; closing them");
    }
    return 0;
  } catch (error) {
    if (controller.signal.aborted) return 0;
    log.error({ error: String(error) }, "waypoint failed");
    return 1;
  } finally {
    controller.abort();
    clearInterval(rotation);
    await pool?.end();
    await thread.close();
    certs.close();
    connection.close();
    if (caConnection !== connection) caConnection.close();
    await Promise.allSettled([watching, admin.finished]);
    removeSignals();
    removeBugHandler();
  }
}

/** Each running worker's drain (a worker that died meanwhile holds nothing). */
async function workerDrains(pool: WorkerPool | undefined): Promise<WaypointWorkerStatus[]> {
  if (!pool) return [];
  return await pool.askAll({ t: "drain-state" } satisfies WaypointWorkerAsk) as WaypointWorkerStatus[];
}

function sum(drains: WaypointWorkerStatus[]): number {
  return drains.reduce((n, d) => n + d.inflight, 0);
}

/** Resolves once every worker has drained, or at `deadline`, or when `cut` aborts. */
async function workersDrained(
  pool: WorkerPool | undefined,
  deadline: number,
  cut: AbortSignal,
): Promise<"drained" | "deadline"> {
  while (pool) {
    if ((await workerDrains(pool)).every((d) => d.drained)) return "drained";
    if (Date.now() >= deadline || cut.aborted) return "deadline";
    await sleep(Math.min(WORKER_DRAIN_POLL_MS, Math.max(0, deadline - Date.now())), cut).catch(() => {});
  }
  return "drained";
}

function abortable<T>(p: Promise<T>, signal: AbortSignal): Promise<T> {
  return new Promise((resolve, reject) => {
    const onAbort = () => reject(new Error("aborted"));
    signal.addEventListener("abort", onAbort, { once: true });
    p.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
  });
}
