/**
 * CNI for tests, as a container runtime does it. `CniRuntime` is a test double for libcni (there is no
 * containerd here): it runs a network configuration list's plugins by the CNI spec: each plugin found by its
 * `type` in CNI_PATH, given the list's `name` and `cniVersion`, CNI_COMMAND/CONTAINERID/NETNS/IFNAME/ARGS/PATH
 * in the environment, ADD in order with each plugin's result as the next one's `prevResult`, DEL in reverse
 * order with the cached ADD result, CHECK in order with it; and, as kubelet does, a DEL after a failed ADD. The
 * plugins are the real ones: Debian's containernetworking-plugins (`bridge`, `host-local`) and `skiff` (this
 * checkout's main.ts behind a shim). They run in the node's network namespace, where a runtime would run them.
 *
 * `SkiffNode` runs a node's real `skiff cni-agent` and `skiff ztunnel` processes against a control plane.
 */

import { join } from "node:path";
import { realPluginDeps } from "../../cni/plugin.ts";
import { AGENT_PATHS } from "../../mesh/protocol/cni.ts";
import { SkiffProcess } from "./process.ts";
import { type Node, run } from "./netns.ts";
import { skiffConflist } from "../../demo/cluster.ts";
import { freePortBase } from "./ports.ts";

const MAIN = new URL("../../main.ts", import.meta.url).pathname;
/** Where Debian installs the reference plugins. */
export const REFERENCE_PLUGINS = "/usr/lib/cni";

/** A directory holding the `skiff` plugin shim, to put in CNI_PATH; removed on dispose. */
export async function skiffPluginDir() {
  const dir = await Deno.makeTempDir({ prefix: "skiff-cni-bin-" });
  const shim = join(dir, "skiff");
  await Deno.writeTextFile(
    shim,
    `#!/bin/sh\nexport RUST_BACKTRACE=0 DENO_NO_UPDATE_CHECK=1\n` +
      `exec "${Deno.execPath()}" run --quiet --allow-all --no-prompt "${MAIN}" "$@"\n`,
  );
  await Deno.chmod(shim, 0o755);
  return {
    dir,
    async [Symbol.asyncDispose]() {
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    },
  };
}

/** What one plugin printed and returned. */
export interface PluginRun {
  plugin: string;
  code: number;
  stdout: string;
  stderr: string;
  /** The parsed stdout, when it was JSON. */
  json?: Record<string, unknown>;
}

/** The outcome of a runtime operation: each plugin's run, and the error of the one that failed. */
export interface CniOutcome {
  ok: boolean;
  runs: PluginRun[];
  result?: Record<string, unknown>;
  error?: { code: number; msg: string; details?: string };
}

/** A pod's sandbox as the runtime knows it. */
export interface Sandbox {
  containerId: string;
  netns: string;
  ifname?: string;
  namespace: string;
  name: string;
  uid?: string;
}

/** libcni's part, for one network configuration list on one node. */
export class CniRuntime {
  readonly #cache = new Map<string, Record<string, unknown>>();

  constructor(
    readonly list: { cniVersion: string; name: string; plugins: Record<string, unknown>[] },
    readonly cniPath: string[],
    readonly nodeNetns: string,
  ) {}

  /** The environment a runtime gives a plugin for `command` on sandbox `s`. */
  env(command: string, s: Sandbox): Record<string, string> {
    const args = [`IgnoreUnknown=1`, `K8S_POD_NAMESPACE=${s.namespace}`, `K8S_POD_NAME=${s.name}`];
    args.push(`K8S_POD_INFRA_CONTAINER_ID=${s.containerId}`);
    if (s.uid) args.push(`K8S_POD_UID=${s.uid}`);
    return {
      CNI_COMMAND: command,
      CNI_CONTAINERID: s.containerId,
      CNI_NETNS: s.netns,
      CNI_IFNAME: s.ifname ?? "eth0",
      CNI_ARGS: args.join(";"),
      CNI_PATH: this.cniPath.join(":"),
    };
  }

  async #find(type: string): Promise<string> {
    for (const d of this.cniPath) {
      try {
        await Deno.stat(join(d, type));
        return join(d, type);
      } catch { /* next */ }
    }
    throw new Error(`plugin ${type} not found in ${this.cniPath.join(":")}`);
  }

  /** Runs one plugin with `conf` on stdin, in the node's namespace. */
  async exec(plugin: Record<string, unknown>, env: Record<string, string>, prevResult?: unknown): Promise<PluginRun> {
    const conf = {
      ...plugin,
      name: this.list.name,
      cniVersion: this.list.cniVersion,
      ...(prevResult ? { prevResult } : {}),
    };
    const path = await this.#find(String(plugin.type));
    const envArgs = Object.entries(env).map(([k, v]) => `${k}=${v}`);
    const out = await run(["ip", "netns", "exec", this.nodeNetns, "env", ...envArgs, path], {
      stdin: JSON.stringify(conf),
    });
    let json: Record<string, unknown> | undefined;
    try {
      json = out.stdout.trim() ? JSON.parse(out.stdout) : undefined;
    } catch { /* not JSON */ }
    return { plugin: String(plugin.type), code: out.code, stdout: out.stdout, stderr: out.stderr, json };
  }

  /** ADD: every plugin in order; on failure, a DEL as kubelet sends one. */
  async add(s: Sandbox): Promise<CniOutcome> {
    const runs: PluginRun[] = [];
    let prev: Record<string, unknown> | undefined;
    for (const plugin of this.list.plugins) {
      const r = await this.exec(plugin, this.env("ADD", s), prev);
      runs.push(r);
      if (r.code !== 0) {
        await this.del(s);
        return { ok: false, runs, error: r.json as CniOutcome["error"] };
      }
      prev = r.json;
    }
    this.#cache.set(s.containerId, prev!);
    return { ok: true, runs, result: prev };
  }

  /** DEL: every plugin in reverse order, with the cached result; the first failure stops it, as libcni does. */
  async del(s: Sandbox): Promise<CniOutcome> {
    const runs: PluginRun[] = [];
    const cached = this.#cache.get(s.containerId);
    for (const plugin of [...this.list.plugins].reverse()) {
      const r = await this.exec(plugin, this.env("DEL", s), cached);
      runs.push(r);
      if (r.code !== 0) return { ok: false, runs, error: r.json as CniOutcome["error"] };
    }
    this.#cache.delete(s.containerId);
    return { ok: true, runs };
  }

  /** CHECK: every plugin in order, with the cached result. */
  async check(s: Sandbox): Promise<CniOutcome> {
    const runs: PluginRun[] = [];
    const cached = this.#cache.get(s.containerId);
    if (!cached) throw new Error(`CHECK of ${s.containerId}: no cached ADD result`);
    for (const plugin of this.list.plugins) {
      const r = await this.exec(plugin, this.env("CHECK", s), cached);
      runs.push(r);
      if (r.code !== 0) return { ok: false, runs, error: r.json as CniOutcome["error"] };
    }
    return { ok: true, runs };
  }
}

/** The network configuration list of a node: the one the demo uses, for this node's pod range. */
export function nodeNetwork(node: Node, opts: { ipamDir: string; agentSocket: string }) {
  return skiffConflist({ name: "skiff-test", podCidr: node.podCidr, ...opts });
}

/** A node's `skiff cni-agent` and `skiff ztunnel`, against a control plane. */
export class SkiffNode implements AsyncDisposable {
  agent?: SkiffProcess;
  ztunnel?: SkiffProcess;
  readonly runDir: string;
  readonly ports: { admin: number; metrics: number; readiness: number };

  constructor(
    readonly node: Node,
    readonly control: string,
    readonly tokenFile: string,
    dir: string,
  ) {
    this.runDir = join(dir, `run-${node.name}`);
    const base = freePortBase(3);
    this.ports = { admin: base, metrics: base + 1, readiness: base + 2 };
  }

  get agentSocket(): string {
    return join(this.runDir, "cni.sock");
  }

  /** Starts the agent (with `env` added to its environment) and waits until it listens for the plugin. */
  async startAgent(env: Record<string, string> = {}): Promise<SkiffProcess> {
    const agent = new SkiffProcess(`cni-agent ${this.node.name}`, [
      "cni-agent",
      `--control=${this.control}`,
      `--token-file=${this.tokenFile}`,
      `--run-dir=${this.runDir}`,
      `--node-netns=/var/run/netns/${this.node.netns}`,
    ], env);
    this.agent = agent;
    await agent.waitForLog((l) => l.msg === "listening for the CNI plugin", 20_000);
    return agent;
  }

  /** Starts ztunnel and waits until it is ready (config held, the agent's snapshot served). */
  async startZtunnel(): Promise<SkiffProcess> {
    const z = new SkiffProcess(`ztunnel ${this.node.name}`, [
      "ztunnel",
      `--control=${this.control}`,
      `--token-file=${this.tokenFile}`,
      `--handoff-socket=${join(this.runDir, "ztunnel.sock")}`,
      "--drain-deadline=1s", // tests stop ztunnels with connections still open; no need to wait out 30 s
      `--admin-port=${this.ports.admin}`,
      `--metrics-port=${this.ports.metrics}`,
      `--readiness-port=${this.ports.readiness}`,
    ]);
    this.ztunnel = z;
    await z.waitForLog((l) => String(l.msg).startsWith("ready"), 20_000);
    return z;
  }

  /** The agent's status (`GET /v1/status` on its socket). */
  async status(): Promise<{ ready: boolean; ztunnels: number; pods: { name: string; state: string }[] }> {
    // As the plugin asks it.
    const answer = await realPluginDeps.agent(this.agentSocket, "GET", AGENT_PATHS.status, undefined, 5000);
    if (answer.status !== 200) throw new Error(`agent status: ${answer.status} ${JSON.stringify(answer.body)}`);
    return answer.body as Awaited<ReturnType<SkiffNode["status"]>>;
  }

  async stopAgent(): Promise<void> {
    await this.agent?.[Symbol.asyncDispose]();
    this.agent = undefined;
  }

  async stopZtunnel(): Promise<void> {
    await this.ztunnel?.[Symbol.asyncDispose]();
    this.ztunnel = undefined;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stopZtunnel();
    await this.stopAgent();
  }
}
