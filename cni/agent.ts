/**
 * The node agent's core, as upstream's istio-cni node agent: it knows every pod the CNI plugin saw start on this
 * node (its container, network namespace and addresses) and, from the control plane, which pods scheduled here
 * are enrolled (mesh/protocol/node_pods.ts). For an enrolled pod it installs the in-pod rules
 * (cni/redirect_linux.ts) *before* handing the pod to ztunnel, so a pod whose ztunnel is away has its traffic
 * refused rather than sent around the proxy; once ztunnel acknowledges, the pod is redirected and the control
 * plane is told, and only then does it mark the workload HBONE. A pod that leaves the mesh (labelled out, no
 * longer declared, deleted) loses its rules and ztunnel drops it.
 *
 * Every change runs under one lock, so the plugin's events, the control plane's view, a ztunnel's snapshot and
 * the periodic reconcile never interleave. The pods are saved after every change, so an agent restart picks
 * them up again and reconciles each one: the rules are rewritten whole (never duplicated), pods whose network
 * namespace is gone are forgotten, and DELs the plugin made while the agent was away are applied.
 *
 * Each pod is in one of three states: `redirected` (rules in place, ztunnel acknowledged), `pending` (rules in
 * place, ztunnel not reached yet: its traffic is refused), `outside` (not in the mesh: no rules).
 *
 * @module
 */

import type { Logger } from "../mesh/log.ts";
import {
  type AddAnswer,
  type AgentStatus,
  CNI_CODES,
  CniError,
  type PodEvent,
  type UnitGateAnswer,
} from "../mesh/protocol/cni.ts";
import { isHandoffNetnsPath } from "../mesh/protocol/handoff.ts";
import type { NodePod, NodePodsView, NodeUnit } from "../mesh/protocol/node_pods.ts";
import type { HandoffPod } from "./handoff_server.ts";
import type { RedirectProblems } from "./redirect_linux.ts";
import type { UnitRecord } from "./host_units.ts";

/** A pod the plugin saw start. */
export interface PodRecord {
  containerId: string;
  /** The uid ztunnel knows the pod by: Kubernetes' pod UID, else `namespace/name`. */
  uid: string;
  namespace: string;
  name: string;
  netns: string;
  ips: string[];
  serviceAccount: string;
  state: "redirected" | "pending" | "outside";
  reason: string;
}

/** What the agent saves between runs. */
export interface AgentState {
  pods: PodRecord[];
  view?: NodePodsView;
}

/** What a node agent reports of one pod to the control plane (`PUT /v1/registrations`). */
export interface PodReport {
  namespace: string;
  name: string;
  ips: string[];
  redirected: boolean;
  netns: string;
}

/** The agent's hands: real in `cni/mod.ts`, fakes in unit tests. */
export interface AgentDeps {
  log: Logger;
  redirect: {
    install(netns: string): Promise<void>;
    check(netns: string): Promise<RedirectProblems>;
    remove(netns: string): Promise<void>;
  };
  /** Makes the node's probe SNAT cover exactly these addresses. */
  syncProbes(ips: string[]): Promise<void>;
  handoff: {
    readonly ready: number;
    add(pod: HandoffPod): Promise<void>;
    del(uid: string): Promise<void>;
  };
  /** Sends the node's pods to the control plane (the reporter retries on its own). */
  report(pods: PodReport[]): void;
  save(state: AgentState): Promise<void>;
  /** Whether a path exists. */
  exists(path: string): Promise<boolean>;
  /** Whether a namespace path is the agent's own or the node's network namespace. */
  isOwnNetns(path: string): Promise<boolean>;
  /** DELs the plugin noted while the agent was away, and forgetting them once applied. */
  deletedNotes(): Promise<PodEvent[]>;
  forgetNote(containerId: string): Promise<void>;
  /** The node's meshed systemd units (cni/host_units.ts), when the agent meshes units. */
  units?: {
    sync(units: readonly NodeUnit[]): Promise<void>;
    watch(): Promise<void>;
    snapshot(): HandoffPod[];
    snapshotTaken(acked: ReadonlySet<string>): void;
    records(): UnitRecord[];
    gate(cgroup: string, units: readonly NodeUnit[], node: string): Promise<UnitGateAnswer>;
  };
  /** The agent's own pod, when it runs as one (POD_NAMESPACE/POD_NAME): never enrolled. */
  self?: { namespace: string; name: string };
}

/** Longest reason kept (a ztunnel refusal can be long; the saved state must stay readable). */
const MAX_REASON = 512;
const short = (reason: string) => (reason.length > MAX_REASON ? `${reason.slice(0, MAX_REASON - 1)}…` : reason);

/** What the control plane's view says of a pod. */
type Decision =
  | { kind: "enrolled"; pod: NodePod }
  | { kind: "outside"; reason: string; serviceAccount?: string }
  | { kind: "unknown"; reason: string };

/** The node agent. */
export class NodeAgent {
  readonly node: string;
  readonly #deps: AgentDeps;
  readonly #pods = new Map<string, PodRecord>();
  #view?: NodePodsView;
  /** Whether the view came from the control plane in this run (a saved one may be out of date). */
  #viewFresh = false;
  #lock: Promise<unknown> = Promise.resolve();
  #controlConnected = false;
  /** What was saved last, so an unchanged list is not written again (the reconcile runs every 10 s). */
  #saved?: string;

  constructor(node: string, deps: AgentDeps, saved?: AgentState) {
    this.node = node;
    this.#deps = deps;
    for (const p of saved?.pods ?? []) this.#pods.set(p.containerId, p);
    if (saved?.view && saved.view.node === node) this.#view = saved.view;
  }

  /** Runs `fn` under the agent's lock. */
  exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const result = this.#lock.then(fn, fn);
    this.#lock = result.catch(() => {});
    return result;
  }

  /** The pods, for tests and the status endpoint. */
  pods(): PodRecord[] {
    return [...this.#pods.values()];
  }

  #decide(namespace: string, name: string): Decision {
    if (this.#deps.self && this.#deps.self.namespace === namespace && this.#deps.self.name === name) {
      return { kind: "outside", reason: "the node agent's own pod" };
    }
    const view = this.#view;
    if (!view) return { kind: "unknown", reason: `no view of node ${this.node} from the control plane yet` };
    const pod = view.pods.find((p) => p.namespace === namespace && p.name === name);
    if (pod?.enrolled) return { kind: "enrolled", pod };
    // A saved view may miss an enrolment made while the agent was down: it may enrol, never leave out.
    if (!this.#viewFresh) {
      return {
        kind: "unknown",
        reason: `the view of node ${this.node} is from before the agent restarted; waiting for the control plane`,
      };
    }
    if (pod) return { kind: "outside", reason: pod.reason || "not enrolled", serviceAccount: pod.serviceAccount };
    if (view.ambientNamespaces.includes(namespace)) {
      return {
        kind: "unknown",
        reason: `pod ${namespace}/${name} is not declared on node ${this.node} in the control plane (yet), ` +
          `and its namespace is enrolled`,
      };
    }
    return { kind: "outside", reason: "not declared in the control plane, and its namespace is not enrolled" };
  }

  /** The plugin's ADD: answers once the pod is redirected or known to be outside the mesh. */
  add(event: PodEvent): Promise<AddAnswer> {
    return this.exclusive(async () => {
      const log = this.#deps.log.child({ pod: `${event.podNamespace}/${event.podName}`, container: event.containerId });
      // A new sandbox of the same pod replaces the old one (whose namespace is gone or going).
      for (const old of this.#pods.values()) {
        if (
          old.namespace === event.podNamespace && old.name === event.podName && old.containerId !== event.containerId
        ) {
          log.info({ old: old.containerId }, "a new sandbox replaces the pod's old one");
          await this.#forget(old);
        }
      }
      const existing = this.#pods.get(event.containerId);
      let decision = this.#decide(event.podNamespace, event.podName);
      if (await this.#deps.isOwnNetns(event.netns)) {
        decision = { kind: "outside", reason: "the node's own network namespace: never enrolled" };
      }
      if (decision.kind === "unknown") {
        throw new CniError(CNI_CODES.tryAgainLater, `${decision.reason}; try again later`);
      }
      const record: PodRecord = existing ?? {
        containerId: event.containerId,
        uid: event.podUid || `${event.podNamespace}/${event.podName}`,
        namespace: event.podNamespace,
        name: event.podName,
        netns: event.netns,
        ips: event.ips,
        serviceAccount: "default",
        state: "outside",
        reason: "",
      };
      record.netns = event.netns;
      if (event.ips.length > 0) record.ips = event.ips;
      this.#pods.set(record.containerId, record);
      if (decision.kind === "outside") {
        if (record.state !== "outside") await this.#unenrol(record, decision.reason);
        record.reason = decision.reason;
        record.serviceAccount = decision.serviceAccount ?? record.serviceAccount;
        await this.#changed();
        log.info({ reason: decision.reason }, "pod is outside the mesh");
        return { redirected: false, reason: decision.reason };
      }
      record.serviceAccount = decision.pod.serviceAccount;
      const refusal = this.#cannotRedirect(record);
      if (refusal) {
        this.#pods.delete(record.containerId);
        await this.#changed();
        throw new CniError(CNI_CODES.redirection, refusal);
      }
      try {
        // ADD run again: the rules are rewritten whole, never duplicated.
        if (record.state !== "outside") await this.#deps.redirect.install(record.netns);
        await this.#enrol(record, decision.pod.reason);
      } catch (error) {
        if (error instanceof CniError && error.code === CNI_CODES.redirection) {
          this.#pods.delete(record.containerId);
        }
        await this.#changed();
        throw error;
      }
      await this.#changed();
      return { redirected: true, reason: record.reason };
    });
  }

  /** Why an enrolled pod cannot be redirected at all, if it cannot: better refused than run around ztunnel. */
  #cannotRedirect(record: PodRecord): string | undefined {
    if (record.ips.some((ip) => ip.includes(":"))) {
      return `pod ${record.namespace}/${record.name} has an IPv6 address (${record.ips.join(", ")}); ` +
        "Skiff captures IPv4 only and its in-pod rules drop all IPv6 but loopback, so that address would not work";
    }
    if (!isHandoffNetnsPath(record.netns)) {
      return `network namespace ${record.netns} is not a path ztunnel takes ` +
        "(/var/run/netns/NAME, /run/netns/NAME or /proc/PID/ns/net)";
    }
    return undefined;
  }

  /** Rules first, then ztunnel: with no ztunnel the pod's traffic is refused, never sent around the proxy. */
  async #enrol(record: PodRecord, reason: string): Promise<void> {
    const log = this.#deps.log.child({ pod: `${record.namespace}/${record.name}`, container: record.containerId });
    if (record.state === "outside") {
      try {
        await this.#deps.redirect.install(record.netns);
      } catch (error) {
        throw new CniError(
          CNI_CODES.redirection,
          `the in-pod rules could not be installed in ${record.netns}`,
          (error as Error).message,
        );
      }
      record.state = "pending";
      log.info({ netns: record.netns }, "in-pod rules installed");
    }
    if (record.state === "pending") {
      try {
        await this.#deps.handoff.add(this.#handoffPod(record));
      } catch (error) {
        record.reason = short(`rules in place, ztunnel not reached: ${(error as Error).message}`);
        throw new CniError(CNI_CODES.tryAgainLater, `ztunnel is not ready for the pod: ${(error as Error).message}`);
      }
      record.state = "redirected";
      log.info("pod handed to ztunnel: redirected");
    }
    record.reason = short(reason);
  }

  async #unenrol(record: PodRecord, reason: string): Promise<void> {
    await this.#deps.handoff.del(record.uid);
    if (await this.#deps.exists(record.netns)) await this.#deps.redirect.remove(record.netns);
    record.state = "outside";
    record.reason = short(reason);
    this.#deps.log.info({ pod: `${record.namespace}/${record.name}`, reason }, "pod left the mesh: rules removed");
  }

  async #forget(record: PodRecord): Promise<void> {
    if (record.state !== "outside") {
      await this.#deps.handoff.del(record.uid);
      if (await this.#deps.exists(record.netns)) {
        try {
          await this.#deps.redirect.remove(record.netns);
        } catch (error) {
          this.#deps.log.warn({ netns: record.netns, error: (error as Error).message }, "could not remove rules");
        }
      }
    }
    this.#pods.delete(record.containerId);
  }

  #handoffPod(r: PodRecord): HandoffPod {
    return {
      uid: r.uid,
      workload: { name: r.name, namespace: r.namespace, serviceAccount: r.serviceAccount },
      netns: r.netns,
    };
  }

  /** The plugin's DEL: succeeds whatever is left to undo. */
  del(event: PodEvent): Promise<void> {
    return this.exclusive(async () => {
      const record = this.#pods.get(event.containerId);
      if (!record) return;
      await this.#forget(record);
      this.#deps.log.info({ pod: `${record.namespace}/${record.name}`, container: record.containerId }, "pod deleted");
      try {
        await this.#changed();
      } catch (error) {
        // The pod is gone either way; the next change saves the list again.
        this.#deps.log.error({ error: (error as Error).message }, "could not save the pods after a DEL");
      }
    });
  }

  /** The plugin's CHECK: the pod's rules are as they should be. */
  check(event: PodEvent): Promise<void> {
    return this.exclusive(async () => {
      const record = this.#pods.get(event.containerId);
      const decision = this.#decide(event.podNamespace, event.podName);
      if (!record) {
        if (decision.kind === "outside") return;
        throw new CniError(
          CNI_CODES.containerUnknown,
          `the node agent has no record of container ${event.containerId}`,
        );
      }
      if (record.state === "outside") {
        if (decision.kind === "enrolled") {
          throw new CniError(
            CNI_CODES.redirection,
            `pod ${record.namespace}/${record.name} is enrolled but not redirected`,
          );
        }
        return;
      }
      const { problems } = await this.#deps.redirect.check(record.netns);
      if (problems.length > 0) {
        throw new CniError(CNI_CODES.redirection, "the in-pod redirection is not in place", problems.join("; "));
      }
      if (record.state === "pending") {
        throw new CniError(CNI_CODES.tryAgainLater, `pod ${record.namespace}/${record.name}: ${record.reason}`);
      }
    });
  }

  /**
   * CNI GC: forgets pods the runtime no longer knows *and* whose network namespace is gone. A namespace that is
   * still there keeps its rules until it goes (the periodic reconcile then forgets it): a pod must never be
   * left running without them.
   */
  gc(valid: { containerId: string }[]): Promise<number> {
    return this.exclusive(async () => {
      const keep = new Set(valid.map((a) => a.containerId));
      let dropped = 0;
      for (const r of [...this.#pods.values()]) {
        if (keep.has(r.containerId) || await this.#deps.exists(r.netns)) continue;
        await this.#forget(r);
        dropped++;
      }
      if (dropped > 0) await this.#changed();
      return dropped;
    });
  }

  /** A new view of the node from the control plane. */
  setView(view: NodePodsView): Promise<void> {
    return this.exclusive(async () => {
      if (view.node !== this.node) {
        this.#deps.log.error(
          { view: view.node, node: this.node },
          "the control plane sent another node's view; ignored",
        );
        return;
      }
      const changed = this.#view?.version !== view.version || !this.#viewFresh;
      this.#view = view;
      this.#viewFresh = true;
      if (changed) await this.#reconcile(false);
    });
  }

  /** Whether the control plane's stream is up (status only). */
  set controlConnected(v: boolean) {
    this.#controlConnected = v;
  }

  /** Re-checks every pod; after a restart (`restarted`) also rewrites every redirected pod's rules. */
  reconcile(restarted = false): Promise<void> {
    return this.exclusive(() => this.#reconcile(restarted));
  }

  async #reconcile(restarted: boolean): Promise<void> {
    const log = this.#deps.log;
    for (const note of await this.#deps.deletedNotes()) {
      const record = this.#pods.get(note.containerId);
      if (record) {
        log.info({ pod: `${record.namespace}/${record.name}` }, "applying a DEL made while the agent was away");
        await this.#forget(record);
      }
      await this.#deps.forgetNote(note.containerId);
    }
    for (const record of [...this.#pods.values()]) {
      const pod = `${record.namespace}/${record.name}`;
      if (!await this.#deps.exists(record.netns)) {
        log.info({ pod, netns: record.netns }, "the pod's network namespace is gone; forgetting it");
        await this.#forget(record);
        continue;
      }
      const decision = this.#decide(record.namespace, record.name);
      try {
        if (decision.kind === "enrolled") {
          record.serviceAccount = decision.pod.serviceAccount;
          if (restarted && record.state !== "outside") {
            await this.#deps.redirect.install(record.netns); // rewritten whole: never duplicated
          }
          if (record.state !== "redirected") await this.#enrol(record, decision.pod.reason);
          else record.reason = decision.pod.reason;
        } else if (decision.kind === "outside" && record.state !== "outside") {
          await this.#unenrol(record, decision.reason);
        } else if (restarted && record.state !== "outside") {
          await this.#deps.redirect.install(record.netns); // no view yet: keep what was in force
        }
      } catch (error) {
        log.warn({ pod, error: (error as Error).message }, "pod not reconciled; will retry");
      }
    }
    // Units follow a view from this run only: until then, what an earlier run put in place stays.
    if (this.#deps.units && this.#view && this.#viewFresh) {
      try {
        await this.#deps.units.sync(this.#view.units ?? []);
      } catch (error) {
        log.warn({ error: (error as Error).message }, "units not reconciled; will retry");
      }
    }
    await this.#changed();
  }

  /** Looks at the units' cgroups again (cni/host_units.ts): a unit restarted in a new one is captured again. */
  watchUnits(): Promise<void> {
    return this.exclusive(async () => {
      try {
        await this.#deps.units?.watch();
      } catch (error) {
        this.#deps.log.warn({ error: (error as Error).message }, "units not reconciled; will retry");
      }
    });
  }

  /**
   * `skiff unit-gate` from a unit's new cgroup (cni/host_units.ts): yes only with a view from this run, the
   * unit's rules holding that cgroup, and a ztunnel connected that took the unit. Refusals are CniErrors: try
   * again later while it may still come (the gate retries until its timeout), any other code when it cannot.
   */
  gateUnit(cgroup: string): Promise<UnitGateAnswer> {
    return this.exclusive(async () => {
      const units = this.#deps.units;
      if (!units) {
        throw new CniError(
          CNI_CODES.notAvailable,
          "unit gate: this node agent meshes no systemd units (it is not in the node's network namespace)",
        );
      }
      if (!this.#view || !this.#viewFresh) {
        throw new CniError(
          CNI_CODES.tryAgainLater,
          `unit gate: no view of node ${this.node} from the control plane yet`,
        );
      }
      let answer: UnitGateAnswer;
      try {
        answer = await units.gate(cgroup, this.#view.units ?? [], this.node);
      } catch (error) {
        if (error instanceof CniError) throw error;
        // Rules not written (iptables busy, say): the gate asks again until its timeout, the unit waits.
        throw new CniError(CNI_CODES.tryAgainLater, `unit gate: host rules not written: ${(error as Error).message}`);
      }
      // A unit's state says ztunnel took it once; it must be there now too, or the unit's traffic is refused.
      if (this.#deps.handoff.ready === 0) {
        throw new CniError(
          CNI_CODES.tryAgainLater,
          `unit gate: ${answer.unit}: rules in place, no ztunnel is connected`,
        );
      }
      return answer;
    });
  }

  /** Hands ztunnel the snapshot: every pod whose rules are in place. */
  snapshotPods(): HandoffPod[] {
    const pods = [...this.#pods.values()].filter((r) => r.state !== "outside").map((r) => this.#handoffPod(r));
    return [...pods, ...this.#deps.units?.snapshot() ?? []];
  }

  /** After a snapshot: pods ztunnel acknowledged are redirected, the others wait for it. Call under the lock. */
  async snapshotTaken(acked: Set<string>): Promise<void> {
    for (const r of this.#pods.values()) {
      if (r.state === "outside") continue;
      if (acked.has(r.uid)) {
        r.state = "redirected";
      } else {
        r.state = "pending";
        r.reason = "rules in place, ztunnel refused the pod in its snapshot; retried at the next reconcile";
      }
    }
    this.#deps.units?.snapshotTaken(acked);
    await this.#changed();
  }

  async #changed(): Promise<void> {
    const pods = [...this.#pods.values()];
    const redirectedIps = pods.filter((p) => p.state !== "outside").flatMap((p) => p.ips);
    try {
      await this.#deps.syncProbes(redirectedIps);
    } catch (error) {
      this.#deps.log.error({ error: (error as Error).message }, "could not update the node's probe rules");
    }
    const state = { pods, view: this.#view };
    const text = JSON.stringify(state);
    if (text !== this.#saved) {
      await this.#deps.save(state);
      this.#saved = text;
    }
    this.#deps.report(pods.map((p) => ({
      namespace: p.namespace,
      name: p.name,
      ips: p.ips,
      redirected: p.state === "redirected",
      netns: p.netns,
    })));
  }

  /** For `GET /v1/status`. */
  status(): AgentStatus {
    const synced = this.#view !== undefined && this.#viewFresh;
    const ztunnels = this.#deps.handoff.ready;
    const reason = !synced
      ? `no view of node ${this.node} from the control plane yet`
      : ztunnels === 0
      ? "no ztunnel is connected"
      : undefined;
    return {
      ready: reason === undefined,
      ...(reason ? { reason } : {}),
      node: this.node,
      controlPlane: { synced, connected: this.#controlConnected, viewVersion: this.#view?.version },
      ztunnels,
      pods: this.pods().map((p) => ({
        containerId: p.containerId,
        namespace: p.namespace,
        name: p.name,
        netns: p.netns,
        ips: p.ips,
        state: p.state,
        reason: p.reason,
      })),
      ...(this.#deps.units ? { units: this.#deps.units.records() } : {}),
    };
  }
}
