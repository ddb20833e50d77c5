/**
 * A ztunnel worker thread (threads.ts, dataplane/proxy/workers.ts): the data path of ztunnel on one more core. It
 * serves every pod the main thread serves, from its own SO_REUSEPORT listeners in each pod's namespace, with its
 * own PodManager, connection manager, dial guard and metrics; it holds its own copy of the config, applied from
 * the main thread's messages, and the certificates the main thread's rotation manager pushes. It never talks to
 * the control plane, the CA or the node agent, and serves no DNS (the main thread does).
 *
 * Its init takes the state first, then the certificates held, then the pods, so it never accepts a connection
 * without the config the main thread has: a worker without config would allow what a DENY refuses elsewhere. A
 * config message sent while it still adds pods (after a restart) is applied at once (`messagesDuringInit`): each
 * pod serves as soon as it listens, and must not decide on the init's config until the last pod listens.
 *
 * @module
 */

import { ClientConfig } from "../../mesh/control_client.ts";
import { applyMirrored } from "../proxy/worker_config.ts";
import { logFromThreads, logger } from "../../mesh/log.ts";
import { TcpMetrics } from "../../mesh/metrics.ts";
import { loadNetnsSupport } from "../../mesh/netns_linux.ts";
import type { MeshState } from "../../mesh/store.ts";
import { loadSocketSupport } from "../sockets_linux.ts";
import { installBugHandler } from "../proxy/bootstrap.ts";
import { DialGuard } from "../proxy/dial_guard.ts";
import { type CertMessage, PushedCerts } from "../proxy/worker_certs.ts";
import { postToMain, serveAsWorker } from "../proxy/workers.ts";
import { writeAccessLog } from "./access_log.ts";
import { ConnectionManager } from "./connection_manager.ts";
import { linuxPodNetwork, PodManager } from "./inpod.ts";
import { parseLocalConfig, stateOf } from "./local_config.ts";
import type { WorkerAsk, WorkerCall, WorkerInit, WorkerMessage, WorkerStatus } from "./threads.ts";

/** The worker's state source: a config stream copy, or the local config's state. */
let config: ClientConfig | undefined;
let local: MeshState | undefined;
/** Connections the last config change closed on this thread. */
let closedByLastChange = 0;
let pods: PodManager | undefined;
let metrics: TcpMetrics | undefined;
const connections = new ConnectionManager();
let certs: PushedCerts | undefined;

const state = (): MeshState => config?.state ?? local!;

serveAsWorker({
  messagesDuringInit: true,
  async init(index, body) {
    const init = body as WorkerInit;
    logFromThreads({ worker: index });
    const log = logger("ztunnel");
    installBugHandler(log, "a connection");
    loadNetnsSupport();
    loadSocketSupport();
    // 1. state
    if (init.state.kind === "control") {
      // The main thread logs each refused resource (and counts it in /metrics) once; its workers refuse the same
      // resources the same way without saying so again.
      config = new ClientConfig(log.child({}, { level: "silent" }));
      applyMirrored(config, init.state.snapshot);
    } else {
      local = stateOf(parseLocalConfig(init.state.text, init.state.file));
    }
    // 2. certificates
    certs = new PushedCerts((m) => postToMain(m));
    for (const cert of init.certs) certs.accept({ t: "cert", identity: cert.identity, cert });
    // 3. pods
    metrics = new TcpMetrics();
    const access = logger("access");
    pods = new PodManager({
      proxy: {
        state,
        metrics,
        connections,
        dials: new DialGuard(init.threads),
        log,
        access: (r) => writeAccessLog(access, r),
        random: Math.random,
      },
      network: linuxPodNetwork,
      certs,
      trustDomain: init.trustDomain,
    });
    for (const p of init.pods) {
      try {
        await pods.add(p.uid, p.info, p.netns);
      } catch (error) {
        // The other threads serve the pod; this one will get it again on its next add.
        log.error({ uid: p.uid, error: (error as Error).message }, "worker could not serve a pod at start");
      }
    }
    log.info({ pods: init.pods.length, certificates: init.certs.length }, "worker serving");
  },

  message(body) {
    const m = body as WorkerMessage;
    if (m.t === "config") {
      config?.apply(m.message);
      closedByLastChange = connections.reauthorize(state());
    } else if (m.t === "local") {
      local = stateOf(parseLocalConfig(m.text, m.file));
      closedByLastChange = connections.reauthorize(local);
    } else certs?.accept(m as CertMessage);
  },

  ask(body) {
    const q = body as WorkerAsk;
    if (q.q === "metrics") return metrics!.registry.getMetricsAsJSON();
    // Asked after a change was posted: answered once this thread has applied it (messages are handled in order).
    if (q.q === "applied") return closedByLastChange;
    return pods!.openConnections();
  },

  async call(body) {
    const c = body as WorkerCall;
    const p = pods!;
    switch (c.op) {
      case "add":
        return await p.add(c.pod.uid, c.pod.info, c.pod.netns);
      case "del":
        return await p.del(c.uid);
      case "release":
        return await p.release(c.uid);
      case "reconcile":
        return await p.reconcile(new Set(c.keep));
      case "releaseAll":
        return await p.releaseAll();
      case "close":
        return await p.close();
    }
  },

  status: (): WorkerStatus => ({ open: pods?.openConnections() ?? 0 }),
});
