/**
 * The node agent's systemd units: WorkloadEntries the control plane lists in the node's view with `skiff.io/unit`
 * (mesh/protocol/node_pods.ts), meshed where they run, in the node's own network namespace, with no namespace or
 * sidecar added. For each, as for a pod, the rules come first (cni/host_rules_linux.ts: capture by cgroup out, by
 * address and port in), then ztunnel is handed the unit as a pod whose network namespace is the node's: it opens
 * 15001, 15006 and 15008 there and holds the entry's identity (the CA gives a node only identities declared on it,
 * and a WorkloadEntry's is declared on its `skiff.io/node`). A unit whose rules are in place but which ztunnel has
 * not taken has its traffic dropped by TPROXY, never sent in plaintext.
 *
 * One unit per node. ztunnel opens a pod's listeners on 0.0.0.0 (15001, 15006, 15008, SO_REUSEPORT): a second
 * unit's would join the first's in the node's one namespace, and the kernel would spread connections over both
 * sets, so one unit's traffic could leave with the other's identity. And inbound HBONE on the node's address:15008
 * presents one certificate, so several identities behind one address could not be told apart. The second unit (by
 * namespace, then name) is therefore refused, with an error naming both. Several units per node need listeners
 * bound per unit address and an outbound port per unit (the TPROXY port is what tells ztunnel which unit a
 * connection came from: the kernel decides it, no lookup by /proc); not built.
 *
 * Cgroups. `-m cgroup --path` takes a path that exists, resolves it when the rule is written, and keeps matching
 * that cgroup even once its directory is gone: a unit that stops and starts again is in a new cgroup at the same
 * path, which the old rule misses (verified here: the rule's counter stays put, `iptables-save` unchanged). So the
 * agent makes each unit's cgroup directory itself before the unit starts (systemd's `cg_create` in
 * `src/shared/cgroup-setup.c` returns 0 on EEXIST: it takes a directory that exists), notes its inode, and every
 * {@link UNIT_WATCH_INTERVAL_MS} looks again: a directory gone (the unit stopped) is made again at once, and one
 * with a new inode (made by someone else in between) gets the rule set written again.
 *
 * The gate. That look leaves a window: a unit restarted within the interval, into a directory systemd made anew,
 * would run uncaptured (in plaintext) until the next look. So a meshed unit carries a drop-in
 * (deploy/systemd/skiff-mesh.conf) whose `ExecStartPre=` runs `skiff unit-gate` (cni/unit_gate.ts): systemd makes
 * the unit's cgroup, runs ExecStartPre= in it, and the main process only after it exits 0. The gate asks the agent
 * ({@link HostUnits.gate}) for its own cgroup; the agent rewrites the rules when the directory's inode is not the
 * one they were written for, and answers only once they were written for the inode there now and ztunnel holds the
 * unit. The gate's process is in that cgroup while it asks, so the directory cannot be removed under the answer
 * (the kernel refuses rmdir of a cgroup with processes). A unit without the drop-in keeps the window.
 *
 * @module
 */

import { join } from "node:path";
import type { Logger } from "../mesh/log.ts";
import { CNI_CODES, CniError, type UnitGateAnswer } from "../mesh/protocol/cni.ts";
import type { NodeUnit } from "../mesh/protocol/node_pods.ts";
import type { HandoffPod } from "./handoff_server.ts";
import type { HostUnit } from "./host_rules_linux.ts";

/** How often the units' cgroup directories are looked at again. */
export const UNIT_WATCH_INTERVAL_MS = 500;

/** A unit and where the agent is with it. */
export interface UnitRecord extends NodeUnit {
  /** `redirected`: rules in place, ztunnel took it; `pending`: rules in place or not, ztunnel not yet; `refused`. */
  state: "redirected" | "pending" | "refused";
  reason: string;
}

/** The uid ztunnel knows a unit by (ztunnel finds its workload by namespace, name and service account). */
export const unitUid = (u: Pick<NodeUnit, "namespace" | "name">) => `unit/${u.namespace}/${u.name}`;

const keyOf = (u: Pick<NodeUnit, "namespace" | "name">) => `${u.namespace}/${u.name}`;
const describe = (u: NodeUnit) =>
  `WorkloadEntry ${keyOf(u)} (unit ${u.unit}, service account ${u.namespace}/${u.serviceAccount})`;

/**
 * Which unit the node can mesh, and why each other one cannot: its address must be one of the node's own, and
 * one unit per node (the first by namespace, then name, keeps it). Pure.
 */
export function planUnits(
  units: readonly NodeUnit[],
  localAddresses: readonly string[],
): { accepted: NodeUnit[]; refused: { unit: NodeUnit; reason: string }[] } {
  const accepted: NodeUnit[] = [];
  const refused: { unit: NodeUnit; reason: string }[] = [];
  const sorted = [...units].sort((a, b) => (keyOf(a) < keyOf(b) ? -1 : keyOf(a) > keyOf(b) ? 1 : 0));
  for (const u of sorted) {
    const first = accepted[0];
    if (!localAddresses.includes(u.address)) {
      refused.push({
        unit: u,
        reason: `${describe(u)}: address ${u.address} is not one of this node's (${localAddresses.join(", ")})`,
      });
    } else if (first && first.address === u.address) {
      refused.push({
        unit: u,
        reason: `${describe(u)} has address ${u.address}, as ${describe(first)} has: one unit per node (inbound ` +
          `HBONE on ${u.address}:15008 presents one identity); run it in a network namespace of its own`,
      });
    } else if (first) {
      refused.push({
        unit: u,
        reason: `${describe(u)} is on this node beside ${describe(first)}: one unit per node (ztunnel's ` +
          `listeners in the node's namespace are one set); run it in a network namespace of its own`,
      });
    } else {
      accepted.push(u);
    }
  }
  return { accepted, refused };
}

/** What a unit gate's cgroup is: a meshed unit's (or below it, as systemd's `.control`), a refused unit's, or none. */
export type GateTarget =
  | { kind: "unit"; record: UnitRecord }
  | { kind: "refused"; reason: string }
  | { kind: "unknown"; reason: string };

/**
 * Which unit a gate asking from `cgroup` is for. Only the view's units are ever answered for, so no process on
 * the node can have the agent capture or release a cgroup of its choosing. Pure.
 */
export function gateTarget(records: readonly UnitRecord[], cgroup: string, node: string): GateTarget {
  const path = cgroup.replace(/^\/+/, "");
  // The unit's own cgroup, or one below it: with Delegate=yes systemd runs ExecStartPre= in NAME.service/.control.
  const r = records.find((r) => path === r.cgroup || path.startsWith(`${r.cgroup}/`));
  if (r?.state === "refused") return { kind: "refused", reason: `unit gate: ${r.reason}` };
  if (r) return { kind: "unit", record: r };
  const known = records.filter((r) => r.state !== "refused").map((r) => r.cgroup);
  return {
    kind: "unknown",
    reason: `unit gate: cgroup ${JSON.stringify(path)} is not a meshed unit's on node ${node} (meshed: ` +
      `${known.length ? known.join(", ") : "none"}); declare its WorkloadEntry with skiff.io/node: ${node} and ` +
      `skiff.io/unit, or remove the skiff-mesh.conf drop-in from the unit`,
  };
}

/** The hands of {@link HostUnits}: real in `cni/mod.ts`, fakes in unit tests. */
export interface HostUnitsDeps {
  log: Logger;
  /** The node's network namespace as ztunnel is to open it (`/proc/1/ns/net`, `/var/run/netns/NAME`). */
  netns: string;
  /** The cgroup v2 hierarchy's mount point (`/sys/fs/cgroup`). */
  cgroupRoot: string;
  rules: { install(units: HostUnit[]): Promise<void>; remove(): Promise<void> };
  /** The node's IPv4 addresses. */
  localAddresses(): Promise<string[]>;
  /** A directory's inode, or undefined when it does not exist. */
  inode(dir: string): Promise<number | undefined>;
  mkdir(dir: string): Promise<void>;
  /** Removes an empty directory; one still in use stays. */
  rmdir(dir: string): Promise<void>;
  handoff: { add(pod: HandoffPod): Promise<void>; del(uid: string): Promise<void> };
}

/** The node's meshed units. Every method runs under the node agent's lock. */
export class HostUnits {
  readonly #deps: HostUnitsDeps;
  readonly #records = new Map<string, UnitRecord>();
  /** The units of the last view. */
  #wanted: NodeUnit[] = [];
  /** What the rules were last written for: the units' text and each cgroup directory's inode then. */
  #installed?: { text: string; inodes: Map<string, number> };
  /** Whether leftovers of an earlier run were cleared (the first sync with no unit removes any). */
  #cleared = false;
  /** Cgroup directories the agent made, removed (when empty) once their unit leaves. */
  readonly #made = new Set<string>();

  constructor(deps: HostUnitsDeps) {
    this.#deps = deps;
  }

  /** The units and their states, by namespace then name, for status and tests. */
  records(): UnitRecord[] {
    return [...this.#records.values()].sort((a, b) => (keyOf(a) < keyOf(b) ? -1 : keyOf(a) > keyOf(b) ? 1 : 0));
  }

  #dir(u: Pick<NodeUnit, "cgroup">): string {
    return join(this.#deps.cgroupRoot, u.cgroup);
  }

  /** Takes the view's units: meshes new ones, re-checks the others, and removes every trace of those gone. */
  async sync(units: readonly NodeUnit[]): Promise<void> {
    this.#wanted = [...units];
    const log = this.#deps.log;
    const { accepted, refused } = planUnits(units, units.length > 0 ? await this.#deps.localAddresses() : []);
    const keep = new Set(accepted.map(keyOf));
    const leaving = [...this.#records].filter(([key]) => !keep.has(key));
    for (const [key, r] of leaving) {
      if (r.state !== "refused") await this.#deps.handoff.del(unitUid(r));
      log.info({ unit: r.unit, entry: key }, "unit left the mesh: ztunnel dropped it");
    }
    for (const { unit, reason } of refused) {
      this.#records.set(keyOf(unit), { ...unit, state: "refused", reason });
      log.error({ unit: unit.unit, entry: keyOf(unit) }, reason);
    }
    // Rules first: with them in place and no ztunnel, the unit's traffic is dropped, never sent around it.
    const inodes = new Map<string, number>();
    for (const u of accepted) {
      const dir = this.#dir(u);
      let ino = await this.#deps.inode(dir);
      if (ino === undefined) {
        // Made before the unit starts, so the rule is in place for its first packet.
        await this.#deps.mkdir(dir);
        this.#made.add(dir);
        ino = await this.#deps.inode(dir);
      }
      if (ino !== undefined) inodes.set(u.cgroup, ino);
    }
    const text = JSON.stringify(accepted.map((u) => [u.cgroup, u.address, u.ports]));
    const stale = !this.#installed || this.#installed.text !== text ||
      accepted.some((u) => this.#installed!.inodes.get(u.cgroup) !== inodes.get(u.cgroup));
    try {
      if (accepted.length === 0) {
        if (this.#installed || !this.#cleared) await this.#deps.rules.remove();
        this.#installed = undefined;
        this.#cleared = true;
      } else if (stale) {
        await this.#deps.rules.install(accepted);
        this.#installed = { text, inodes };
        this.#cleared = true;
        log.info({ units: accepted.map((u) => u.unit) }, "host rules written for the node's units");
      }
    } catch (error) {
      this.#installed = undefined;
      for (const u of accepted) {
        const r = this.#records.get(keyOf(u));
        this.#records.set(keyOf(u), {
          ...u,
          state: r?.state === "redirected" ? "redirected" : "pending",
          reason: `host rules not written: ${(error as Error).message}`,
        });
      }
      throw error;
    } finally {
      // Shown (status) until their rules are gone too.
      for (const [key] of leaving) this.#records.delete(key);
      for (const { unit, reason } of refused) this.#records.set(keyOf(unit), { ...unit, state: "refused", reason });
      for (const dir of [...this.#made]) {
        if (accepted.some((u) => this.#dir(u) === dir)) continue;
        await this.#deps.rmdir(dir).catch(() => {});
        this.#made.delete(dir);
      }
    }
    for (const u of accepted) {
      const r = this.#records.get(keyOf(u));
      const same = r !== undefined && r.state !== "refused" && r.serviceAccount === u.serviceAccount;
      // ztunnel keeps a uid's identity while its namespace is the same: a new one needs the unit dropped first.
      if (r && r.state !== "refused" && !same) await this.#deps.handoff.del(unitUid(u));
      if (r && r.state === "redirected" && same) {
        this.#records.set(keyOf(u), { ...u, state: "redirected", reason: "rules in place, ztunnel serves it" });
        continue;
      }
      try {
        await this.#deps.handoff.add(this.handoffPod(u));
        this.#records.set(keyOf(u), { ...u, state: "redirected", reason: "rules in place, ztunnel serves it" });
        log.info({ unit: u.unit, entry: keyOf(u), cgroup: u.cgroup }, "unit handed to ztunnel: redirected");
      } catch (error) {
        const reason = `rules in place, ztunnel not reached (its traffic is refused): ${(error as Error).message}`;
        this.#records.set(keyOf(u), { ...u, state: "pending", reason });
      }
    }
  }

  /** Looks at the cgroup directories again: one gone or made anew gets the rules written again. */
  async watch(): Promise<void> {
    if (!this.#installed) return;
    for (const u of this.#wanted) {
      const want = this.#installed.inodes.get(u.cgroup);
      if (want === undefined) continue;
      if (await this.#deps.inode(this.#dir(u)) !== want) {
        this.#deps.log.info({ unit: u.unit, cgroup: u.cgroup }, "unit's cgroup changed: host rules written again");
        await this.sync(this.#wanted);
        return;
      }
    }
  }

  /**
   * A unit gate from `cgroup` (cni/unit_gate.ts), with the view's units: the rules are written again when the
   * unit's cgroup directory is not the one they hold, and the answer comes only once they hold the one there now
   * and the unit is redirected. Throws a {@link CniError}: try again later (503) while that cannot hold yet, any
   * other code when it never will (the cgroup is no meshed unit's).
   */
  async gate(cgroup: string, units: readonly NodeUnit[], node: string): Promise<UnitGateAnswer> {
    if (!this.#installed || JSON.stringify(units) !== JSON.stringify(this.#wanted)) await this.sync(units);
    const target = gateTarget(this.records(), cgroup, node);
    if (target.kind !== "unit") throw new CniError(CNI_CODES.notAvailable, target.reason);
    const u = target.record;
    const dir = this.#dir(u);
    const before = await this.#deps.inode(dir);
    if (before === undefined) throw new CniError(CNI_CODES.tryAgainLater, `unit gate: ${dir} is gone`);
    if (this.#installed?.inodes.get(u.cgroup) !== before || u.state !== "redirected") {
      this.#deps.log.info({ unit: u.unit, cgroup: u.cgroup, inode: before }, "unit gate: host rules written again");
      await this.sync(units);
    }
    const after = await this.#deps.inode(dir);
    const held = this.#installed?.inodes.get(u.cgroup);
    if (held !== after || after !== before) {
      throw new CniError(
        CNI_CODES.tryAgainLater,
        `unit gate: ${dir} changed while its rules were written (inode ${before}, now ${after}, rules ${held})`,
      );
    }
    const now = this.#records.get(keyOf(u));
    if (now?.state !== "redirected") {
      throw new CniError(CNI_CODES.tryAgainLater, `unit gate: ${u.unit}: ${now?.reason ?? "not meshed yet"}`);
    }
    return { entry: keyOf(u), unit: u.unit, cgroup: u.cgroup, inode: after };
  }

  /** Whether the view's units are all settled (none pending): the periodic reconcile retries those that are not. */
  get settled(): boolean {
    return this.records().every((r) => r.state !== "pending");
  }

  /** What ztunnel is handed for a unit: a pod whose network namespace is the node's. */
  handoffPod(u: NodeUnit): HandoffPod {
    return {
      uid: unitUid(u),
      workload: { name: u.name, namespace: u.namespace, serviceAccount: u.serviceAccount },
      netns: this.#deps.netns,
    };
  }

  /** The units a (new) ztunnel is to serve: every one whose rules are in place. */
  snapshot(): HandoffPod[] {
    return this.records().filter((r) => r.state !== "refused" && this.#installed).map((r) => this.handoffPod(r));
  }

  /** After a snapshot: acknowledged units are redirected, the others wait for the next reconcile. */
  snapshotTaken(acked: ReadonlySet<string>): void {
    for (const r of this.#records.values()) {
      if (r.state === "refused") continue;
      r.state = acked.has(unitUid(r)) ? "redirected" : "pending";
      if (r.state === "pending") r.reason = "rules in place, ztunnel refused the unit in its snapshot";
    }
  }
}
