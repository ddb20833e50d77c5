/**
 * The client side of the control plane's streams. The config stream (mesh/protocol/config_stream.ts), for
 * ztunnel, the waypoint and a standalone CA: it subscribes, applies the snapshot and every delta to a
 * {@link MeshState} (workloads, services, policies, and the waypoints' routes and L7 policies), and when the stream
 * breaks it keeps that state, so the proxy keeps serving with its last config while the control plane is away,
 * and reconnects with backoff from 10 ms doubling to 15 s (upstream's xDS client), sending the versions it holds
 * so that only what changed is sent again.
 *
 * Each resource is decoded with the model's own decoders; one that does not decode is refused on its own (the
 * client keeps its previous version and logs the field), never the whole update. A refused policy
 * (`Authorization`, `L7Policy`) fails closed: until a version that decodes arrives, or the policy is removed, a
 * deny-all stands for it over the scope it still plainly states, else over everything (mesh/refused_policy.ts);
 * skipping it would drop a DENY, or turn a sole ALLOW into allow-all. A refused `Workload` or `Service` keeps its
 * version held, and connections to it are refused meanwhile (a workload also denies all inbound): the update may
 * name a selector DENY or a waypoint that version lacks.
 * Refusals are logged at error and counted (`skiff_config_refused_total`, `skiff_policies_failing_closed`,
 * {@link ClientConfig.registerMetrics}). The node token is read from its file on every connection, so a rotated
 * token is picked up without a restart. A stream silent for three ping intervals is taken as dead.
 *
 * The node-pods stream (mesh/protocol/node_pods.ts), for the node agent, follows the same loop (backoff, the
 * silence watchdog) and hands each view of the node's pods to its caller, who keeps the last one.
 *
 * @module
 */

import { decodeJwt } from "jose";
import client from "prom-client";
import { dirname, join } from "node:path";
import { sleep } from "./abort.ts";
import { decodeAuthorization, policyKey } from "./authorization.ts";
import { option, parsers } from "./config.ts";
import { decodeHttpRoute, decodeL7Policy, httpRouteKey, l7PolicyKey } from "./l7.ts";
import type { Logger } from "./log.ts";
import {
  decodeStreamMessage,
  joinSnapshotParts,
  PARTS_HEADER,
  PING_INTERVAL_MS,
  type Removal,
  resourceKey,
  STREAM_PATH,
  type StreamMessage,
  type StreamResource,
} from "./protocol/config_stream.ts";
import { decodeNodePodsMessage, NODE_PODS_PATH, type NodePodsView } from "./protocol/node_pods.ts";
import { failClosedAuthorization, failClosedL7Policy, failClosedWorkload } from "./refused_policy.ts";
import { MeshState } from "./store.ts";
import { ValidationError } from "./validate.ts";
import { decodeService, decodeWorkload, serviceKey, type Workload } from "./workload.ts";

/** First reconnect delay. */
export const BACKOFF_MIN_MS = 10;
/** Longest reconnect delay. */
export const BACKOFF_MAX_MS = 15_000;

/** Where the control plane is and how to prove who we are. */
export interface ControlEndpoint {
  /** `https://HOST:15012`. */
  url: string;
  /** File holding the node token (re-read on each request). */
  tokenFile: string;
  /** PEM of the roots that sign the control plane's certificate. */
  caFile: string;
}

/** The flags of every role that talks to the control plane. */
export const CONTROL_CLIENT_OPTIONS = {
  control: option({
    flag: "control",
    env: "SKIFF_CONTROL",
    help: "the control plane, https://HOST:15012: config stream and CA",
    parser: parsers.string("a URL such as https://10.0.0.1:15012"),
  }),
  tokenFile: option({
    flag: "token-file",
    env: "SKIFF_TOKEN_FILE",
    help: "this node's token (skiff control node add)",
    parser: parsers.string("a file path"),
    default: "/etc/skiff/node/token",
  }),
  controlCa: option({
    flag: "control-ca",
    env: "SKIFF_CONTROL_CA",
    help: "roots of the control plane's certificate (default: root-cert.pem beside the token)",
    parser: parsers.string("a file path"),
  }),
};

/** The endpoint those flags name (the URL given). */
export function controlEndpoint(url: string, v: { tokenFile: string; controlCa?: string }): ControlEndpoint {
  return { url, tokenFile: v.tokenFile, caFile: v.controlCa ?? join(dirname(v.tokenFile), "root-cert.pem") };
}

/** The node a node token names (its subject), read without verifying: it is our own token. */
export async function tokenSubject(tokenFile: string): Promise<string | undefined> {
  try {
    return decodeJwt((await Deno.readTextFile(tokenFile)).trim()).sub;
  } catch {
    return undefined;
  }
}

/** A failure to talk to the control plane, with the HTTP status when there was one. */
export class ControlError extends Error {
  readonly code = "CONTROL";
  readonly status?: number;
  /** The answer's JSON body, when it had one (a refused report names its refused pods there). */
  readonly body?: unknown;
  constructor(message: string, status?: number, options?: ErrorOptions, body?: unknown) {
    super(message, options);
    this.name = "ControlError";
    this.status = status;
    this.body = body;
  }
}

/** A fetch bound to the control plane's roots and token. */
export class ControlConnection {
  readonly endpoint: ControlEndpoint;
  #client?: Deno.HttpClient;

  constructor(endpoint: ControlEndpoint) {
    this.endpoint = endpoint;
  }

  /** Sends a request with the current token; a non-2xx answer is a {@link ControlError} with its message. */
  async request(
    method: string,
    path: string,
    body: unknown,
    signal?: AbortSignal,
    headers: Record<string, string> = {},
  ): Promise<Response> {
    let token: string;
    try {
      token = (await Deno.readTextFile(this.endpoint.tokenFile)).trim();
    } catch (error) {
      throw new ControlError(`cannot read the node token ${this.endpoint.tokenFile}: ${(error as Error).message}`);
    }
    if (!this.#client) {
      let ca: string;
      try {
        ca = await Deno.readTextFile(this.endpoint.caFile);
      } catch (error) {
        throw new ControlError(
          `cannot read the control plane's root ${this.endpoint.caFile}: ${(error as Error).message}`,
        );
      }
      this.#client = Deno.createHttpClient({ caCerts: [ca] });
    }
    let response: Response;
    try {
      response = await fetch(new URL(path, this.endpoint.url), {
        method,
        headers: { ...headers, authorization: `Bearer ${token}`, "content-type": "application/json" },
        body: JSON.stringify(body),
        client: this.#client,
        signal,
      });
    } catch (error) {
      throw new ControlError(`cannot reach the control plane at ${this.endpoint.url}: ${(error as Error).message}`);
    }
    if (!response.ok) {
      const text = await response.text().catch(() => "");
      let message = text;
      let body: unknown;
      try {
        body = JSON.parse(text);
        message = (body as { error?: string }).error ?? text;
      } catch { /* not JSON: the text is the message */ }
      const what = response.status === 401 ? "refused our node token" : `answered ${response.status}`;
      throw new ControlError(`the control plane ${what}: ${message}`, response.status, undefined, body);
    }
    return response;
  }

  /** Releases the HTTP client. */
  close(): void {
    this.#client?.close();
    this.#client = undefined;
  }
}

/** What one applied message changed. */
export interface AppliedChange {
  type: "snapshot" | "delta";
  version: number;
  updated: number;
  removed: number;
  /** Resources refused because they did not decode. */
  refused: number;
}

/** The config a client holds: the state and each resource's version. */
export class ClientConfig {
  readonly state = new MeshState();
  readonly #versions = new Map<string, string>();
  /** Resources refused since start, by kind. */
  readonly #refusedTotal = new Map<string, number>();
  #log: Logger;

  constructor(log: Logger) {
    this.#log = log;
  }

  /**
   * Registers the refusal metrics on a proxy's registry: `skiff_config_refused_total{kind}`, resources of the
   * config stream refused because they did not decode, and `skiff_policies_failing_closed{kind}`, policies
   * held refused now, each denying all over its scope. Read at scrape time.
   */
  registerMetrics(registry: client.Registry): void {
    const totals = this.#refusedTotal;
    new client.Counter({
      name: "skiff_config_refused_total",
      help: "Config stream resources refused because they did not decode.",
      labelNames: ["kind"],
      registers: [registry],
      collect() {
        this.reset();
        for (const [kind, n] of totals) this.inc({ kind }, n);
      },
    });
    const state = this.state;
    new client.Gauge({
      name: "skiff_policies_failing_closed",
      help: "Policies (and workloads) that did not decode, each denying all traffic in its scope until a version " +
        "that decodes arrives.",
      labelNames: ["kind"],
      registers: [registry],
      collect() {
        this.set({ kind: "Authorization" }, state.policies.refusedKeys().length);
        this.set({ kind: "L7Policy" }, state.l7Policies.refusedKeys().length);
        this.set({ kind: "Workload" }, state.policies.refusedWorkloads().length);
        this.set({ kind: "Service" }, state.services.refusedKeys().length);
      },
    });
  }

  /** The version held of `kind/name` (resourceKey), if one decoded; a refused update is not held. */
  versionOf(key: string): string | undefined {
    return this.#versions.get(key);
  }

  /** `kind/name` → version of everything held, for resuming. */
  known(): Record<string, string> {
    return Object.fromEntries(this.#versions);
  }

  /** Applies a snapshot or delta. */
  apply(m: Exclude<StreamMessage, { type: "ping" }>): AppliedChange {
    let refused = 0;
    for (const r of m.resources) {
      try {
        this.#upsert(r);
        this.#versions.set(resourceKey(r), r.version);
      } catch (error) {
        refused++;
        this.#refusedTotal.set(r.kind, (this.#refusedTotal.get(r.kind) ?? 0) + 1);
        const message = error instanceof ValidationError ? error.message : String(error);
        const scope = this.#failClosed(r, message);
        if (scope === undefined) {
          this.#log.error({ resource: resourceKey(r), error: message }, "resource refused; its previous version stays");
        } else if (r.kind === "Workload" || r.kind === "Service") {
          this.#log.error(
            { resource: resourceKey(r), error: message, denies: scope },
            `${r.kind.toLowerCase()} refused; its previous version stays, and connections to it are refused until ` +
              "a version that decodes arrives",
          );
        } else {
          this.#log.error(
            { resource: resourceKey(r), error: message, denies: scope },
            "policy refused; it fails closed: its scope denies all until a version that decodes arrives",
          );
        }
      }
    }
    for (const r of m.removed) {
      this.#remove(r);
      this.#versions.delete(resourceKey(r));
    }
    if (m.type === "snapshot") {
      // The server resends every resource whose version differs from what we hold, and a refused one was never
      // held: a refused policy absent from the snapshot is gone, or back to the version we hold, which decoded.
      const sent = new Set(m.resources.map(resourceKey));
      const stores = [["Authorization", this.state.policies], ["L7Policy", this.state.l7Policies]] as const;
      for (const [kind, store] of stores) {
        for (const key of store.refusedKeys()) {
          if (!sent.has(resourceKey({ kind, name: key }))) store.endRefusal(key);
        }
      }
      for (const uid of this.state.policies.refusedWorkloads()) {
        if (!sent.has(resourceKey({ kind: "Workload", name: uid }))) this.state.policies.endWorkloadRefusal(uid);
      }
      for (const key of this.state.services.refusedKeys()) {
        if (!sent.has(resourceKey({ kind: "Service", name: key }))) this.state.services.endRefusal(key);
      }
    }
    return {
      type: m.type,
      version: m.version,
      updated: m.resources.length - refused,
      removed: m.removed.length,
      refused,
    };
  }

  #upsert(r: StreamResource): void {
    const path = resourceKey(r);
    switch (r.kind) {
      case "Workload": {
        const w: Workload = decodeWorkload(r.body, path);
        if (w.uid !== r.name) throw new ValidationError(`${path}.uid`, "does not match the resource name");
        this.state.workloads.upsert(w);
        this.state.policies.endWorkloadRefusal(w.uid);
        return;
      }
      case "Service": {
        const service = decodeService(r.body, path);
        // Refusals and removals come by name: a body filed under another name could never end either.
        if (serviceKey(service) !== r.name) {
          throw new ValidationError(path, "namespace/hostname does not match the resource name");
        }
        this.state.services.upsert(service);
        return;
      }
      case "Authorization": {
        const policy = decodeAuthorization(r.body, path);
        // Refusals and removals come by name: a body filed under another name could never end either.
        if (policyKey(policy) !== r.name) {
          throw new ValidationError(path, "namespace/name does not match the resource name");
        }
        this.state.policies.upsert(policy);
        return;
      }
      case "HttpRoute": {
        const route = decodeHttpRoute(r.body, path);
        // Removals come by name: a body filed under another name could never be removed.
        if (httpRouteKey(route) !== r.name) {
          throw new ValidationError(path, "namespace/name does not match the resource name");
        }
        this.state.routes.upsert(route);
        return;
      }
      case "L7Policy": {
        const policy = decodeL7Policy(r.body, path);
        if (l7PolicyKey(policy) !== r.name) {
          throw new ValidationError(path, "namespace/name does not match the resource name");
        }
        this.state.l7Policies.upsert(policy);
        return;
      }
    }
  }

  /** For a refused policy, holds its deny-all and returns what it covers, for the log; else undefined. */
  #failClosed(r: StreamResource, error: string): string | undefined {
    if (r.kind === "Workload") {
      // The version held may lack a selector DENY or a waypoint the update names (mesh/refused_policy.ts): inbound
      // the workload denies all, outbound connections to it are refused (route.ts).
      this.state.policies.refuseWorkload(r.name, failClosedWorkload(r.name, error));
      return `workload ${r.name}`;
    }
    if (r.kind === "Service") {
      this.state.services.refuse(r.name); // the version held may lack a waypoint the update adds (route.ts)
      return `service ${r.name}`;
    }
    if (r.kind === "Authorization") {
      const standIn = failClosedAuthorization(r.name, r.body, error);
      this.state.policies.refuse(r.name, standIn);
      return standIn.scope === "GLOBAL"
        ? "every workload"
        : standIn.scope === "NAMESPACE"
        ? `the workloads of namespace ${standIn.namespace}`
        : `the workloads the policy selects`;
    }
    if (r.kind === "L7Policy") {
      const standIn = failClosedL7Policy(r.name, r.body);
      this.state.l7Policies.refuse(r.name, standIn);
      return standIn.everywhere
        ? "every request this waypoint serves"
        : `requests to ${standIn.policy.targets.map((t) => `${t.kind} ${t.namespace}/${t.name}`).join(", ")}`;
    }
    return undefined;
  }

  #remove(r: Removal): void {
    switch (r.kind) {
      case "Workload":
        this.state.workloads.remove(r.name);
        this.state.policies.endWorkloadRefusal(r.name);
        return;
      case "Service":
        this.state.services.remove(r.name);
        return;
      case "Authorization":
        this.state.policies.remove(r.name);
        return;
      case "HttpRoute":
        this.state.routes.remove(r.name);
        return;
      case "L7Policy":
        this.state.l7Policies.remove(r.name);
        return;
    }
  }
}

/** What every stream client is given. */
export interface StreamClientOptions {
  connection: ControlConnection;
  log: Logger;
  signal: AbortSignal;
  /** Called when the stream connects or breaks. */
  onConnected?: (connected: boolean) => void;
}

/** Options of {@link runConfigClient}. */
export interface ConfigClientOptions extends StreamClientOptions {
  config: ClientConfig;
  /** Called after each applied snapshot or delta. */
  onChange: (change: AppliedChange) => void;
  /** Called with each snapshot or delta as it came, after it is applied (a proxy's worker threads get it). */
  onMessage?: (message: Exclude<StreamMessage, { type: "ping" }>) => void;
}

/**
 * Subscribes until `signal` aborts, reconnecting with backoff; the config is kept across breaks. The snapshot is
 * asked for in parts (config_stream.ts) and applied once its last part has come.
 */
export function runConfigClient(o: ConfigClientOptions): Promise<void> {
  let parts: Extract<StreamMessage, { type: "snapshot" }>[] = [];
  return followStream(o, {
    name: "config stream",
    keeping: "keeping the last config",
    path: STREAM_PATH,
    headers: { [PARTS_HEADER]: "1" },
    body: () => {
      parts = []; // a new connection: what an earlier one left unfinished is dropped
      return { known: o.config.known() };
    },
    decode: decodeStreamMessage,
    onMessage: (part) => {
      let message: Exclude<StreamMessage, { type: "ping" }> = part;
      if (part.type === "snapshot" && (part.more || parts.length > 0)) {
        parts.push(part);
        if (part.more) return;
        message = joinSnapshotParts(parts);
        parts = [];
      } else if (parts.length > 0) {
        throw new ValidationError("delta", "a delta came before the snapshot's last part");
      }
      const change = o.config.apply(message);
      o.onMessage?.(message);
      if (message.type === "snapshot") {
        o.log.info({
          version: message.version,
          sent: change.updated,
          unchanged: message.unchanged,
          removed: change.removed,
        }, "config synced from the control plane");
      }
      o.onChange(change);
    },
  });
}

/** Options of {@link runNodePodsClient}. */
export interface NodePodsClientOptions extends StreamClientOptions {
  /** Called with each view of the node's pods, the first one and every change. */
  onView: (view: NodePodsView) => void;
}

/** Follows the node-pods stream of the token's node until `signal` aborts, reconnecting with backoff. */
export function runNodePodsClient(o: NodePodsClientOptions): Promise<void> {
  return followStream(o, {
    name: "node-pods stream",
    keeping: "keeping the last view of the node's pods",
    path: NODE_PODS_PATH,
    body: () => ({}),
    decode: decodeNodePodsMessage,
    onMessage: ({ type: _, ...view }) => {
      o.log.info({ version: view.version, pods: view.pods.length }, "node's pods synced from the control plane");
      o.onView(view);
    },
  });
}

/** One stream to follow: what to ask for, and what each message does. */
interface StreamFollower<M extends { type: string }> {
  /** What the log calls the stream. */
  name: string;
  /** What the client keeps while the stream is broken, for the log. */
  keeping: string;
  path: string;
  /** The request body, made anew for each connection. */
  body: () => unknown;
  headers?: Record<string, string>;
  /** Decodes a line; throws a {@link ValidationError} on a bad one, which breaks the connection. */
  decode: (line: string) => M;
  /** Handles each message but the pings. */
  onMessage: (message: Exclude<M, { type: "ping" }>) => void;
}

/**
 * The loop every stream client runs until `signal` aborts: connect, read lines, and on a break reconnect after a
 * backoff from {@link BACKOFF_MIN_MS} doubling to {@link BACKOFF_MAX_MS}, back to the least once a connection
 * brought a message (pings are the loop's own). A stream silent for three pings is aborted as dead.
 */
async function followStream<M extends { type: string }>(o: StreamClientOptions, f: StreamFollower<M>): Promise<void> {
  let delay = BACKOFF_MIN_MS;
  while (!o.signal.aborted) {
    const attempt = new AbortController();
    const abort = () => attempt.abort();
    o.signal.addEventListener("abort", abort, { once: true });
    let synced = false;
    try {
      const response = await o.connection.request("POST", f.path, f.body(), attempt.signal, f.headers);
      o.onConnected?.(true);
      let watchdog = setTimeout(abort, 3 * PING_INTERVAL_MS);
      try {
        for await (const line of lines(response.body!)) {
          clearTimeout(watchdog);
          watchdog = setTimeout(abort, 3 * PING_INTERVAL_MS);
          const message = f.decode(line);
          if (message.type === "ping") continue;
          f.onMessage(message as Exclude<M, { type: "ping" }>);
          synced = true; // a message, not just a ping: the stream is good, and the backoff starts over
        }
      } finally {
        clearTimeout(watchdog);
      }
      if (!o.signal.aborted) o.log.warn(`the control plane closed the ${f.name}; ${f.keeping}`);
    } catch (error) {
      if (o.signal.aborted) break;
      const message = error instanceof ControlError || error instanceof ValidationError
        ? error.message
        : `${f.name} broke: ${(error as Error).message}`;
      const level = error instanceof ControlError && error.status === 401 ? "error" : "warn";
      o.log[level]({ retryInMs: delay }, `${message}; ${f.keeping}`);
    } finally {
      o.signal.removeEventListener("abort", abort);
    }
    o.onConnected?.(false);
    if (o.signal.aborted) break;
    if (synced) delay = BACKOFF_MIN_MS;
    await sleep(delay, o.signal);
    delay = Math.min(delay * 2, BACKOFF_MAX_MS);
  }
  o.connection.close();
}

/** The lines of a body. A snapshot is one long line: only new text is searched for its end. */
async function* lines(body: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  let pieces: string[] = [];
  for await (let chunk of body.pipeThrough(new TextDecoderStream())) {
    let nl: number;
    while ((nl = chunk.indexOf("\n")) >= 0) {
      pieces.push(chunk.slice(0, nl));
      const line = pieces.join("");
      pieces = [];
      chunk = chunk.slice(nl + 1);
      if (line.trim() !== "") yield line;
    }
    if (chunk !== "") pieces.push(chunk);
  }
}
