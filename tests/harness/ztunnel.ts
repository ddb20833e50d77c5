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
import { listenIn } from "./tcp.ts";

const MAIN = new URL("../../main.ts", import.meta.url).pathname;

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

export class ZtunnelProcess implements AsyncDisposable {
  readonly lines: Record<string, unknown>[] = [];
  #child: Deno.ChildProcess;
  #agentListener: Deno.UnixListener;
  #agent: AgentConn | undefined;
  #done: Promise<unknown>;
  #waiters: (() => void)[] = [];

  private constructor(
    readonly name: string,
    readonly ports: { admin: number; metrics: number; readiness: number },
    child: Deno.ChildProcess,
    listener: Deno.UnixListener,
  ) {
    this.#child = child;
    this.#agentListener = listener;
    this.#done = Promise.all([this.#read(child.stdout), this.#read(child.stderr)]);
  }

  /** The process id, for RSS readings. */
  get pid(): number {
    return this.#child.pid;
  }

  static async start(
    name: string,
    opts: { dir: string; caDir: string; configFile: string },
    env: Record<string, string> = {},
  ) {
    const socket = join(opts.dir, `${name}.sock`);
    const listener = Deno.listen({ transport: "unix", path: socket });
    const base = 20_000 + Math.floor(Math.random() * 40_000);
    const ports = { admin: base, metrics: base + 1, readiness: base + 2 };
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--allow-all",
        MAIN,
        "ztunnel",
        `--local-config=${opts.configFile}`,
        `--ca-dir=${opts.caDir}`,
        `--handoff-socket=${socket}`,
        `--admin-port=${ports.admin}`,
        `--metrics-port=${ports.metrics}`,
        `--readiness-port=${ports.readiness}`,
      ],
      env: { LOG_FORMAT: "json", LOG_LEVEL: "debug", RUST_BACKTRACE: "0", ...env },
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const z = new ZtunnelProcess(name, ports, child, listener);
    const accepted = await Promise.race([
      listener.accept(),
      child.status.then((s) => {
        throw new Error(`ztunnel ${name} exited with ${s.code}: ${JSON.stringify(z.lines.slice(-5))}`);
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
  async waitForLog(test: (l: Record<string, unknown>) => boolean, timeoutMs = 10_000) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.lines.find(test);
      if (found) return found;
      if (Date.now() > deadline) {
        throw new Error(`ztunnel ${this.name}: no such log line; last: ${JSON.stringify(this.lines.slice(-8))}`);
      }
      let timer: ReturnType<typeof setTimeout> | undefined;
      await new Promise<void>((r) => {
        this.#waiters.push(r);
        timer = setTimeout(r, 200);
      });
      clearTimeout(timer);
    }
  }

  /** The "connection complete" lines so far. */
  accessLogs(): Record<string, unknown>[] {
    return this.lines.filter((l) => l.msg === "connection complete");
  }

  async #read(stream: ReadableStream<Uint8Array>) {
    let rest = "";
    for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
      const parts = (rest + chunk).split("\n");
      rest = parts.pop()!;
      for (const line of parts) {
        try {
          this.lines.push(JSON.parse(line));
        } catch {
          this.lines.push({ msg: line });
        }
      }
      for (const w of this.#waiters.splice(0)) w();
    }
  }

  async [Symbol.asyncDispose]() {
    try {
      this.#child.kill("SIGTERM");
    } catch { /* already gone */ }
    const timer = setTimeout(() => {
      try {
        this.#child.kill("SIGKILL");
      } catch { /* gone */ }
    }, 5000);
    await this.#child.status;
    clearTimeout(timer);
    await this.#done;
    this.#agent?.close();
    this.#agentListener.close();
  }
}

/** An echo app in a pod: answers each connection's bytes with `name:` + bytes, and records client addresses. */
export function echoApp(pod: Pod, port: number, name = pod.name) {
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
