/**
 * A real `skiff control` process for integration tests: its own data and manifests directories (removed on
 * dispose), loopback ports picked at random, node tokens issued with `skiff control node add` exactly as an
 * operator would, and a crash (`kill`) and restart on the same data directory.
 */

import { join } from "node:path";
import { ControlConnection } from "../../mesh/control_client.ts";
import { REGISTRATIONS_PATH } from "../../mesh/protocol/config_stream.ts";
import type { Pod } from "./netns.ts";
import { SkiffProcess } from "./process.ts";
import { freePortBase } from "./ports.ts";

const MAIN = new URL("../../main.ts", import.meta.url).pathname;

export class ControlProcess implements AsyncDisposable {
  process: SkiffProcess;
  readonly port = freePortBase(2);
  readonly monitoringPort = this.port + 1;
  readonly dataDir: string;
  readonly manifests: string;

  private constructor(readonly dir: string, readonly extraArgs: string[], readonly env: Record<string, string>) {
    this.dataDir = join(dir, "data");
    this.manifests = join(dir, "manifests");
    this.process = this.#spawn();
  }

  /** Starts a control plane over `manifests` (file name → YAML) and waits until it serves (`readyMs` at most). */
  static async start(
    manifests: Record<string, string> = {},
    extraArgs: string[] = [],
    env: Record<string, string> = {},
    readyMs = 20_000,
  ): Promise<ControlProcess> {
    const dir = await Deno.makeTempDir({ prefix: "skiff-cp-" });
    await Deno.mkdir(join(dir, "manifests"));
    for (const [name, text] of Object.entries(manifests)) await Deno.writeTextFile(join(dir, "manifests", name), text);
    const cp = new ControlProcess(dir, extraArgs, env);
    await cp.ready(readyMs);
    return cp;
  }

  /** `https://127.0.0.1:PORT`. */
  get url(): string {
    return `https://127.0.0.1:${this.port}`;
  }

  #spawn(): SkiffProcess {
    return new SkiffProcess("control", [
      "control",
      `--data-dir=${this.dataDir}`,
      `--manifests=${this.manifests}`,
      "--listen=127.0.0.1",
      `--port=${this.port}`,
      `--monitoring-port=${this.monitoringPort}`,
      ...this.extraArgs,
    ], this.env);
  }

  /** Waits until the HTTPS listener is up. */
  async ready(timeoutMs = 20_000): Promise<void> {
    await this.process.waitForLog((l) => String(l.msg).startsWith("listener established: config stream"), timeoutMs);
  }

  /** Issues node `name`'s token into DIR/nodes/NAME/{token,root-cert.pem}; returns the token file. */
  async addNode(name: string): Promise<string> {
    const out = join(this.dir, "nodes", name);
    const result = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-all", MAIN, "control", "node", "add", name, `--data-dir=${this.dataDir}`, `--out=${out}`],
      env: { RUST_BACKTRACE: "0", LOG_LEVEL: "warn" },
    }).output();
    if (!result.success) throw new Error(`node add ${name}: ${new TextDecoder().decode(result.stderr)}`);
    return join(out, "token");
  }

  /** Runs `skiff control node remove NAME`. */
  async removeNode(name: string): Promise<void> {
    const result = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-all", MAIN, "control", "node", "remove", name, `--data-dir=${this.dataDir}`],
      env: { RUST_BACKTRACE: "0", LOG_LEVEL: "warn" },
    }).output();
    if (!result.success) throw new Error(`node remove ${name}: ${new TextDecoder().decode(result.stderr)}`);
  }

  /** Writes (or replaces) a manifest file. */
  async writeManifest(name: string, text: string): Promise<void> {
    const tmp = join(this.dir, `.${name}.tmp`);
    await Deno.writeTextFile(tmp, text);
    await Deno.rename(tmp, join(this.manifests, name)); // atomic, as a careful operator (or kubectl cp) writes
  }

  /**
   * Reports `pods` of `namespace` redirected, as the node agent of the node whose token is `tokenFile` does (the
   * tests that play the agent); returns the control plane's answer (`{accepted: N}` when all went in).
   */
  async reportRedirected(
    tokenFile: string,
    namespace: string,
    pods: readonly Pick<Pod, "name" | "address">[],
  ): Promise<number> {
    const agent = new ControlConnection({
      url: this.url,
      tokenFile,
      caFile: tokenFile.replace(/token$/, "root-cert.pem"),
    });
    try {
      const r = await agent.request("PUT", REGISTRATIONS_PATH, {
        pods: pods.map((p) => ({ namespace, name: p.name, ips: [p.address], redirected: true })),
      });
      return await r.json();
    } finally {
      agent.close();
    }
  }

  /** GET /status on the monitoring port. */
  async status(): Promise<{ version: number; problems: { text: string }[]; notes: unknown[] }> {
    const response = await fetch(`http://127.0.0.1:${this.monitoringPort}/status`);
    return await response.json();
  }

  /** Kills the process (a crash). */
  async kill(): Promise<void> {
    await this.process.kill();
  }

  /** Starts it again on the same data directory and waits until it serves. */
  async restart(): Promise<void> {
    await this.process[Symbol.asyncDispose]();
    this.process = this.#spawn();
    await this.ready();
  }

  async [Symbol.asyncDispose]() {
    await this.process[Symbol.asyncDispose]();
    await Deno.remove(this.dir, { recursive: true }).catch(() => {});
  }
}
