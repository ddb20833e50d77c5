/**
 * The CNI side of in-pod redirection: what a container runtime hands the `skiff` plugin (CNI spec 1.0 and 1.1:
 * environment variables and the network configuration on stdin), the CNI error codes, and the small JSON API
 * between the plugin and the node agent on the agent's unix socket (upstream's `pluginevent.sock`).
 *
 * Plugin → agent, HTTP/1.1 over the unix socket `/var/run/skiff/cni.sock`:
 *
 * ```
 * POST /v1/cni/add    {"containerId","netns","ifname","podNamespace","podName","podUid","ips":[...]}
 * POST /v1/cni/del    {"containerId","netns","ifname","podNamespace","podName"}
 * POST /v1/cni/check  {"containerId","netns","ifname","podNamespace","podName"}
 * POST /v1/cni/gc     {"validAttachments":[{"containerId","ifname"}]}
 * GET  /v1/status     the agent's state: ready, control plane, ztunnels, pods
 * POST /v1/unit/gate  {"cgroup"}: `skiff unit-gate` (cni/unit_gate.ts), a meshed unit's capture for its cgroup now
 * ```
 *
 * Success is 200 with a JSON body; a failure is a non-2xx answer whose body is `{"code","msg","details"}`, the
 * CNI error the plugin prints. Try with `curl --unix-socket /var/run/skiff/cni.sock http://agent/v1/status`.
 *
 * @module
 */

import { canonicalIp } from "../net.ts";
import { checkString, dnsLabel, dnsSubdomain, Fields, show, ValidationError } from "../validate.ts";

/** The versions of the CNI spec the plugin speaks, oldest first. */
export const CNI_VERSIONS = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] as const;
/** The newest, used in answers that have no configuration to take a version from. */
export const CNI_LATEST = "1.1.0";

/** The CNI spec's error codes (1–99 reserved by the spec; 100 and up are the plugin's). */
export const CNI_CODES = {
  incompatibleVersion: 1,
  unsupportedField: 2,
  containerUnknown: 3,
  invalidEnvironment: 4,
  ioFailure: 5,
  decodeFailure: 6,
  invalidConfig: 7,
  tryAgainLater: 11,
  notAvailable: 50,
  notAvailableLimited: 51,
  /** Skiff's: the in-pod rules could not be installed or are not as they should be. */
  redirection: 100,
} as const;

/** A CNI error: printed as `{cniVersion, code, msg, details}` on stdout, exit 1. */
export class CniError extends Error {
  readonly code: number;
  readonly details?: string;
  constructor(code: number, msg: string, details?: string) {
    super(msg);
    this.name = "CniError";
    this.code = code;
    this.details = details;
  }

  /** The JSON the runtime reads. */
  toJSON(cniVersion: string): { cniVersion: string; code: number; msg: string; details?: string } {
    return { cniVersion, code: this.code, msg: this.message, ...(this.details ? { details: this.details } : {}) };
  }
}

/** The plugin's commands. */
export const CNI_COMMANDS = ["ADD", "DEL", "CHECK", "VERSION", "GC", "STATUS"] as const;
export type CniCommand = typeof CNI_COMMANDS[number];

/** What the runtime passes in the environment. */
export interface CniEnvironment {
  command: CniCommand;
  containerId: string;
  /** Empty when not given (DEL may come without one). */
  netns: string;
  ifname: string;
  /** `CNI_ARGS`, parsed. */
  args: Record<string, string>;
  path: string;
}

const REQUIRED: Record<CniCommand, readonly string[]> = {
  ADD: ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"],
  DEL: ["CNI_CONTAINERID", "CNI_IFNAME"],
  CHECK: ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"],
  VERSION: [],
  GC: ["CNI_PATH"],
  STATUS: ["CNI_PATH"],
};

/** A container ID as the spec allows: alphanumerics, then also `_`, `.` and `-`. */
const CONTAINER_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;
/** An interface name as Linux allows. */
const IFNAME = /^[^/:\s]{1,15}$/;

/**
 * Reads the CNI variables, as the spec requires them for the command.
 * @throws {CniError} code 4 naming the variable.
 */
export function readCniEnvironment(env: Record<string, string | undefined>): CniEnvironment {
  const command = env.CNI_COMMAND ?? "";
  if (!(CNI_COMMANDS as readonly string[]).includes(command)) {
    throw new CniError(
      CNI_CODES.invalidEnvironment,
      command === ""
        ? "CNI_COMMAND is not set"
        : `CNI_COMMAND ${show(command)} is not one of ${CNI_COMMANDS.join(", ")}`,
    );
  }
  const cmd = command as CniCommand;
  for (const name of REQUIRED[cmd]) {
    if (!env[name]) throw new CniError(CNI_CODES.invalidEnvironment, `${name} is not set (required for ${cmd})`);
  }
  const containerId = env.CNI_CONTAINERID ?? "";
  if (containerId !== "" && (!CONTAINER_ID.test(containerId) || containerId.length > 256)) {
    throw new CniError(
      CNI_CODES.invalidEnvironment,
      `CNI_CONTAINERID ${show(containerId)} is not a valid container ID`,
    );
  }
  const netns = env.CNI_NETNS ?? "";
  if (netns !== "" && !netns.startsWith("/")) {
    throw new CniError(CNI_CODES.invalidEnvironment, `CNI_NETNS ${show(netns)} is not an absolute path`);
  }
  const ifname = env.CNI_IFNAME ?? "";
  if (ifname !== "" && !IFNAME.test(ifname)) {
    throw new CniError(CNI_CODES.invalidEnvironment, `CNI_IFNAME ${show(ifname)} is not a valid interface name`);
  }
  return {
    command: cmd,
    containerId,
    netns,
    ifname,
    args: parseCniArgs(env.CNI_ARGS ?? ""),
    path: env.CNI_PATH ?? "",
  };
}

/**
 * `CNI_ARGS`: `K=V` pairs separated by `;` (Kubernetes runtimes pass `K8S_POD_NAMESPACE`, `K8S_POD_NAME`,
 * `K8S_POD_UID`, `K8S_POD_INFRA_CONTAINER_ID`, `IgnoreUnknown`).
 * @throws {CniError} code 4 on a pair without `=`.
 */
export function parseCniArgs(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const pair of text.split(";")) {
    if (pair === "") continue;
    const eq = pair.indexOf("=");
    if (eq <= 0) throw new CniError(CNI_CODES.invalidEnvironment, `CNI_ARGS: ${show(pair)} is not KEY=VALUE`);
    out[pair.slice(0, eq)] = pair.slice(eq + 1);
  }
  return out;
}

/** The plugin's own settings in the network configuration, with their defaults. */
export interface SkiffNetConf {
  cniVersion: string;
  name: string;
  /** The node agent's socket. */
  agentSocket: string;
  /** Pods of these namespaces are never sent to the agent. */
  excludeNamespaces: string[];
  /** How long to wait for the agent, in seconds. */
  timeoutSeconds: number;
  /**
   * The namespace of the network's containers when the runtime names none: podman, for one, passes only
   * `K8S_POD_NAME=<container name>` in CNI_ARGS. `K8S_POD_NAMESPACE`, when given, wins. Empty: none.
   */
  namespace: string;
  /** The previous plugin's result, passed through unchanged; absent for DEL/GC/STATUS and a misconfiguration. */
  prevResult?: Record<string, unknown>;
  /** CNI 1.1 GC: the attachments that are still valid. */
  validAttachments?: { containerId: string; ifname: string }[];
}

/** The agent's socket when the configuration names none. */
export const DEFAULT_AGENT_SOCKET = "/var/run/skiff/cni.sock";

/**
 * Decodes the network configuration from stdin. Fields of other plugins and of the runtime (`runtimeConfig`,
 * `capabilities`, `args`, `dns`, ...) are left alone; Skiff's own are checked and named when wrong.
 * @throws {CniError} code 6 when stdin is not a JSON object, 1 for an unsupported version, 7 for a bad field.
 */
export function decodeNetConf(stdin: string): SkiffNetConf {
  let value: unknown;
  try {
    value = JSON.parse(stdin);
  } catch (error) {
    throw new CniError(
      CNI_CODES.decodeFailure,
      "the network configuration on stdin is not JSON",
      (error as Error).message,
    );
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new CniError(CNI_CODES.decodeFailure, "the network configuration on stdin is not a JSON object");
  }
  const conf = value as Record<string, unknown>;
  const cniVersion = negotiateVersion(conf);
  try {
    const f = Fields.of(conf, "");
    const out: SkiffNetConf = {
      cniVersion,
      name: f.string("name", { default: "", max: 253 }),
      agentSocket: f.string("agentSocket", { default: DEFAULT_AGENT_SOCKET, max: 1024 }),
      excludeNamespaces: f.array("excludeNamespaces", (v, p) => checkString(v, p, { check: dnsLabel })),
      timeoutSeconds: f.int("timeoutSeconds", { min: 1, max: 600, default: 5 }),
      namespace: f.string("namespace", { default: "", check: (v) => (v === "" ? undefined : dnsLabel(v)) }),
    };
    if (!out.agentSocket.startsWith("/")) throw new ValidationError("agentSocket", "expected an absolute path");
    const prev = conf.prevResult;
    if (prev !== undefined) {
      if (typeof prev !== "object" || prev === null || Array.isArray(prev)) {
        throw new ValidationError("prevResult", `expected an object, got ${show(prev)}`);
      }
      out.prevResult = prev as Record<string, unknown>;
    }
    const valid = conf["cni.dev/valid-attachments"] ?? conf["cni.dev/attachments"];
    if (valid !== undefined) {
      if (!Array.isArray(valid)) throw new ValidationError("cni.dev/valid-attachments", "expected a list");
      out.validAttachments = valid.map((a, i) => {
        const af = Fields.of(a, `cni.dev/valid-attachments[${i}]`);
        return { containerId: af.string("containerID", { nonEmpty: true }), ifname: af.string("ifname", {}) };
      });
    }
    return out;
  } catch (error) {
    if (error instanceof ValidationError) {
      throw new CniError(CNI_CODES.invalidConfig, `invalid network configuration: ${error.message}`);
    }
    throw error;
  }
}

/**
 * The version to speak: the configuration's `cniVersion`. (With CNI 1.1's `cniVersions` list in a network
 * configuration, the runtime picks one and passes it to the plugin as `cniVersion`.)
 */
function negotiateVersion(conf: Record<string, unknown>): string {
  const known = (v: unknown): v is string => typeof v === "string" && (CNI_VERSIONS as readonly string[]).includes(v);
  const v = conf.cniVersion;
  if (v === undefined || v === "") {
    throw new CniError(CNI_CODES.invalidConfig, "invalid network configuration: cniVersion is required");
  }
  if (!known(v)) {
    throw new CniError(
      CNI_CODES.incompatibleVersion,
      "incompatible CNI versions",
      `config is ${show(v)}, plugin supports ${JSON.stringify(CNI_VERSIONS)}`,
    );
  }
  return v;
}

/** Orders `x.y.z` versions. */
export function compareVersions(a: string, b: string): number {
  const pa = a.split(".").map(Number);
  const pb = b.split(".").map(Number);
  for (let i = 0; i < 3; i++) if ((pa[i] ?? 0) !== (pb[i] ?? 0)) return (pa[i] ?? 0) - (pb[i] ?? 0);
  return 0;
}

/**
 * The container's addresses from a previous result: the `ips` on interfaces inside the sandbox (those with a
 * `sandbox`), or every `ips` entry when the result names no interfaces. Prefix lengths are dropped.
 */
export function resultAddresses(prev: Record<string, unknown> | undefined): string[] {
  if (!prev) return [];
  const interfaces = Array.isArray(prev.interfaces) ? prev.interfaces as Record<string, unknown>[] : [];
  const ips = Array.isArray(prev.ips) ? prev.ips as Record<string, unknown>[] : [];
  const out: string[] = [];
  for (const ip of ips) {
    if (typeof ip?.address !== "string") continue;
    const i = ip.interface;
    if (typeof i === "number" && interfaces[i] && !interfaces[i].sandbox) continue;
    const addr = canonicalIp(ip.address.split("/")[0]);
    if (addr && !out.includes(addr)) out.push(addr);
  }
  return out;
}

/** The paths of the agent's API. */
export const AGENT_PATHS = {
  add: "/v1/cni/add",
  del: "/v1/cni/del",
  check: "/v1/cni/check",
  gc: "/v1/cni/gc",
  status: "/v1/status",
  unitGate: "/v1/unit/gate",
} as const;

/** `POST /v1/unit/gate`: the cgroup v2 path (below the hierarchy's root) the asking process is in. */
export interface UnitGateRequest {
  cgroup: string;
}

/** The agent's yes to a unit gate: the unit's rules hold the cgroup that is at its path now, and ztunnel the unit. */
export interface UnitGateAnswer {
  /** The WorkloadEntry, `NAMESPACE/NAME`. */
  entry: string;
  unit: string;
  cgroup: string;
  /** The inode of the unit's cgroup directory the rules were written for (the cgroup the kernel matches). */
  inode: number;
}

/**
 * Decodes a unit gate body.
 * @throws {ValidationError} naming the field.
 */
export function decodeUnitGateRequest(value: unknown): UnitGateRequest {
  const f = Fields.of(value, "");
  const cgroup = f.string("cgroup", {
    nonEmpty: true,
    max: 1024,
    check: (v) =>
      v.replace(/^\//, "").split("/").some((s) => s === "" || s === "." || s === "..") || v.includes("\0")
        ? "expected a cgroup path such as system.slice/billing.service"
        : undefined,
  });
  f.done();
  return { cgroup };
}

/** A pod event from the plugin. */
export interface PodEvent {
  containerId: string;
  netns: string;
  ifname: string;
  podNamespace: string;
  podName: string;
  /** Kubernetes' pod UID when the runtime gave one. */
  podUid: string;
  /** The pod's addresses (ADD only). */
  ips: string[];
}

const NETNS = /^\/[^\0]*$/;

/**
 * Decodes a pod event body.
 * @throws {ValidationError} naming the field.
 */
export function decodePodEvent(value: unknown): PodEvent {
  const f = Fields.of(value, "");
  const out: PodEvent = {
    containerId: f.string("containerId", {
      nonEmpty: true,
      max: 256,
      check: (v) => (CONTAINER_ID.test(v) ? undefined : "expected a container ID"),
    }),
    netns: f.string("netns", {
      default: "",
      max: 1024,
      check: (v) => (v === "" || NETNS.test(v) ? undefined : "expected an absolute path"),
    }),
    ifname: f.string("ifname", { default: "", max: 15 }),
    podNamespace: f.string("podNamespace", { default: "", check: (v) => (v === "" ? undefined : dnsLabel(v)) }),
    podName: f.string("podName", { default: "", max: 253, check: (v) => (v === "" ? undefined : dnsSubdomain(v)) }),
    podUid: f.string("podUid", { default: "", max: 128 }),
    ips: f.array("ips", (v, p) => {
      const ip = canonicalIp(checkString(v, p, { max: 64 }));
      if (!ip) throw new ValidationError(p, `expected an IP address, got ${show(v)}`);
      return ip;
    }, { max: 16 }),
  };
  f.done();
  return out;
}

/** The agent's answer to an ADD. */
export interface AddAnswer {
  /** Whether the pod's traffic is now redirected to ztunnel. */
  redirected: boolean;
  /** Why (or why not), in words. */
  reason: string;
}

/** The agent's answer to `GET /v1/status`. */
export interface AgentStatus {
  /** Ready to take pods: the control plane's view of the node is known and a ztunnel is connected. */
  ready: boolean;
  /** Why not, when not ready. */
  reason?: string;
  node: string;
  controlPlane: { synced: boolean; connected: boolean; viewVersion?: string };
  ztunnels: number;
  pods: {
    containerId: string;
    namespace: string;
    name: string;
    netns: string;
    ips: string[];
    state: string;
    reason: string;
  }[];
  /** The node's meshed systemd units (cni/host_units.ts), each with its state and why. */
  units?: AgentUnitStatus[];
}

/** One meshed systemd unit in the agent's status: its WorkloadEntry, cgroup, address and ports, state and why. */
export interface AgentUnitStatus {
  namespace: string;
  name: string;
  unit: string;
  cgroup: string;
  address: string;
  ports: number[];
  state: string;
  reason: string;
}
