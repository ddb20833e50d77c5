/**
 * The demo's systemd unit, and what the pods need to call it by name. The demo runs where systemd may not be PID 1
 * (a container, a CI runner), so the unit is made as systemd makes one: a cgroup v2 directory
 * (`<root>/skiff-demo.slice/billing.service`), the main process moved into it before it execs, in the node's own
 * network namespace (`nsenter --net`, not `ip netns exec`, which mounts a sysfs of its own over the cgroup
 * hierarchy). The node agent meshes it by that cgroup (cni/host_units.ts), exactly as it would a real unit.
 *
 * Each pod gets the resolv.conf kubelet writes for a `ClusterFirst` pod (`/etc/netns/skd-POD/resolv.conf`, which
 * `ip netns exec` mounts over /etc/resolv.conf): a cluster DNS address and the namespace's search domains. Nothing
 * serves that address: once the pod is enrolled, ztunnel's DNS proxy takes every query to port 53 (docs/dns.md),
 * answers mesh names and forwards the rest to the node's resolvers, so the demo works whatever the host's
 * resolv.conf names (systemd-resolved's 127.0.0.53, which a pod could not reach, included).
 *
 * @module
 */

import { join } from "node:path";
import { NODES } from "./cluster.ts";
import { NS, UNIT } from "./manifests.ts";
import { DemoError, NETNS_PREFIX, selfCommand, sh, sleep, spawnDetached } from "./system.ts";
import type { AgentUnitStatus } from "../mesh/protocol/cni.ts";

/** Where `ip netns exec` finds a namespace's own /etc files. */
const ETC_NETNS = "/etc/netns";
/** kube-dns's usual ClusterIP; no process serves it in the demo, ztunnel's DNS proxy answers in its place. */
const CLUSTER_DNS = "10.96.0.10";

/**
 * Where the cgroup v2 hierarchy is mounted: `/sys/fs/cgroup` on a unified host, `/sys/fs/cgroup/unified` on a
 * hybrid one; undefined when there is none (cgroup v1 only). From a mount table's text (`/proc/self/mounts`). Pure.
 */
export function cgroup2Mount(mounts: string): string | undefined {
  const line = mounts.split("\n").find((l) => l.split(" ")[2] === "cgroup2");
  return line?.split(" ")[1];
}

/** {@link cgroup2Mount} of this machine. */
export async function cgroup2Root(): Promise<string | undefined> {
  return cgroup2Mount(await Deno.readTextFile("/proc/self/mounts").catch(() => ""));
}

/** The unit's cgroup directory under `root`. */
export const unitCgroupDir = (root: string) => join(root, UNIT.cgroup);

/**
 * Starts the unit's process (the demo's HTTP echo, `billing`) in its cgroup in its node's namespace; the cgroup
 * directory is made first if the node agent has not made it yet (either way the agent takes the one it finds).
 */
export async function startUnit(
  root: string,
  o: { log: string; pidFile: string; env: Record<string, string> },
): Promise<number> {
  const node = NODES.find((n) => n.name === UNIT.node)!;
  const dir = unitCgroupDir(root);
  await Deno.mkdir(dir, { recursive: true }).catch((e: Error) => {
    throw new DemoError(`cannot make the unit's cgroup ${dir}: ${e.message} (it needs a writable cgroup v2 hierarchy)`);
  });
  const app = [...selfCommand(), "demo", "app", "http", `--name=${UNIT.name}`, `--port=${UNIT.port}`];
  return await spawnDetached(["nsenter", `--net=/var/run/netns/${node.netns}`, "--", ...app], { ...o, cgroup: dir });
}

/**
 * Removes the unit's cgroup directory and its slice's, once the process is stopped. A cgroup's directory can be
 * removed only when no process is in it; an exited process can take a moment to leave, so this tries for 2 s.
 * Returns what could not be removed, with why.
 */
export async function removeUnitCgroup(root: string): Promise<string[]> {
  const dirs = [unitCgroupDir(root), join(root, UNIT.cgroup.split("/")[0])];
  const left: string[] = [];
  for (const dir of dirs) {
    for (let attempt = 0;; attempt++) {
      const error = await Deno.remove(dir).then(() => undefined, (e: Error) => e);
      if (error === undefined || error instanceof Deno.errors.NotFound) break;
      if (attempt >= 20) {
        const procs = (await Deno.readTextFile(join(dir, "cgroup.procs")).catch(() => "")).trim().split("\n");
        left.push(`${dir}: ${error.message}${procs[0] ? ` (processes in it: ${procs.join(" ")})` : ""}`);
        break;
      }
      await sleep(100);
    }
  }
  return left;
}

/** Writes a pod's resolv.conf as kubelet writes a `ClusterFirst` pod's. */
export async function writePodResolvConf(pod: string): Promise<void> {
  const dir = join(ETC_NETNS, `${NETNS_PREFIX}${pod}`);
  await Deno.mkdir(dir, { recursive: true });
  await Deno.writeTextFile(
    join(dir, "resolv.conf"),
    `# skiff demo: ztunnel's DNS proxy answers every query to port 53 (docs/dns.md)\n` +
      `nameserver ${CLUSTER_DNS}\nsearch ${NS}.svc.cluster.local svc.cluster.local cluster.local\n` +
      "options timeout:2 attempts:2\n",
  );
}

/** Removes every `/etc/netns/skd-*` the demo wrote, and `/etc/netns` when that leaves it empty. */
export async function removePodResolvConfs(): Promise<void> {
  const entries = await Array.fromAsync(Deno.readDir(ETC_NETNS)).catch(() => []);
  for (const e of entries) {
    if (e.name.startsWith(NETNS_PREFIX)) await Deno.remove(join(ETC_NETNS, e.name), { recursive: true });
  }
  if (entries.length > 0 && (await Array.fromAsync(Deno.readDir(ETC_NETNS)).catch(() => [1])).length === 0) {
    await Deno.remove(ETC_NETNS).catch(() => {});
  }
}

/** A unit as the node agent's status reports it. */
export type UnitStatus = AgentUnitStatus;

/** The units the agent of a node reports (its status on the CNI socket, `GET /v1/status`). */
export async function agentUnits(runDir: string): Promise<UnitStatus[]> {
  const r = await sh([
    "curl",
    "-sS",
    "--max-time",
    "3",
    "--unix-socket",
    join(runDir, "cni.sock"),
    "http://agent/v1/status",
  ]);
  if (r.code !== 0) throw new DemoError(`node agent status: ${r.stderr.trim()}`);
  return (JSON.parse(r.stdout) as { units?: UnitStatus[] }).units ?? [];
}
