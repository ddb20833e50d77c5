/**
 * `skiff demo`: the single-command demo cluster. As root, `skiff demo` (or `skiff demo up`) builds two nodes in
 * network namespaces on this machine, starts the control plane, a node agent and a ztunnel per node, makes pods
 * through the reference CNI plugins with `skiff` chained, runs sample apps, and walks a tour with a verdict per
 * step: plaintext before enrolment, mTLS with both SPIFFE identities after, an L4 DENY for one client, a 90/10
 * HTTPRoute split through a waypoint, a systemd unit in node2's own namespace called by its DNS name (demo/unit.ts),
 * and a metrics snapshot. The cluster stays up: `skiff demo status`,
 * `skiff demo exec POD -- CMD`, `skiff demo down` (everything it made, safe twice and after a crash).
 *
 * Everything lives in {@link DEMO_DIR} (state, logs, the control plane's data), in namespaces named `skd-*`, in
 * the pods' `/etc/netns/skd-*` and in the unit's cgroup (`skiff-demo.slice`); processes are found again by their
 * pid files.
 *
 * @module
 */

import { join } from "node:path";
import { UsageError } from "../mesh/config.ts";
import { runApp } from "./apps.ts";
import { addPod, buildNetwork, type DemoPod, NODES, REFERENCE_PLUGINS, writePluginShim } from "./cluster.ts";
import { manifests, NS, PODS, type Stage, UNIT, VIPS } from "./manifests.ts";
import {
  alive,
  DEMO_DIR,
  DemoError,
  demoNamespaces,
  must,
  NETNS_PREFIX,
  RUN_VARIABLE,
  runs,
  selfCommand,
  sh,
  sleep,
  spawnDetached,
  stop,
  until,
} from "./system.ts";
import {
  agentUnits,
  cgroup2Root,
  removePodResolvConfs,
  removeUnitCgroup,
  startUnit,
  unitCgroupDir,
  writePodResolvConf,
} from "./unit.ts";

export const DEMO_USAGE = `Usage:
  skiff demo [up]                 build the demo cluster on this machine (root) and walk the tour
  skiff demo status               what runs, the pods and their addresses
  skiff demo exec POD -- CMD...   run CMD inside pod POD's network namespace (e.g. curl, ss, iptables-save)
  skiff demo down                 remove every namespace, link, rule, file and process the demo made`;

const CONTROL_PORT = 15612;
const MONITORING_PORT = 15614;
/**
 * Ports of each node's ztunnel (admin, metrics, readiness) and of the waypoint: apart from Istio's own (15000,
 * 15020, 15021) and the systemd waypoint's (15100, 15120, 15121), so the demo can run beside an installed node.
 */
const PORTS: Record<string, [number, number, number]> = {
  node1: [15700, 15720, 15721],
  node2: [15800, 15820, 15821],
  waypoint: [15900, 15920, 15921],
};

/** Runs `skiff demo ...`; returns the exit code. */
export async function runDemo(argv: string[]): Promise<number> {
  const [command = "up", ...rest] = argv;
  if (command === "app") return await runApp(rest);
  if (command === "-h" || command === "--help" || command === "help") {
    console.log(DEMO_USAGE);
    return 0;
  }
  if (!["up", "status", "exec", "down"].includes(command)) {
    throw new UsageError(`demo: unknown command ${JSON.stringify(command)}\n${DEMO_USAGE}`);
  }
  if (Deno.uid() !== 0) {
    console.error(
      `skiff demo ${command}: needs root — it creates network namespaces, veth links and iptables rules ` +
        `(try: sudo skiff demo ${command})`,
    );
    return 1;
  }
  if (command === "status") return await status();
  if (command === "down") return await down();
  if (command === "exec") return await exec(rest);
  return await up();
}

const say = (line: string) => console.log(line);
/** This run's `SKIFF_DEMO_RUN=<id>`, made by `up` and kept in DIR/run-id; empty when there is no run. */
let runId = "";
const marker = () => `${RUN_VARIABLE}=${runId}`;
async function loadRunId(): Promise<void> {
  runId = (await Deno.readTextFile(join(DEMO_DIR, "run-id")).catch(() => "")).trim();
}
const pidFile = (name: string) => join(DEMO_DIR, "pids", `${name}.pid`);
const logFile = (name: string) => join(DEMO_DIR, "logs", `${name}.log`);

/** Starts a skiff process of the demo, detached, with JSON logs in DIR/logs/NAME.log. */
function start(name: string, args: string[], netns?: string): Promise<number> {
  const cmd = [...selfCommand(), ...args];
  return spawnDetached(netns ? ["ip", "netns", "exec", netns, ...cmd] : cmd, {
    log: logFile(name),
    pidFile: pidFile(name),
    env: { LOG_FORMAT: "json", LOG_LEVEL: "info", [RUN_VARIABLE]: runId },
  });
}

/** The JSON lines of a process's log. */
async function logLines(name: string): Promise<Record<string, unknown>[]> {
  const text = await Deno.readTextFile(logFile(name)).catch(() => "");
  return text.split("\n").flatMap((l) => {
    try {
      return [JSON.parse(l) as Record<string, unknown>];
    } catch {
      return [];
    }
  });
}

/** Waits for a log line of `name` that passes `test`. */
function logged(name: string, what: string, test: (l: Record<string, unknown>) => boolean, timeoutMs = 30_000) {
  return until(`${name}: ${what}`, timeoutMs, async () => {
    const pid = Number(await Deno.readTextFile(pidFile(name)).catch(() => "0"));
    if (pid && !(await alive(pid))) {
      throw new DemoError(`${name} exited`);
    }
    return (await logLines(name)).find(test);
  }).catch((error) => {
    throw new DemoError(`${(error as Error).message} (log: ${logFile(name)})`);
  });
}

async function step<T>(what: string, fn: () => Promise<T>): Promise<T> {
  const started = Date.now();
  const out = await fn();
  say(`  ✓ ${what} (${((Date.now() - started) / 1000).toFixed(1)} s)`);
  return out;
}

async function up(): Promise<number> {
  const leftovers = await demoNamespaces();
  const dirThere = await Deno.stat(DEMO_DIR).then(() => true, () => false);
  if (leftovers.length > 0 || dirThere) {
    console.error(
      `skiff demo: a demo cluster is already here, or what a crashed one left (${
        leftovers.length > 0 ? leftovers.join(", ") : DEMO_DIR
      }). Run \`skiff demo status\` to see it, or \`skiff demo down\` to remove it first.`,
    );
    return 1;
  }
  for (const tool of ["bridge", "host-local"]) {
    if (!(await Deno.stat(join(REFERENCE_PLUGINS, tool)).then(() => true, () => false))) {
      console.error(
        `skiff demo: ${join(REFERENCE_PLUGINS, tool)} is missing: the demo uses Debian's containernetworking-plugins ` +
          "(bash install.sh installs them)",
      );
      return 1;
    }
  }
  // The commands the demo runs, each from a package of install.sh's product set (tests/install_test.ts).
  const path = (Deno.env.get("PATH") ?? "/usr/sbin:/usr/bin:/sbin:/bin").split(":");
  const onPath = async (cmd: string) => {
    for (const dir of path) if (await Deno.stat(join(dir, cmd)).then(() => true, () => false)) return true;
    return false;
  };
  for (
    const [cmd, pkg] of [
      ["ip", "iproute2"],
      ["iptables-save", "iptables"],
      ["sysctl", "procps"],
      ["curl", "curl"],
      ["nsenter", "util-linux"],
    ]
  ) {
    if (!(await onPath(cmd))) {
      console.error(`skiff demo: ${cmd} is not on PATH: the demo needs Debian's ${pkg} (bash install.sh installs it)`);
      return 1;
    }
  }
  // The unit is meshed by its cgroup v2 path (iptables' `-m cgroup --path`): no cgroup2 hierarchy, no unit.
  const cgroupRoot = await cgroup2Root();
  if (!cgroupRoot) {
    console.error(
      "skiff demo: no cgroup v2 hierarchy is mounted (/proc/self/mounts): the demo's systemd unit needs one",
    );
    return 1;
  }
  say("skiff demo: a two-node mesh in network namespaces on this machine");
  try {
    const pods = await build(cgroupRoot);
    const verdicts = await tour(pods);
    say("");
    say(verdicts.every(Boolean) ? "Every step passed." : "Some steps FAILED: see above, and the logs in " + DEMO_DIR);
    say("The cluster stays up. Next: `skiff demo status`, `skiff demo exec client -- curl -s http://10.96.10.10/`,");
    say("the logs in /var/lib/skiff-demo/logs, and `skiff demo down` to remove everything.");
    return verdicts.every(Boolean) ? 0 : 1;
  } catch (error) {
    console.error(`skiff demo: ${(error as Error).message}`);
    console.error(`The logs are in ${DEMO_DIR}/logs; \`skiff demo down\` removes what was made.`);
    return 1;
  }
}

/** Builds the cluster; returns the pods by name. */
async function build(cgroupRoot: string): Promise<Map<string, DemoPod>> {
  for (const d of ["pids", "logs", "manifests", "data"]) await Deno.mkdir(join(DEMO_DIR, d), { recursive: true });
  runId = crypto.randomUUID();
  await Deno.writeTextFile(join(DEMO_DIR, "run-id"), `${runId}\n`);
  await Deno.writeTextFile(join(DEMO_DIR, "manifests", "demo.yaml"), manifests("plain"));
  await writePluginShim(DEMO_DIR);
  await step("network: a fabric bridge and two node namespaces (skd-node1, skd-node2)", buildNetwork);
  const control = `https://127.0.0.1:${CONTROL_PORT}`;
  await step(`control plane on ${control} (config stream and CA), status on :${MONITORING_PORT}`, async () => {
    await start("control", [
      "control",
      `--data-dir=${join(DEMO_DIR, "data")}`,
      `--manifests=${join(DEMO_DIR, "manifests")}`,
      "--listen=127.0.0.1",
      `--port=${CONTROL_PORT}`,
      `--monitoring-port=${MONITORING_PORT}`,
    ]);
    await logged("control", "listening", (l) => String(l.msg).startsWith("listener established: config stream"));
  });
  for (const node of NODES) {
    const tokenDir = join(DEMO_DIR, node.name, "token");
    const run = join(DEMO_DIR, node.name, "run");
    await step(`${node.name}: token, node agent and ztunnel`, async () => {
      await must([
        ...selfCommand(),
        "control",
        "node",
        "add",
        node.name,
        `--data-dir=${join(DEMO_DIR, "data")}`,
        `--out=${tokenDir}`,
      ]);
      const source = [`--control=${control}`, `--token-file=${join(tokenDir, "token")}`];
      await start(`cni-agent-${node.name}`, [
        "cni-agent",
        ...source,
        `--run-dir=${run}`,
        `--node-netns=/var/run/netns/${node.netns}`,
        `--cgroup-root=${cgroupRoot}`,
      ]);
      await logged(`cni-agent-${node.name}`, "listening", (l) => l.msg === "listening for the CNI plugin");
      const [admin, metrics, readiness] = PORTS[node.name];
      await start(`ztunnel-${node.name}`, [
        "ztunnel",
        ...source,
        `--handoff-socket=${join(run, "ztunnel.sock")}`,
        `--admin-port=${admin}`,
        `--metrics-port=${metrics}`,
        `--readiness-port=${readiness}`,
      ]);
      await logged(`ztunnel-${node.name}`, "ready", (l) => String(l.msg).startsWith("ready"));
    });
  }
  const pods = new Map<string, DemoPod>();
  await step(
    `pods through CNI (bridge + host-local, skiff chained): ${PODS.map((p) => p.name).join(", ")}`,
    async () => {
      for (const p of PODS) {
        const node = NODES.find((n) => n.name === p.node)!;
        pods.set(p.name, await addPod(node, DEMO_DIR, NS, p.name));
        await writePodResolvConf(p.name);
      }
    },
  );
  await step("apps: HTTP echo v1 and v2 on :8080, TCP echo on :9000", async () => {
    for (const [pod, kind, port] of [["echo-v1", "http", 8080], ["echo-v2", "http", 8080], ["tcp-echo", "tcp", 9000]]) {
      const name = `app-${pod}`;
      await start(name, ["demo", "app", String(kind), `--name=${pod}`, `--port=${port}`], pods.get(String(pod))!.netns);
      await until(`${name} listening (log: ${logFile(name)})`, 30_000, async () => {
        const text = await Deno.readTextFile(logFile(name)).catch(() => "");
        return text.includes("listening") ? true : undefined;
      });
    }
  });
  await step(
    `unit: ${UNIT.name} on ${UNIT.node} (${UNIT.address}:${UNIT.port}), in cgroup ${unitCgroupDir(cgroupRoot)}`,
    async () => {
      const name = `app-${UNIT.name}`;
      const env = { [RUN_VARIABLE]: runId };
      await startUnit(cgroupRoot, { log: logFile(name), pidFile: pidFile(name), env });
      await until(`${name} listening (log: ${logFile(name)})`, 30_000, async () => {
        const text = await Deno.readTextFile(logFile(name)).catch(() => "");
        return text.includes("listening") ? true : undefined;
      });
    },
  );
  return pods;
}

/** Applies a stage of the manifests and waits until the control plane has built it. */
async function apply(stage: Stage): Promise<void> {
  const before = (await logLines("control")).length;
  await Deno.writeTextFile(join(DEMO_DIR, "manifests", "demo.yaml"), manifests(stage));
  await until("the control plane to take the change", 15_000, async () => {
    const lines = (await logLines("control")).slice(before);
    return lines.some((l) => l.version !== undefined && l.workloads !== undefined) ? true : undefined;
  }).catch(() => {});
  await sleep(500);
}

/** Runs `curl` in a pod; returns the body, or undefined when the call failed. */
async function curl(pod: DemoPod, url: string, extra: string[] = []): Promise<string | undefined> {
  const r = await sh(["curl", "-sS", "--max-time", "5", ...extra, url], pod.netns);
  return r.code === 0 ? r.stdout : undefined;
}

const verdict = (ok: boolean, text: string) => {
  say(`     ${ok ? "PASS" : "FAIL"}  ${text}`);
  return ok;
};

async function tour(pods: Map<string, DemoPod>): Promise<boolean[]> {
  const client = pods.get("client")!;
  const intruder = pods.get("intruder")!;
  const v1 = pods.get("echo-v1")!;
  const url = `http://${v1.ip}:8080/hello`;
  const results: boolean[] = [];
  say("");
  say("Tour");

  say(`  1. Before enrolment: client (${client.ip}) calls echo-v1 at ${url}`);
  const zt2 = "ztunnel-node2";
  const seenBefore = (await logLines(zt2)).filter((l) => l.msg === "connection complete").length;
  const plain = await curl(client, url);
  await sleep(300);
  const seenAfter = (await logLines(zt2)).filter((l) => l.msg === "connection complete").length;
  results.push(verdict(
    plain === "echo-v1 /hello\n" && seenAfter === seenBefore,
    `answered ${JSON.stringify(plain)} in plaintext: no ztunnel carried it`,
  ));

  say(`  2. Enrol namespace ${NS} (istio.io/dataplane-mode=ambient): the node agents redirect its pods`);
  await apply("enrolled");
  await until(`the pods to be redirected (logs: ${logFile("cni-agent-node1")})`, 30_000, async () => {
    const r = await sh(["iptables-save", "-t", "mangle"], client.netns);
    return r.stdout.includes("SKIFF_OUTPUT") ? true : undefined;
  });
  const inbound = await until("an mTLS call through both ztunnels", 30_000, async () => {
    const mark = (await logLines(zt2)).length;
    if (await curl(client, url) !== "echo-v1 /hello\n") return undefined;
    await sleep(300);
    return (await logLines(zt2)).slice(mark).find((l) =>
      l.msg === "connection complete" && l.direction === "inbound" && l["src.identity"] !== undefined
    );
  }).catch(() => undefined);
  results.push(verdict(
    inbound !== undefined,
    inbound
      ? `the same call now carries mTLS: ${inbound["src.identity"]} → ${inbound["dst.identity"]} (node2's ztunnel)`
      : "no mTLS connection seen in node2's ztunnel log",
  ));

  say("  3. An L4 DENY policy for the intruder's identity (cluster.local/ns/demo/sa/intruder)");
  await apply("deny");
  const denied = await until("the policy to be enforced", 20_000, async () => {
    const mark = (await logLines(zt2)).length;
    if (await curl(intruder, url) !== undefined) return undefined;
    await sleep(300);
    // Refused for the policy's reason, as node2's ztunnel logs it, not for any other failure.
    return (await logLines(zt2)).slice(mark).find((l) =>
      l.direction === "inbound" && String(l["src.identity"]).endsWith("/sa/intruder") && l.error !== undefined
    );
  }).catch(() => undefined);
  const allowed = await curl(client, url);
  results.push(verdict(
    denied !== undefined && allowed === "echo-v1 /hello\n",
    denied
      ? `intruder refused by node2's ztunnel (${denied.error}); client still answered ${JSON.stringify(allowed)}`
      : "the intruder was not refused by the policy",
  ));

  say("  4. A waypoint and an HTTPRoute: echo splits 90/10 between v1 and v2");
  await apply("waypoint");
  const wp = pods.get("waypoint")!;
  const [admin, metrics, readiness] = PORTS.waypoint;
  await start("waypoint", [
    "waypoint",
    "--name=waypoint",
    `--namespace=${NS}`,
    `--control=https://127.0.0.1:${CONTROL_PORT}`,
    `--token-file=${join(DEMO_DIR, wp.node.name, "token", "token")}`,
    `--netns=/var/run/netns/${wp.netns}`,
    `--admin-port=${admin}`,
    `--metrics-port=${metrics}`,
    `--readiness-port=${readiness}`,
  ]);
  await logged("waypoint", "listening", (l) => l.msg === "listener established" && l.listener === "hbone");
  await logged("waypoint", "config", (l) => l.msg === "config synced");
  const split = await until("the route to be in force", 30_000, async () => {
    const out = await curl(client, `http://${VIPS.echo}/split?[1-100]`);
    const lines = out?.trim().split("\n") ?? [];
    return lines.length === 100 && lines.every((l) => /^echo-v[12] \/split$/.test(l)) ? lines : undefined;
  }).catch(() => [] as string[]);
  const toV2 = split.filter((l) => l.startsWith("echo-v2")).length;
  // Each of the waypoint's threads writes its access lines as it can: wait for them rather than read once.
  const served = async () => (await logLines("waypoint")).filter((l) => l.msg === "request complete").length;
  const viaWaypoint = await until("the waypoint's access lines", 5_000, async () => {
    const n = await served();
    return n >= 100 ? n : undefined;
  }).catch(served);
  results.push(verdict(
    split.length === 100 && toV2 >= 1 && toV2 <= 25 && viaWaypoint >= 100,
    `100 requests to ${VIPS.echo}: ${100 - toV2} to v1, ${toV2} to v2, all through the waypoint`,
  ));

  results.push(await unitStep(client));

  say("  6. Metrics snapshot");
  const text = async (port: number) =>
    (await sh(["curl", "-sS", `http://127.0.0.1:${port}/metrics`])).stdout.split("\n");
  const tcp = (await text(PORTS.node2[1])).filter((l) => l.startsWith("istio_tcp_connections_opened_total{"));
  const http = (await text(metrics)).filter((l) => l.startsWith("istio_requests_total{"));
  const short = (l: string) => {
    const pick = (k: string) => new RegExp(`${k}="([^"]*)"`).exec(l)?.[1];
    return `${pick("reporter")} ${pick("source_workload")} → ${pick("destination_workload")} ` +
      `${pick("response_code") ?? ""} ${pick("response_flags")}: ${l.split(" ").at(-1)}`;
  };
  for (const l of tcp.slice(0, 4)) say(`     istio_tcp_connections_opened_total ${short(l)}`);
  for (const l of http.slice(0, 4)) say(`     istio_requests_total ${short(l)}`);
  results.push(verdict(tcp.length > 0 && http.length > 0, "ztunnel and waypoint report Istio's standard metrics"));
  return results;
}

/**
 * The unit: client calls it by its service's DNS name, from inside the pod as any app would (`ip netns exec`, so
 * the pod's resolv.conf applies), and node2's ztunnel logs the call inbound to the unit with both identities.
 */
async function unitStep(client: DemoPod): Promise<boolean> {
  const host = `${UNIT.name}.${NS}.svc.cluster.local`;
  const node = NODES.find((n) => n.name === UNIT.node)!;
  say(`  5. A systemd unit on ${node.name}, no pod: ${UNIT.name} in cgroup ${UNIT.cgroup}, in ${node.name}'s own`);
  say(`     namespace on ${UNIT.address}:${UNIT.port}; client calls it by name: curl http://${host}/`);
  const zt = `ztunnel-${node.name}`;
  const redirected = await until("the node agent to mesh the unit", 20_000, async () => {
    const units = await agentUnits(join(DEMO_DIR, node.name, "run"));
    return units.find((u) => u.name === UNIT.name && u.state === "redirected");
  }).catch(() => undefined);
  if (!redirected) return verdict(false, `${node.name}'s agent has not meshed the unit (its status, its log)`);
  let answer: { body: string; ip: string } | undefined;
  const inbound = await until("a call to the unit over mTLS", 20_000, async () => {
    const mark = (await logLines(zt)).length;
    const r = await sh([
      "ip",
      "netns",
      "exec",
      client.netns,
      "curl",
      "-sS",
      "--max-time",
      "5",
      "-w",
      "\n%{remote_ip}",
      `http://${host}/`,
    ]);
    // The body, then what `-w` adds: a newline and the address curl connected to (what the name resolved to).
    const cut = r.stdout.lastIndexOf("\n");
    const [body, ip] = [r.stdout.slice(0, cut), r.stdout.slice(cut + 1)];
    if (r.code !== 0 || body !== `${UNIT.name} /\n`) return undefined;
    answer = { body, ip };
    await sleep(300);
    return (await logLines(zt)).slice(mark).find((l) =>
      l.msg === "connection complete" && l.direction === "inbound" &&
      l["dst.addr"] === `${UNIT.address}:${UNIT.port}` && l["src.identity"] !== undefined
    );
  }).catch(() => undefined);
  return verdict(
    inbound !== undefined && answer?.ip === VIPS.billing,
    inbound && answer
      ? `${host} → ${answer.ip} (ztunnel's DNS proxy), answered ${JSON.stringify(answer.body)} over mTLS: ` +
        `${inbound["src.identity"]} → ${inbound["dst.identity"]} (${node.name}'s ztunnel, inbound to the unit)`
      : `no mTLS call to the unit seen in ${node.name}'s ztunnel log (last answer: ${JSON.stringify(answer)})`,
  );
}

async function status(): Promise<number> {
  await loadRunId();
  const namespaces = await demoNamespaces();
  const pidNames = await Array.fromAsync(Deno.readDir(join(DEMO_DIR, "pids"))).catch(() => []);
  if (namespaces.length === 0 && pidNames.length === 0) {
    say("skiff demo: no demo cluster here (start one with `skiff demo`)");
    return 0;
  }
  say("Processes:");
  for (const e of pidNames.sort((a, b) => a.name.localeCompare(b.name))) {
    const name = e.name.replace(/\.pid$/, "");
    const pid = Number(await Deno.readTextFile(join(DEMO_DIR, "pids", e.name)).catch(() => "0"));
    say(`  ${name.padEnd(20)} pid ${String(pid).padEnd(8)} ${await runs(pid, marker()) ? "running" : "NOT RUNNING"}`);
  }
  say("Pods:");
  for (const p of PODS) {
    const ns = `${NETNS_PREFIX}${p.name}`;
    const addr = namespaces.includes(ns)
      ? (await sh(["ip", "-4", "-o", "addr", "show", "dev", "eth0"], ns)).stdout.match(/inet (\S+)\//)?.[1]
      : undefined;
    say(`  ${p.name.padEnd(10)} ${p.node}  ${addr ?? "(no sandbox)"}`);
  }
  say("Units (systemd, in the node's own namespace; from the node agent's status):");
  const root = await cgroup2Root();
  const dir = root ? unitCgroupDir(root) : undefined;
  const procs = dir ? (await Deno.readTextFile(join(dir, "cgroup.procs")).catch(() => "")).trim() : "";
  const units = await agentUnits(join(DEMO_DIR, UNIT.node, "run")).catch((e: Error) => e);
  if (units instanceof Error) {
    say(`  ${UNIT.name.padEnd(10)} ${UNIT.node}  (agent not answering: ${units.message})`);
  }
  for (const u of units instanceof Error ? [] : units) {
    say(`  ${u.name.padEnd(10)} ${UNIT.node}  ${u.address}:${u.ports.join(",")}  ${u.cgroup}  ${u.state}: ${u.reason}`);
  }
  say(
    `    cgroup ${dir ?? "(no cgroup v2 hierarchy)"}: ${procs ? `pids ${procs.split("\n").join(" ")}` : "no process"}`,
  );
  say(
    `Services: echo ${VIPS.echo}:80, echo-v1 ${VIPS.v1}:80, echo-v2 ${VIPS.v2}:80, tcp-echo ${VIPS.tcp}:9000, ` +
      `billing ${VIPS.billing}:80 (${UNIT.name}.${NS}.svc.cluster.local)`,
  );
  say(`Control plane status: curl -s http://127.0.0.1:${MONITORING_PORT}/status; logs in ${DEMO_DIR}/logs`);
  return 0;
}

async function exec(argv: string[]): Promise<number> {
  const sep = argv.indexOf("--");
  const pod = argv[0];
  const cmd = sep >= 0 ? argv.slice(sep + 1) : argv.slice(1);
  if (!pod || cmd.length === 0) throw new UsageError(`demo exec: expected POD -- CMD...\n${DEMO_USAGE}`);
  const ns = `${NETNS_PREFIX}${pod}`;
  if (!(await demoNamespaces()).includes(ns)) {
    console.error(`skiff demo exec: no pod ${pod} (pods: ${PODS.map((p) => p.name).join(", ")})`);
    return 1;
  }
  const child = new Deno.Command("ip", { args: ["netns", "exec", ns, ...cmd] }).spawn();
  return (await child.status).code;
}

async function down(): Promise<number> {
  await loadRunId();
  let stopped = 0;
  const pidNames = await Array.fromAsync(Deno.readDir(join(DEMO_DIR, "pids"))).catch(() => []);
  // Waypoint and ztunnels first, then agents, then the control plane, so nothing reconnects meanwhile.
  const order = (n: string) =>
    n.startsWith("app-")
      ? 0
      : n.startsWith("waypoint")
      ? 1
      : n.startsWith("ztunnel")
      ? 2
      : n.startsWith("cni-agent")
      ? 3
      : 4;
  for (const e of pidNames.sort((a, b) => order(a.name) - order(b.name))) {
    const pid = Number(await Deno.readTextFile(join(DEMO_DIR, "pids", e.name)).catch(() => "0"));
    if (pid && await stop(pid, marker())) stopped++;
  }
  const namespaces = await demoNamespaces();
  for (const ns of namespaces.reverse()) {
    const r = await sh(["ip", "netns", "del", ns]);
    if (r.code !== 0 && !/No such file/.test(r.stderr)) {
      console.error(`skiff demo down: ip netns del ${ns}: ${r.stderr.trim()}`);
    }
  }
  // The unit's rules were in node2's namespace and went with it; its cgroup is the host's, emptied by the stop.
  const root = await cgroup2Root();
  const cgroupsLeft = root ? await removeUnitCgroup(root) : [];
  await removePodResolvConfs();
  await Deno.remove(DEMO_DIR, { recursive: true }).catch((e) => {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  });
  const left = await demoNamespaces();
  say(
    `skiff demo down: stopped ${stopped} processes, removed ${namespaces.length} namespaces (with their links and ` +
      `rules), the unit's cgroup and ${DEMO_DIR}`,
  );
  if (left.length > 0 || cgroupsLeft.length > 0) {
    console.error(`skiff demo down: still there: ${[...left, ...cgroupsLeft].join(", ")}`);
    return 1;
  }
  return 0;
}
