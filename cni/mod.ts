/**
 * In-pod redirection: the CNI plugin (`skiff` run with CNI_COMMAND set; plugin.ts) and the node agent,
 * `skiff cni-agent`, wired here: the plugin's API on `/var/run/skiff/cni.sock` (agent_server.ts), the handoff to
 * ztunnel on `/var/run/skiff/ztunnel.sock` (handoff_server.ts), the node's view from the control plane
 * (mesh/protocol/node_pods.ts) and the reports back (reporter.ts), the pods' rules (redirect_linux.ts) and the
 * node's probe rules (node_rules.ts), the saved state (state.ts), and a reconcile every
 * {@link RECONCILE_INTERVAL_MS} that forgets pods whose network namespace is gone. The node's meshed systemd units
 * (host_units.ts, host_rules_linux.ts) follow the same view, with their cgroups looked at every
 * {@link UNIT_WATCH_INTERVAL_MS} (`--unit-watch-interval`) and at each start of a unit by its gate (unit_gate.ts).
 *
 * @module
 */

import { join } from "node:path";
import { describeOptions, loggable, option, parsers, readConfig, UsageError, type Values } from "../mesh/config.ts";
import {
  CONTROL_CLIENT_OPTIONS,
  ControlConnection,
  controlEndpoint,
  runNodePodsClient,
  tokenSubject,
} from "../mesh/control_client.ts";
import { type Logger, logger } from "../mesh/log.ts";
import { decodePodEvent, type PodEvent } from "../mesh/protocol/cni.ts";
import { NodeAgent } from "./agent.ts";
import { serveAgentApi } from "./agent_server.ts";
import { type HandoffPod, HandoffServer } from "./handoff_server.ts";
import { syncProbeRules } from "./node_rules.ts";
import { installHostRules, removeHostRules } from "./host_rules_linux.ts";
import { HostUnits, UNIT_WATCH_INTERVAL_MS } from "./host_units.ts";
import { deletedDir, pathExists } from "./plugin.ts";
import { checkRedirect, inNs, installRedirect, removeRedirect } from "./redirect_linux.ts";
import { Reporter } from "./reporter.ts";
import { loadAgentState, saveAgentState } from "./state.ts";

/** How often every pod is checked again (namespaces gone, DELs noted while the agent was away). */
export const RECONCILE_INTERVAL_MS = 10_000;

export const CNI_AGENT_OPTIONS = {
  ...CONTROL_CLIENT_OPTIONS,
  nodeName: option({
    flag: "node-name",
    env: "NODE_NAME",
    help: "this node's name in the mesh (default: the node token's)",
    parser: parsers.string("a node name"),
  }),
  runDir: option({
    flag: "run-dir",
    env: "SKIFF_RUN_DIR",
    help: "the agent's sockets (cni.sock for the plugin, ztunnel.sock for ztunnel) and state",
    parser: parsers.string("a directory path"),
    default: "/var/run/skiff",
  }),
  nodeNetns: option({
    flag: "node-netns",
    env: "SKIFF_NODE_NETNS",
    help: "the node's network namespace, for the probe rules (default: the agent's own)",
    parser: parsers.string("a path such as /var/run/netns/NAME"),
  }),
  cgroupRoot: option({
    flag: "cgroup-root",
    env: "SKIFF_CGROUP_ROOT",
    help: "where the cgroup v2 hierarchy is mounted, for meshed systemd units (skiff.io/unit)",
    parser: parsers.string("a directory path"),
    default: "/sys/fs/cgroup",
  }),
  unitWatchInterval: option({
    flag: "unit-watch-interval",
    env: "SKIFF_UNIT_WATCH_INTERVAL",
    help: "how often meshed units' cgroups are looked at for a restart (units without the skiff-mesh.conf gate " +
      "run uncaptured for up to this long after one)",
    parser: parsers.duration(),
    default: UNIT_WATCH_INTERVAL_MS,
  }),
};

export const CNI_AGENT_USAGE = `Usage: skiff cni-agent --control https://HOST:15012 --token-file FILE [options]
${describeOptions(CNI_AGENT_OPTIONS)}

The CNI plugin is the same binary: install it as /opt/cni/bin/skiff and list {"type": "skiff"} after the
plugin that creates the pod's interface in the network's .conflist. Status: curl --unix-socket
RUN_DIR/cni.sock http://agent/v1/status`;

type AgentValues = Values<typeof CNI_AGENT_OPTIONS>;

/** Runs `skiff cni-agent` until SIGTERM or SIGINT; returns the exit code. */
export async function runCniAgent(argv: string[]): Promise<number> {
  const { values, help } = readConfig("cni-agent", CNI_AGENT_OPTIONS, argv, Deno.env.toObject());
  if (help) {
    console.log(CNI_AGENT_USAGE);
    return 0;
  }
  if (values.control === undefined) {
    throw new UsageError(
      "cni-agent: give --control URL (SKIFF_CONTROL) with --token-file (SKIFF_TOKEN_FILE): the control plane says " +
        "which pods of this node are enrolled",
    );
  }
  const log = logger("cni-agent");
  log.info({ config: loggable(CNI_AGENT_OPTIONS, values) }, "config loaded");
  const node = values.nodeName ?? await tokenSubject(values.tokenFile);
  if (!node) throw new UsageError(`cni-agent: the token ${values.tokenFile} names no node; give --node-name`);
  await Deno.mkdir(values.runDir, { recursive: true, mode: 0o700 });
  const paths = runPaths(values);

  const controller = new AbortController();
  const stop = () => controller.abort();
  Deno.addSignalListener("SIGTERM", stop);
  Deno.addSignalListener("SIGINT", stop);
  const connection = new ControlConnection(controlEndpoint(values.control, values));
  const reporter = new Reporter(connection, log, controller.signal);
  const { state, problem } = await loadAgentState(paths.state);
  if (problem) log.error({ problem }, "the saved pods could not be read; starting with none");

  // The handoff server needs the agent (for snapshots) and the agent the server: it is set once both exist.
  const ztunnels: { server?: HandoffServer } = {};
  const handoff = {
    get ready() {
      return ztunnels.server?.ready ?? 0;
    },
    add: (pod: HandoffPod) => ztunnels.server?.add(pod) ?? Promise.reject(new Error("no ztunnel is connected")),
    del: (uid: string) => ztunnels.server?.del(uid) ?? Promise.resolve(),
  };
  const isOwnNetns = await ownNetnsCheck(values.nodeNetns);
  const units = await hostUnits(values, log, isOwnNetns, handoff);
  const agent = new NodeAgent(node, {
    log,
    redirect: { install: installRedirect, check: checkRedirect, remove: removeRedirect },
    syncProbes: (ips) => syncProbeRules(values.nodeNetns, ips),
    handoff,
    units,
    report: (pods) => reporter.report(pods),
    save: (s) => saveAgentState(paths.state, s),
    exists: pathExists,
    isOwnNetns,
    deletedNotes: () => readNotes(paths.deleted),
    forgetNote: (id) => Deno.remove(join(paths.deleted, id)).catch(() => {}),
    self: Deno.env.get("POD_NAME") && Deno.env.get("POD_NAMESPACE")
      ? { namespace: Deno.env.get("POD_NAMESPACE")!, name: Deno.env.get("POD_NAME")! }
      : undefined,
  }, state);

  // Pods of the last run first: their rules are rewritten whole, gone ones forgotten; then the sockets open.
  await agent.reconcile(true);
  log.info({ node, pods: agent.pods().length }, "pods of the last run reconciled");
  const handoffServer = new HandoffServer({
    socketPath: paths.handoff,
    log,
    snapshot: (send) =>
      agent.exclusive(async () => {
        const acked = await send(agent.snapshotPods());
        await agent.snapshotTaken(acked);
      }),
    onChange: (ready) => {
      log.info({ ztunnels: ready }, "ztunnels ready");
      if (ready > 0) agent.reconcile().catch(() => {});
    },
  });
  ztunnels.server = handoffServer;
  const api = serveAgentApi(agent, paths.cni, log, controller.signal);
  const views = runNodePodsClient({
    connection,
    log,
    signal: controller.signal,
    onView: (view) => {
      agent.setView(view).catch((error) => log.error({ error: (error as Error).message }, "view not applied"));
    },
    onConnected: (connected) => {
      agent.controlConnected = connected;
      if (connected) reporter.resend();
    },
  });
  const timer = setInterval(() => agent.reconcile().catch(() => {}), RECONCILE_INTERVAL_MS);
  const unitTimer = setInterval(() => agent.watchUnits(), values.unitWatchInterval);

  await new Promise((resolve) => controller.signal.addEventListener("abort", resolve, { once: true }));
  log.info("shutting down; the pods' rules stay in place (their traffic waits for ztunnel)");
  clearInterval(timer);
  clearInterval(unitTimer);
  await handoffServer.close();
  await Promise.allSettled([api.finished, views]);
  Deno.removeSignalListener("SIGTERM", stop);
  Deno.removeSignalListener("SIGINT", stop);
  return 0;
}

/**
 * The node's meshed units, in the node's namespace (`--node-netns`, else PID 1's, which must be the agent's own:
 * the rules are written where the agent runs). Undefined, with an error logged, when that cannot hold.
 */
async function hostUnits(
  values: AgentValues,
  log: Logger,
  isOwnNetns: (path: string) => Promise<boolean>,
  handoff: { add(pod: HandoffPod): Promise<void>; del(uid: string): Promise<void> },
): Promise<HostUnits | undefined> {
  const netns = values.nodeNetns ?? "/proc/1/ns/net";
  if (values.nodeNetns === undefined && !await isOwnNetns(netns)) {
    log.error(
      { netns },
      "systemd units are not meshed: the agent is not in PID 1's network namespace; give --node-netns",
    );
    return undefined;
  }
  return new HostUnits({
    log,
    netns,
    cgroupRoot: values.cgroupRoot,
    rules: {
      install: (units) => installHostRules(values.nodeNetns, units),
      remove: () => removeHostRules(values.nodeNetns),
    },
    localAddresses: async () => {
      const out = await inNs(values.nodeNetns, ["ip", "-4", "-o", "addr", "show"]);
      return [...out.stdout.matchAll(/ inet ([0-9.]+)\//g)].map((m) => m[1]);
    },
    inode: (dir) => Deno.stat(dir).then((s) => s.ino ?? undefined, () => undefined),
    mkdir: (dir) => Deno.mkdir(dir, { recursive: true }),
    rmdir: (dir) => Deno.remove(dir),
    handoff,
  });
}

/** Where the agent keeps its sockets and state. */
export function runPaths(v: { runDir: string }) {
  return {
    cni: join(v.runDir, "cni.sock"),
    handoff: join(v.runDir, "ztunnel.sock"),
    state: join(v.runDir, "cni-agent.json"),
    deleted: deletedDir(join(v.runDir, "cni.sock")),
  };
}

/**
 * Whether a namespace path is the agent's own network namespace or the node's: never to be captured. Those two
 * are read once, at start.
 */
async function ownNetnsCheck(nodeNetns: string | undefined): Promise<(path: string) => Promise<boolean>> {
  const id = async (p: string) => {
    try {
      const s = await Deno.stat(p);
      return `${s.dev}:${s.ino}`;
    } catch {
      return undefined;
    }
  };
  const own = [await id("/proc/self/ns/net"), nodeNetns ? await id(nodeNetns) : undefined].filter((x) => x);
  return async (path) => {
    const target = await id(path);
    return target !== undefined && own.includes(target);
  };
}

async function readNotes(dir: string): Promise<PodEvent[]> {
  const out: PodEvent[] = [];
  try {
    for await (const e of Deno.readDir(dir)) {
      if (!e.isFile) continue;
      try {
        out.push(decodePodEvent(JSON.parse(await Deno.readTextFile(join(dir, e.name)))));
      } catch {
        out.push({ containerId: e.name, netns: "", ifname: "", podNamespace: "", podName: "", podUid: "", ips: [] });
      }
    }
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  }
  return out;
}
