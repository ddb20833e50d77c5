/**
 * Runs real `skiff ztunnel` processes for namespaced tests: one per node, each with its own handoff socket (the
 * test plays the node agent, tests/harness/agent.ts), admin ports, and a log the test can search. Also an echo
 * app to run inside pods, which records the client address it saw.
 */

import { join } from "node:path";
import { CertificateAuthority } from "../../certs/ca.ts";
import type { PodInfo } from "../../mesh/protocol/handoff.ts";
import { AgentConn } from "./agent.ts";
import type { Pod } from "./netns.ts";
import { SkiffProcess } from "./process.ts";
import { listenIn } from "./tcp.ts";
import { freePortBase } from "./ports.ts";

/** A directory with a fresh root CA (the cacerts layout) and a local config file; disposing removes it. */
export async function meshDir() {
  const dir = await Deno.makeTempDir({ prefix: "skiff-zt-" });
  const caDir = join(dir, "ca");
  const { ca, keyPem } = await CertificateAuthority.createRoot("cluster.local");
  await ca.save(caDir, keyPem);
  return {
    dir,
    caDir,
    configFile: join(dir, "mesh.yaml"),
    ca,
    async [Symbol.asyncDispose]() {
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    },
  };
}

/** The uid the harness gives a pod of `namespace`. */
export const podUid = (pod: Pod, namespace: string) => `Kubernetes//Pod/${namespace}/${pod.name}`;

/** A local-config workload entry for a pod enrolled for HBONE, its service account named after it. */
export function hboneWorkload(pod: Pod, namespace: string): string {
  return `  - { uid: "${podUid(pod, namespace)}", name: ${pod.name}, namespace: ${namespace}, ` +
    `serviceAccount: ${pod.name}, node: ${pod.node.name}, addresses: [${pod.address}], tunnelProtocol: HBONE }`;
}

/** How a ztunnel gets its config and certificates: a local file and CA directory, or the control plane. */
export type ZtunnelSource =
  | { caDir: string; configFile: string }
  | { control: string; tokenFile: string };

export class ZtunnelProcess implements AsyncDisposable {
  readonly #process: SkiffProcess;
  #agentListener: Deno.UnixListener;
  #agent: AgentConn | undefined;

  private constructor(
    readonly name: string,
    readonly ports: { admin: number; metrics: number; readiness: number },
    process: SkiffProcess,
    listener: Deno.UnixListener,
  ) {
    this.#process = process;
    this.#agentListener = listener;
  }

  /** The log lines so far. */
  get lines(): Record<string, unknown>[] {
    return this.#process.lines;
  }

  /** The process id, for RSS readings. */
  get pid(): number {
    return this.#process.pid;
  }

  /** Resolves with the exit status (after a signal the test sent by {@link pid}). */
  get status(): Promise<Deno.CommandStatus> {
    return this.#process.status;
  }

  static async start(name: string, opts: { dir: string } & ZtunnelSource, env: Record<string, string> = {}) {
    const socket = join(opts.dir, `${name}.sock`);
    const listener = Deno.listen({ transport: "unix", path: socket });
    const base = freePortBase(3);
    const ports = { admin: base, metrics: base + 1, readiness: base + 2 };
    const source = "control" in opts
      ? [`--control=${opts.control}`, `--token-file=${opts.tokenFile}`]
      : [`--local-config=${opts.configFile}`, `--ca-dir=${opts.caDir}`];
    const process = new SkiffProcess(`ztunnel ${name}`, [
      "ztunnel",
      ...source,
      `--handoff-socket=${socket}`,
      "--drain-deadline=1s", // tests stop ztunnels with connections still open; no need to wait out 30 s
      `--admin-port=${ports.admin}`,
      `--metrics-port=${ports.metrics}`,
      `--readiness-port=${ports.readiness}`,
    ], env);
    const z = new ZtunnelProcess(name, ports, process, listener);
    const accepted = await Promise.race([
      listener.accept(),
      process.status.then((s) => {
        throw new Error(`ztunnel ${name} exited with ${s.code}: ${JSON.stringify(process.lines.slice(-5))}`);
      }),
    ]);
    z.#agent = new AgentConn(accepted);
    const hello = await z.#agent.receive();
    if (hello.type !== "hello") throw new Error(`expected hello, got ${JSON.stringify(hello)}`);
    return z;
  }

  /** Hands ztunnel a pod, as the node agent would; resolves with ztunnel's answer. */
  add(uid: string, pod: Pod, info: PodInfo) {
    return this.#agent!.send({ type: "add", uid, workload: info, netns: pod.netnsPath });
  }

  del(uid: string) {
    return this.#agent!.send({ type: "del", uid });
  }

  snapshotSent() {
    return this.#agent!.send({ type: "snapshot-sent" });
  }

  /** Enrols `pod` of `namespace` (service account named after the pod) and ends the snapshot; throws on a nack. */
  async enroll(pod: Pod, namespace: string) {
    const info = { name: pod.name, namespace, serviceAccount: pod.name };
    for (const answer of [await this.add(podUid(pod, namespace), pod, info), await this.snapshotSent()]) {
      if (answer.type !== "ack") throw new Error(`ztunnel ${this.name} refused ${pod.name}: ${JSON.stringify(answer)}`);
    }
  }

  /** Waits for a log line satisfying `test`. */
  waitForLog(test: (l: Record<string, unknown>) => boolean, timeoutMs = 10_000) {
    return this.#process.waitForLog(test, timeoutMs);
  }

  /** The "connection complete" lines so far. */
  accessLogs(): Record<string, unknown>[] {
    return this.lines.filter((l) => l.msg === "connection complete");
  }

  async [Symbol.asyncDispose]() {
    await this.#process[Symbol.asyncDispose]();
    this.#agent?.close();
    this.#agentListener.close();
  }
}

/** An echo app in a pod: answers each connection's bytes with `name:` + bytes, and records client addresses. */
export function echoApp(pod: Pick<Pod, "netnsPath" | "name">, port: number, name = pod.name) {
  const listener = listenIn(pod.netnsPath, "0.0.0.0", port);
  const peers: string[] = [];
  const conns = new Set<Deno.TcpConn>();
  const loop = (async () => {
    for await (const conn of listener) {
      peers.push((conn.remoteAddr as Deno.NetAddr).hostname);
      conns.add(conn);
      (async () => {
        const buf = new Uint8Array(64 * 1024);
        try {
          for (;;) {
            const n = await conn.read(buf);
            if (n === null) break;
            await conn.write(new TextEncoder().encode(`${name}:${new TextDecoder().decode(buf.subarray(0, n))}`));
          }
        } catch { /* reset */ }
        try {
          conn.close();
        } catch { /* closed */ }
        conns.delete(conn);
      })();
    }
  })().catch(() => {});
  return {
    peers,
    async [Symbol.asyncDispose]() {
      listener.close();
      for (const c of conns) {
        try {
          c.close();
        } catch { /* closed */ }
      }
      await loop;
    },
  };
}
