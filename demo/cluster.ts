/**
 * The demo cluster's network: a fabric namespace with a bridge, and two node namespaces on it, each routing to
 * the other's pod range. Pods are made as a container runtime makes them: an empty namespace (the sandbox), then
 * the node's network configuration list run in the node's namespace, the reference `bridge` plugin with
 * `host-local` addresses first and `skiff` chained after it, with the CNI environment libcni gives
 * (`K8S_POD_NAMESPACE`, `K8S_POD_NAME` in `CNI_ARGS`). A failed ADD is followed by a DEL, as kubelet does.
 *
 * @module
 */

import { join } from "node:path";
import { DemoError, must, NETNS_PREFIX, selfCommand, sh } from "./system.ts";

/** Where Debian's containernetworking-plugins are. */
export const REFERENCE_PLUGINS = "/usr/lib/cni";

/** The fabric namespace. */
export const FABRIC = `${NETNS_PREFIX}fabric`;

/** A node of the demo. */
export interface DemoNode {
  name: string;
  netns: string;
  address: string;
  podCidr: string;
}

/** The two nodes. */
export const NODES: DemoNode[] = [1, 2].map((i) => ({
  name: `node${i}`,
  netns: `${NETNS_PREFIX}node${i}`,
  address: `172.31.0.${i}`,
  podCidr: `10.244.${i}.0/24`,
}));

/** Makes the fabric and the nodes. */
export async function buildNetwork(): Promise<void> {
  await addNamespace(FABRIC);
  await must(["ip", "link", "add", "br0", "type", "bridge"], FABRIC);
  await must(["ip", "link", "set", "br0", "up"], FABRIC);
  for (const [i, node] of NODES.entries()) {
    await addNamespace(node.netns);
    for (const key of ["net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"]) {
      await must(["sysctl", "-qw", key], node.netns);
    }
    const peer = `n${i + 1}`;
    await must([
      "ip",
      "link",
      "add",
      "eth0",
      "netns",
      node.netns,
      "type",
      "veth",
      "peer",
      "name",
      peer,
      "netns",
      FABRIC,
    ]);
    await must(["ip", "link", "set", peer, "master", "br0", "up"], FABRIC);
    await must(["ip", "addr", "add", `${node.address}/16`, "dev", "eth0"], node.netns);
    await must(["ip", "link", "set", "eth0", "up"], node.netns);
  }
  for (const node of NODES) {
    for (const other of NODES) {
      if (other !== node) await must(["ip", "route", "add", other.podCidr, "via", other.address], node.netns);
    }
  }
}

/** A new network namespace with `lo` up. */
export async function addNamespace(name: string): Promise<void> {
  await must(["ip", "netns", "add", name]);
  await must(["ip", "link", "set", "lo", "up"], name);
}

/** A pod's sandbox and what its CNI ADD gave it. */
export interface DemoPod {
  name: string;
  namespace: string;
  node: DemoNode;
  netns: string;
  ip: string;
}

/**
 * A node's CNI network configuration list as Skiff expects to be chained: the reference `bridge` (a gateway and
 * the pods' default route) with `host-local` addresses from the node's pod range, then `skiff`.
 */
export function skiffConflist(o: { name: string; podCidr: string; ipamDir: string; agentSocket: string }) {
  return {
    cniVersion: "1.0.0",
    name: o.name,
    plugins: [
      {
        type: "bridge",
        bridge: "cni0",
        isGateway: true,
        isDefaultGateway: true,
        ipMasq: false,
        ipam: { type: "host-local", ranges: [[{ subnet: o.podCidr }]], dataDir: o.ipamDir },
      },
      { type: "skiff", agentSocket: o.agentSocket, timeoutSeconds: 10 },
    ],
  };
}

/** The list of a demo node. */
export function nodeConflist(node: DemoNode, dir: string) {
  return skiffConflist({
    name: "skiff-demo",
    podCidr: node.podCidr,
    ipamDir: join(dir, "ipam", node.name),
    agentSocket: join(dir, node.name, "run", "cni.sock"),
  });
}

/**
 * Writes `DIR/cni-bin/skiff`, the plugin as the runtime finds it on CNI_PATH: this very skiff (the one installed
 * as /opt/cni/bin/skiff may be another build).
 */
export async function writePluginShim(dir: string): Promise<string> {
  const bin = join(dir, "cni-bin");
  await Deno.mkdir(bin, { recursive: true });
  const quoted = selfCommand().map((a) => `'${a.replaceAll("'", "'\\''")}'`).join(" ");
  await Deno.writeTextFile(
    join(bin, "skiff"),
    `#!/bin/sh\nexport RUST_BACKTRACE=0 DENO_NO_UPDATE_CHECK=1\nexec ${quoted} "$@"\n`,
    { mode: 0o755 },
  );
  return bin;
}

/** Runs one CNI command of the node's list for a pod sandbox; returns the last plugin's result. */
async function cni(
  command: "ADD" | "DEL",
  node: DemoNode,
  dir: string,
  pod: { name: string; namespace: string; netns: string },
): Promise<Record<string, unknown>> {
  const list = nodeConflist(node, dir);
  const plugins = command === "ADD" ? list.plugins : [...list.plugins].reverse();
  const cniPath = [REFERENCE_PLUGINS, join(dir, "cni-bin")];
  const env = [
    `CNI_COMMAND=${command}`,
    `CNI_CONTAINERID=${pod.netns}`,
    `CNI_NETNS=/var/run/netns/${pod.netns}`,
    "CNI_IFNAME=eth0",
    `CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=${pod.namespace};K8S_POD_NAME=${pod.name}`,
    `CNI_PATH=${cniPath.join(":")}`,
  ];
  let prev: Record<string, unknown> | undefined;
  for (const plugin of plugins) {
    const conf = { ...plugin, name: list.name, cniVersion: list.cniVersion, ...(prev ? { prevResult: prev } : {}) };
    const path = plugin.type === "skiff" ? join(dir, "cni-bin", "skiff") : join(REFERENCE_PLUGINS, plugin.type);
    const r = await sh(["env", ...env, path], node.netns, JSON.stringify(conf));
    if (r.code !== 0) {
      let why = r.stdout.trim() || r.stderr.trim();
      try {
        const e = JSON.parse(r.stdout) as { code?: number; msg?: string; details?: string };
        why = `code ${e.code}: ${e.msg}${e.details ? ` (${e.details})` : ""}`;
      } catch { /* not JSON */ }
      throw new DemoError(`CNI ${command} of pod ${pod.namespace}/${pod.name}: plugin ${plugin.type} failed, ${why}`);
    }
    if (command === "ADD") prev = JSON.parse(r.stdout);
  }
  return prev ?? {};
}

/** Makes a pod on `node` through CNI; retries while the skiff plugin answers "try again later" (code 11). */
export async function addPod(node: DemoNode, dir: string, namespace: string, name: string): Promise<DemoPod> {
  const netns = `${NETNS_PREFIX}${name}`;
  await addNamespace(netns);
  const sandbox = { name, namespace, netns };
  let lastError: Error | undefined;
  for (let attempt = 0; attempt < 30; attempt++) {
    try {
      const result = await cni("ADD", node, dir, sandbox);
      const ip = (result.ips as { address: string }[] | undefined)?.[0]?.address.split("/")[0];
      if (!ip) throw new DemoError(`CNI ADD of pod ${namespace}/${name} gave no address`);
      return { name, namespace, node, netns, ip };
    } catch (error) {
      lastError = error as Error;
      await cni("DEL", node, dir, sandbox).catch(() => {});
      if (!/code 11:/.test(lastError.message)) throw lastError;
      await new Promise((r) => setTimeout(r, 500));
    }
  }
  throw lastError!;
}
