/**
 * A fake cluster in network namespaces, for root-only tests of anything that crosses a network: a fabric
 * namespace holding a bridge, node namespaces joined by it, and pod namespaces each with a veth to its
 * node, a /32 address from the node's range, and a default route via the node (as ztunnel's namespaced
 * tests and Calico-style CNIs do). Nothing routes off the machine: the fabric is not connected to the host's
 * namespace, and every address lives only inside namespaces this fixture made.
 *
 * ```ts
 * netnsTest("a pod reaches a pod on another node", async () => {
 *   await using cluster = await NetnsCluster.create("reach", { nodes: 2 });
 *   const a = await cluster.addPod(cluster.nodes[0], "a");
 *   ...
 * });
 * ```
 *
 * Everything is removed by `await using` even when the test fails. Names carry the test's slug and a random
 * part, so test files can run in parallel; interface names inside a namespace never collide with the host's.
 *
 * Address plan: fabric 172.30.0.0/16 (node i is 172.30.0.i); node i's pods are 10.0.i.0/24, the node side
 * of each pod's veth is 10.0.i.1, pod j of node i is 10.0.i.(j+1).
 *
 * @module
 */

import { loadNetnsSupport, netnsPath } from "../../mesh/netns_linux.ts";

/** Whether this process can build namespaces. */
export const IS_ROOT = Deno.uid() === 0;
/** Whether this is CI, where root-only tests must run rather than skip. */
export const IN_CI = Deno.env.get("CI") === "true";

if (IS_ROOT) loadNetnsSupport();

/**
 * Declares a test that needs root: skipped locally without root, failing in CI without it.
 * The sanitizers stay on: the fixture awaits every process and closes every resource it opens.
 */
export function netnsTest(name: string, fn: (t: Deno.TestContext) => Promise<void>): void {
  Deno.test({
    name: `${name} [root, network namespaces]`,
    ignore: !IS_ROOT && !IN_CI,
    fn: async (t) => {
      if (!IS_ROOT) throw new Error("this test needs root (CI=true is set, so it may not be skipped)");
      await fn(t);
    },
  });
}

/** Output of a command. */
export interface Output {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a command; returns its output without throwing. */
export async function run(cmd: string[], opts: { stdin?: string } = {}): Promise<Output> {
  const child = new Deno.Command(cmd[0], {
    args: cmd.slice(1),
    stdin: opts.stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (opts.stdin !== undefined) {
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode(opts.stdin));
    await w.close();
  }
  const out = await child.output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** Runs a command and throws, with its stderr, when it fails. */
export async function must(cmd: string[]): Promise<string> {
  const out = await run(cmd);
  if (out.code !== 0) throw new Error(`${cmd.join(" ")} failed (exit ${out.code}): ${out.stderr.trim()}`);
  return out.stdout;
}

/** Makes a veth pair with one end, `name`, in `netns` and the other, `peer`, in `peerNetns`. */
function veth(netns: string, name: string, peerNetns: string, peer: string): Promise<string> {
  return must(["ip", "link", "add", name, "netns", netns, "type", "veth", "peer", "name", peer, "netns", peerNetns]);
}

/** A node: a namespace on the fabric that routes for its pods. */
export interface Node {
  name: string;
  index: number;
  netns: string;
  /** Its address on the fabric. */
  address: string;
  /** Its pods' range. */
  podCidr: string;
  /** The node side of every pod's veth: the pods' default gateway. */
  gateway: string;
  pods: Pod[];
}

/** A pod: a namespace with one veth to its node. */
export interface Pod {
  name: string;
  node: Node;
  netns: string;
  /** `/var/run/netns/NAME`, for setns. */
  netnsPath: string;
  address: string;
  /** The veth's name on the node side. */
  hostVeth: string;
}

let counter = 0;

/** A fake cluster of nodes and pods in network namespaces; dispose it to remove everything. */
export class NetnsCluster implements AsyncDisposable {
  /** Prefix of every namespace this cluster made. */
  readonly prefix: string;
  readonly fabric: string;
  readonly nodes: Node[] = [];
  readonly #namespaces: string[] = [];
  #disposed = false;

  private constructor(prefix: string) {
    this.prefix = prefix;
    this.fabric = `${prefix}-fab`;
  }

  /** Makes a cluster named after `testName` with `nodes` nodes (default 1). */
  static async create(testName: string, opts: { nodes?: number } = {}): Promise<NetnsCluster> {
    const slug = testName.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-|-$/g, "").slice(0, 16) || "t";
    const rand = crypto.getRandomValues(new Uint8Array(3)).reduce((s, b) => s + b.toString(16).padStart(2, "0"), "");
    const cluster = new NetnsCluster(`sk-${slug}-${rand}${counter++}`);
    try {
      await cluster.#addNamespace(cluster.fabric);
      await must(["ip", "-n", cluster.fabric, "link", "add", "br0", "type", "bridge"]);
      await must(["ip", "-n", cluster.fabric, "link", "set", "br0", "up"]);
      for (let i = 0; i < (opts.nodes ?? 1); i++) await cluster.addNode();
    } catch (err) {
      await cluster[Symbol.asyncDispose]();
      throw err;
    }
    return cluster;
  }

  async #addNamespace(name: string): Promise<void> {
    await must(["ip", "netns", "add", name]);
    this.#namespaces.push(name);
    await must(["ip", "-n", name, "link", "set", "lo", "up"]);
  }

  /** Adds a node on the fabric, with routes to and from every other node's pods. */
  async addNode(): Promise<Node> {
    const index = this.nodes.length + 1;
    if (index > 250) throw new Error("NetnsCluster: at most 250 nodes");
    const netns = `${this.prefix}-n${index}`;
    const node: Node = {
      name: `node${index}`,
      index,
      netns,
      address: `172.30.0.${index}`,
      podCidr: `10.0.${index}.0/24`,
      gateway: `10.0.${index}.1`,
      pods: [],
    };
    await this.#addNamespace(netns);
    for (const key of ["net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"]) {
      await must(["ip", "netns", "exec", netns, "sysctl", "-qw", key]);
    }
    await veth(netns, "eth0", this.fabric, `n${index}`);
    await must(["ip", "-n", this.fabric, "link", "set", `n${index}`, "master", "br0", "up"]);
    await must(["ip", "-n", netns, "addr", "add", `${node.address}/16`, "dev", "eth0"]);
    await must(["ip", "-n", netns, "link", "set", "eth0", "up"]);
    for (const other of this.nodes) {
      await must(["ip", "-n", netns, "route", "add", other.podCidr, "via", other.address]);
      await must(["ip", "-n", other.netns, "route", "add", node.podCidr, "via", node.address]);
    }
    this.nodes.push(node);
    return node;
  }

  /** Adds a pod to `node`: a namespace with eth0 holding the next address of the node's range. */
  async addPod(node: Node, name = `pod${node.pods.length + 1}`): Promise<Pod> {
    const j = node.pods.length + 1;
    if (j > 250) throw new Error("NetnsCluster: at most 250 pods a node");
    const netns = `${this.prefix}-n${node.index}p${j}`;
    const pod: Pod = {
      name,
      node,
      netns,
      netnsPath: netnsPath(netns),
      address: `10.0.${node.index}.${j + 1}`,
      hostVeth: `vp${j}`,
    };
    await this.#addNamespace(netns);
    await veth(netns, "eth0", node.netns, pod.hostVeth);
    await must(["ip", "-n", node.netns, "addr", "add", `${node.gateway}/32`, "dev", pod.hostVeth]);
    await must(["ip", "-n", node.netns, "link", "set", pod.hostVeth, "up"]);
    await must(["ip", "-n", node.netns, "route", "add", `${pod.address}/32`, "dev", pod.hostVeth]);
    await must(["ip", "-n", netns, "addr", "add", `${pod.address}/32`, "dev", "eth0"]);
    await must(["ip", "-n", netns, "link", "set", "eth0", "up"]);
    await must(["ip", "-n", netns, "route", "add", `${node.gateway}/32`, "dev", "eth0"]);
    await must(["ip", "-n", netns, "route", "add", "default", "via", node.gateway, "dev", "eth0"]);
    node.pods.push(pod);
    return pod;
  }

  /**
   * Makes an empty namespace (only `lo`, up) named after this cluster, removed with it: a sandbox for a CNI
   * plugin to wire, as a container runtime makes one. Returns its name and path.
   */
  async addSandbox(suffix: string): Promise<{ name: string; path: string }> {
    const name = `${this.prefix}-${suffix}`;
    await this.#addNamespace(name);
    return { name, path: netnsPath(name) };
  }

  /** Runs a command inside a namespace. */
  exec(netns: string, cmd: string[]): Promise<Output> {
    return run(["ip", "netns", "exec", netns, ...cmd]);
  }

  /** The namespaces made so far. */
  namespaces(): readonly string[] {
    return this.#namespaces;
  }

  /** Removes every namespace (and with them every veth and route) this cluster made. */
  async [Symbol.asyncDispose](): Promise<void> {
    if (this.#disposed) return;
    this.#disposed = true;
    const errors: Error[] = [];
    for (const ns of [...this.#namespaces].reverse()) {
      const out = await run(["ip", "netns", "del", ns]);
      if (out.code !== 0 && !/No such file/.test(out.stderr)) {
        errors.push(new Error(`ip netns del ${ns}: ${out.stderr.trim()}`));
      }
    }
    if (errors.length) throw new AggregateError(errors, `NetnsCluster ${this.prefix}: cleanup failed`);
  }
}

/** Names of the namespaces that exist now with this prefix (for leak checks). */
export async function namespacesWithPrefix(prefix: string): Promise<string[]> {
  const out = await must(["ip", "-j", "netns", "list"]);
  const list = out.trim() ? JSON.parse(out) as { name: string }[] : [];
  return list.map((n) => n.name).filter((n) => n.startsWith(prefix));
}
