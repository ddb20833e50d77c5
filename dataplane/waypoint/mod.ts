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
import { logger } from "../../mesh/log.ts";
import { HBONE_PORT } from "../../mesh/workload.ts";
import net from "node:net";
import { HboneServer } from "../hbone/server.ts";
import { loadSocketSupport, transparentConnect, transparentListenerFd } from "../sockets_linux.ts";
import { loadNetnsSupport } from "../../mesh/netns_linux.ts";
import { serveAdmin } from "../proxy/admin.ts";
import { PROXY_OPTIONS } from "../proxy/options.ts";
import type { WorkloadCert } from "../proxy/identity.ts";
import type { WaypointContext } from "./exchange.ts";
import { Http1Upstream } from "./http1.ts";
import { Http2Upstream } from "./http2.ts";
import { DEFAULT_DRAIN_DEADLINE_MS, WaypointDrain } from "./drain.ts";
import { handleTunnel } from "./server.ts";
import { WaypointMetrics } from "./telemetry.ts";
import { Balancer, Tunnels } from "./upstream.ts";

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
};

export const WAYPOINT_USAGE =
  `Usage: skiff waypoint --name NAME --namespace NS --control https://HOST:15012 --token-file FILE [options]
${describeOptions(WAYPOINT_OPTIONS)}`;

/** How often a renewed certificate is put on the listener. */
const ROTATION_CHECK_MS = 30_000;

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
  const log = logger("waypoint");
  log.info({ config: loggable(WAYPOINT_OPTIONS, values) }, "config loaded");
  const onBug = (event: Event & { reason?: unknown; error?: unknown }) => {
    event.preventDefault();
    log.error({ error: String(event.reason ?? event.error) }, "BUG: unhandled error in a request; serving on");
  };
  globalThis.addEventListener("unhandledrejection", onBug);
  globalThis.addEventListener("error", onBug);

  const identity = SpiffeId.parse(
    `spiffe://${values.trustDomain}/ns/${namespace}/sa/${values.serviceAccount ?? name}`,
    "--service-account",
  );
  const connection = new ControlConnection(controlEndpoint(values.control!, values));
  const caConnection = values.caAddress === undefined
    ? connection
    : new ControlConnection(controlEndpoint(values.caAddress, values));
  const config = new ClientConfig(log);
  // `draining` (SIGTERM) starts the drain; `controller` ends everything: after the drain, or at once on a second
  // signal, or on the first one while nothing is served yet.
  const controller = new AbortController();
  const draining = new AbortController();
  let configReady = false;
  let listening = false;
  const stop = () => {
    if (draining.signal.aborted || !listening) controller.abort();
    draining.abort();
  };
  Deno.addSignalListener("SIGTERM", stop);
  Deno.addSignalListener("SIGINT", stop);

  const certs = new RotationManager<WorkloadCert>({
    fetch: (id) => requestCertificate(caConnection, SpiffeId.parse(id, "identity"), values.certTtl),
    log,
  });
  const metrics = new WaypointMetrics();
  config.registerMetrics(metrics.registry);
  const admin = serveAdmin({
    state: () => config.state,
    certificates: () => {
      const c = certs.current(identity.toString());
      return [
        c
          ? {
            identity: identity.toString(),
            state: "available" as const,
            notBefore: new Date(c.notBefore).toISOString(),
            notAfter: new Date(c.notAfter).toISOString(),
          }
          : { identity: identity.toString(), state: "pending" as const },
      ];
    },
    metrics,
    ready: () => configReady && listening && !draining.signal.aborted,
    config: loggable(WAYPOINT_OPTIONS, values),
    log,
  }, {
    adminPort: values.adminPort,
    metricsPort: values.metricsPort,
    readinessPort: values.readinessPort,
  }, controller.signal);

  const watching = runConfigClient({
    connection,
    config,
    log,
    signal: controller.signal,
    onChange: (change) => {
      ctx.balancer.invalidate();
      if (change.type === "snapshot" && !configReady) {
        configReady = true;
        log.info("config synced");
      }
    },
  });

  const hostname = `${name}.${namespace}.svc.cluster.local`;
  // Its own workload is an endpoint of its own service (found through the store's service index).
  const ownWorkload = () => config.state.workloads.endpointsOf(`${namespace}/${hostname}`)[0];
  if (values.netns !== undefined) {
    loadNetnsSupport();
    loadSocketSupport();
  }
  const netns = values.netns;
  const tunnels = new Tunnels({
    dial: netns === undefined ? undefined : async (ip, port) => {
      const fd = await transparentConnect({ netnsPath: netns, source: "0.0.0.0", target: { ip, port } });
      return new net.Socket({ fd, allowHalfOpen: true, readable: true, writable: true });
    },
    workload: ownWorkload,
    identity: identity.toString(),
    credentials: () => certs.get(identity.toString()),
    trustDomain: values.trustDomain,
    log,
  });
  const drain = new WaypointDrain();
  const ctx: WaypointContext = {
    self: { name, namespace, hostname, identity, network: values.network },
    state: () => config.state,
    balancer: new Balancer(),
    tunnels,
    metrics,
    log,
    access: logger("access"),
    random: Math.random,
    drain,
  };
  const upstreams = { http1: new Http1Upstream(tunnels), http2: new Http2Upstream(tunnels) };

  let server: HboneServer | undefined;
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
    server = new HboneServer({
      credentials: cert,
      trustDomain: values.trustDomain,
      h2: { maxConcurrentStreams: 100 },
      onRequest: (req) => {
        handleTunnel(req, ctx, upstreams).catch((error) => {
          log.error({ error: String(error) }, "BUG: tunnel handling failed");
          req.stream.destroy();
        });
      },
      onRejected: (remote, reason) => log.info({ remote, reason: reason.message }, "connection refused"),
    });
    const address = await server.listen(
      netns === undefined
        ? { host: values.listenAddress, port: values.hbonePort }
        : { fd: transparentListenerFd({ netnsPath: netns, address: values.listenAddress, port: values.hbonePort }) },
    );
    listening = true;
    log.info({ listener: "hbone", address: `${address.address}:${address.port}` }, "listener established");
    rotation = setInterval(() => {
      const current = certs.current(identity.toString());
      if (current && current !== cert) {
        // A renewal brings the trust bundle too: connections whose peer no longer chains to it are closed.
        if (current.rootsPem !== cert?.rootsPem) void tunnels.pool.applyTrustBundle(current.rootsPem);
        cert = current;
        void server!.setCredentials(current);
        log.info({ notAfter: new Date(current.notAfter).toISOString() }, "certificate rotated");
      }
    }, ROTATION_CHECK_MS);
    await new Promise((resolve) => draining.signal.addEventListener("abort", resolve, { once: true }));
    // No new connection from here; clients are told to go away, and what is in flight runs on.
    server.drain();
    drain.begin();
    log.info({ inflight: drain.inflight, deadlineMs: values.drainDeadline }, "shutting down: draining");
    const end = await drain.wait(values.drainDeadline, controller.signal);
    if (end === "drained") log.info("drained: no request left in flight");
    else log.info({ inflight: drain.inflight }, "drain ended with requests in flight; closing them");
    return 0;
  } catch (error) {
    if (controller.signal.aborted) return 0;
    log.error({ error: String(error) }, "waypoint failed");
    return 1;
  } finally {
    controller.abort();
    clearInterval(rotation);
    await server?.close();
    upstreams.http1.close();
    upstreams.http2.close();
    await tunnels.close();
    certs.close();
    connection.close();
    if (caConnection !== connection) caConnection.close();
    await Promise.allSettled([watching, admin.finished]);
    Deno.removeSignalListener("SIGTERM", stop);
    Deno.removeSignalListener("SIGINT", stop);
  }
}

function abortable<T>(p: Promise<T>, signal: AbortSignal): Promise<T> {
  return new Promise((resolve, reject) => {
    const onAbort = () => reject(new Error("aborted"));
    signal.addEventListener("abort", onAbort, { once: true });
    p.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
  });
}
