/**
 * `skiff` as a CNI plugin: what runs when a container runtime executes the binary with `CNI_COMMAND` set. It is
 * chained after the plugin that gives the pod its interface and addresses (the reference `bridge` with
 * `host-local`, Calico, ...), passes that plugin's result through unchanged, and for a Kubernetes pod asks the
 * node agent to enrol it (mesh/protocol/cni.ts). ADD succeeds only once the agent says the pod's rules are in
 * place and ztunnel acknowledged it, or that the pod is not in the mesh; an agent that cannot be reached or a
 * ztunnel that is not ready is CNI error 11 (try again later), so the runtime never starts an enrolled pod
 * whose traffic would flow unredirected (fail closed, as istio-cni).
 *
 * DEL always ends in success when there is nothing left to undo (repeated, netns gone, never added, after a
 * failed ADD). With the agent down, DEL removes the pod's rules itself and leaves a note in the agent's run
 * directory (`deleted/<containerId>`) that the agent reads when it is back. CHECK asks the agent to verify the
 * rules. VERSION, GC and STATUS answer as the spec says.
 *
 * This runs once per pod event, so it loads only what it uses: no Kubernetes client, no control-plane code.
 *
 * @module
 */

import { dirname, join } from "node:path";
import {
  AGENT_PATHS,
  CNI_CODES,
  CNI_LATEST,
  CNI_VERSIONS,
  type CniEnvironment,
  CniError,
  compareVersions,
  decodeNetConf,
  type PodEvent,
  readCniEnvironment,
  resultAddresses,
  type SkiffNetConf,
} from "../mesh/protocol/cni.ts";
import { removeRedirect } from "./redirect_linux.ts";

/** An answer of the agent. */
export interface AgentAnswer {
  status: number;
  body: unknown;
}

/** What the plugin does outside itself; real in {@link runCniPlugin}, replaced in unit tests. */
export interface PluginDeps {
  /** One request to the agent; throws when it cannot be reached or does not answer in time. */
  agent(socket: string, method: "GET" | "POST", path: string, body: unknown, timeoutMs: number): Promise<AgentAnswer>;
  /** Removes the in-pod rules (DEL with the agent down). */
  removeRedirect(netns: string): Promise<void>;
  /** Whether a network namespace path still exists. */
  exists(path: string): Promise<boolean>;
  /** Writes a file, creating its directory. */
  writeFile(path: string, text: string): Promise<void>;
}

/** What one run prints and exits with. */
export interface PluginOutcome {
  exit: number;
  /** For the runtime: the result, the version answer or a CNI error. */
  stdout: string;
  /** For the runtime's log. */
  stderr: string;
}

/** The directory (beside the agent's socket) where DELs made while the agent was down are noted. */
export function deletedDir(agentSocket: string): string {
  return join(dirname(agentSocket), "deleted");
}

/** Runs one CNI command. Never throws: every failure is a CNI error on stdout. */
export async function cniPlugin(
  envVars: Record<string, string | undefined>,
  stdin: string,
  deps: PluginDeps,
): Promise<PluginOutcome> {
  let version = CNI_LATEST;
  try {
    // VERSION is answered whatever else is wrong, as long as the configuration (if any) names a version.
    if (envVars.CNI_COMMAND === "VERSION") return ok(versionAnswer(stdin));
    const env = readCniEnvironment(envVars);
    const conf = decodeNetConf(stdin);
    version = conf.cniVersion;
    return await dispatch(env, conf, deps);
  } catch (error) {
    const e = error instanceof CniError
      ? error
      : new CniError(CNI_CODES.ioFailure, `skiff: ${(error as Error).message ?? String(error)}`);
    return {
      exit: 1,
      stdout: JSON.stringify(e.toJSON(version)),
      stderr: `skiff cni plugin: ${e.message}${e.details ? ` (${e.details})` : ""}`,
    };
  }
}

function ok(stdout = "", stderr = ""): PluginOutcome {
  return { exit: 0, stdout, stderr };
}

function versionAnswer(stdin: string): string {
  let cniVersion = CNI_LATEST;
  try {
    const v = JSON.parse(stdin)?.cniVersion;
    if (typeof v === "string" && v !== "") cniVersion = v;
  } catch { /* no configuration: answer with the newest */ }
  return JSON.stringify({ cniVersion, supportedVersions: CNI_VERSIONS });
}

function needVersion(conf: SkiffNetConf, min: string, command: string): void {
  if (compareVersions(conf.cniVersion, min) < 0) {
    throw new CniError(
      CNI_CODES.incompatibleVersion,
      "incompatible CNI versions",
      `${command} needs cniVersion ${min} or later, config is ${JSON.stringify(conf.cniVersion)}`,
    );
  }
}

async function dispatch(env: CniEnvironment, conf: SkiffNetConf, deps: PluginDeps): Promise<PluginOutcome> {
  const timeoutMs = conf.timeoutSeconds * 1000;
  const pod = podOf(env, conf);
  switch (env.command) {
    case "ADD": {
      const prev = chained(conf, "ADD");
      const result = JSON.stringify(prev);
      if (!pod.kubernetes) {
        return ok(
          result,
          "skiff: not a pod (CNI_ARGS lacks K8S_POD_NAME, or K8S_POD_NAMESPACE and the configuration names no " +
            "namespace); passed through",
        );
      }
      if (pod.excluded) return ok(result, `skiff: namespace ${pod.event.podNamespace} is excluded; passed through`);
      const event = { ...pod.event, ips: resultAddresses(prev) };
      await ask(deps, conf, "POST", AGENT_PATHS.add, event, timeoutMs, "ADD");
      return ok(result);
    }
    case "DEL": {
      try {
        await ask(deps, conf, "POST", AGENT_PATHS.del, pod.event, timeoutMs, "DEL");
        return ok();
      } catch (error) {
        // DEL ends in success whatever happens (the runtime would otherwise retry forever, and the namespace
        // goes anyway): undo what is ours ourselves, leave the agent a note, and say what went wrong on stderr.
        const notes = [`skiff: DEL: ${(error as Error).message}`];
        try {
          if (env.netns !== "" && await deps.exists(env.netns)) await deps.removeRedirect(env.netns);
          notes.push("removed the pod's rules");
        } catch (e) {
          notes.push(`could not remove the pod's rules: ${(e as Error).message}`);
        }
        try {
          await deps.writeFile(join(deletedDir(conf.agentSocket), env.containerId), JSON.stringify(pod.event));
          notes.push("left a note for the agent");
        } catch (e) {
          notes.push(`could not leave a note for the agent: ${(e as Error).message}`);
        }
        return ok("", notes.join("; "));
      }
    }
    case "CHECK": {
      needVersion(conf, "0.4.0", "CHECK");
      chained(conf, "CHECK");
      if (!pod.kubernetes || pod.excluded) return ok();
      await ask(deps, conf, "POST", AGENT_PATHS.check, pod.event, timeoutMs, "CHECK");
      return ok();
    }
    case "GC": {
      needVersion(conf, "1.1.0", "GC");
      if (!conf.validAttachments) {
        // Taking "no list" for "none valid" would strip every running pod of its redirection.
        throw new CniError(
          CNI_CODES.invalidConfig,
          "invalid network configuration: GC needs cni.dev/valid-attachments",
        );
      }
      try {
        const body = { validAttachments: conf.validAttachments };
        await ask(deps, conf, "POST", AGENT_PATHS.gc, body, timeoutMs, "GC");
      } catch (error) {
        // Nothing is lost: the agent drops pods whose namespaces are gone on its own.
        if (!(error instanceof CniError) || error.code !== CNI_CODES.tryAgainLater) throw error;
        return ok("", `skiff: ${error.message}; nothing collected`);
      }
      return ok();
    }
    case "STATUS": {
      needVersion(conf, "1.1.0", "STATUS");
      let answer: AgentAnswer;
      try {
        answer = await deps.agent(conf.agentSocket, "GET", AGENT_PATHS.status, undefined, timeoutMs);
      } catch (error) {
        throw new CniError(CNI_CODES.notAvailable, unreachable(conf, error));
      }
      const status = answer.body as { ready?: boolean; reason?: string };
      if (answer.status !== 200 || status?.ready !== true) {
        throw new CniError(
          CNI_CODES.notAvailable,
          `the skiff node agent is not ready: ${status?.reason ?? "no reason given"}`,
        );
      }
      return ok();
    }
    default:
      return ok(versionAnswer(JSON.stringify({ cniVersion: conf.cniVersion })));
  }
}

function chained(conf: SkiffNetConf, command: string): Record<string, unknown> {
  if (!conf.prevResult) {
    throw new CniError(
      CNI_CODES.invalidConfig,
      `invalid network configuration: skiff is a chained plugin and ${command} needs prevResult ` +
        "(list skiff after the plugin that creates the pod's interface)",
    );
  }
  return conf.prevResult;
}

function podOf(env: CniEnvironment, conf: SkiffNetConf): { event: PodEvent; kubernetes: boolean; excluded: boolean } {
  // Kubernetes runtimes pass both; podman passes only K8S_POD_NAME (the container's name), so a VM's conflist
  // names the namespace of its containers (docs/vm-install.md). The runtime's, when given, wins.
  const podNamespace = env.args.K8S_POD_NAMESPACE || conf.namespace;
  const podName = env.args.K8S_POD_NAME ?? "";
  return {
    event: {
      containerId: env.containerId,
      netns: env.netns,
      ifname: env.ifname,
      podNamespace,
      podName,
      podUid: env.args.K8S_POD_UID ?? "",
      ips: [],
    },
    kubernetes: podNamespace !== "" && podName !== "",
    excluded: conf.excludeNamespaces.includes(podNamespace),
  };
}

function unreachable(conf: SkiffNetConf, error: unknown): string {
  const why = (error as Error)?.name === "TimeoutError"
    ? `did not answer within ${conf.timeoutSeconds} s`
    : `is not reachable (${(error as Error)?.message ?? String(error)})`;
  return `the skiff node agent at ${conf.agentSocket} ${why}`;
}

/** One request to the agent; its refusal becomes the CNI error it carries. */
async function ask(
  deps: PluginDeps,
  conf: SkiffNetConf,
  method: "POST",
  path: string,
  body: unknown,
  timeoutMs: number,
  command: string,
): Promise<unknown> {
  let answer: AgentAnswer;
  try {
    answer = await deps.agent(conf.agentSocket, method, path, body, timeoutMs);
  } catch (error) {
    throw new CniError(
      CNI_CODES.tryAgainLater,
      `${unreachable(conf, error)}; ${command} waits for it${command === "ADD" ? " (fail closed)" : ""}`,
    );
  }
  if (answer.status >= 200 && answer.status < 300) return answer.body;
  const e = answer.body as { code?: unknown; msg?: unknown; details?: unknown };
  const code = typeof e?.code === "number" ? e.code : CNI_CODES.tryAgainLater;
  const msg = typeof e?.msg === "string" ? e.msg : `the skiff node agent answered ${answer.status}`;
  throw new CniError(code, msg, typeof e?.details === "string" ? e.details : undefined);
}

/** Whether a path exists (a network namespace, mostly). */
export async function pathExists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

/** The real dependencies: HTTP over the agent's unix socket, nsenter, the filesystem. */
export const realPluginDeps: PluginDeps = {
  async agent(socket, method, path, body, timeoutMs) {
    const client = Deno.createHttpClient({ proxy: { transport: "unix", path: socket } });
    try {
      const response = await fetch(`http://skiff-agent${path}`, {
        method,
        client,
        headers: body === undefined ? {} : { "content-type": "application/json" },
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(timeoutMs),
      });
      const text = await response.text();
      let parsed: unknown = text;
      try {
        parsed = JSON.parse(text);
      } catch { /* not JSON: kept as text */ }
      return { status: response.status, body: parsed };
    } finally {
      client.close();
    }
  },
  removeRedirect,
  exists: pathExists,
  async writeFile(path, text) {
    await Deno.mkdir(dirname(path), { recursive: true, mode: 0o700 });
    await Deno.writeTextFile(path, text, { mode: 0o600 });
  },
};

/** The plugin's process: environment and stdin in, result or CNI error out; returns the exit code. */
export async function runCniPlugin(): Promise<number> {
  const stdin = await new Response(Deno.stdin.readable).text();
  const outcome = await cniPlugin(Deno.env.toObject(), stdin, realPluginDeps);
  if (outcome.stdout !== "") await writeAll(Deno.stdout, outcome.stdout);
  if (outcome.stderr !== "") await writeAll(Deno.stderr, `${outcome.stderr}\n`);
  return outcome.exit;
}

async function writeAll(to: { write(p: Uint8Array): Promise<number> }, text: string): Promise<void> {
  let bytes = new TextEncoder().encode(text);
  while (bytes.length > 0) bytes = bytes.subarray(await to.write(bytes));
}
