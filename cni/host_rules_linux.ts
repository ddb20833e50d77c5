/**
 * The host rule set: what captures a meshed systemd unit's traffic in the node's own network namespace (a
 * WorkloadEntry with `skiff.io/unit`, docs/vm-install.md §4). It is the in-pod rule set (cni/redirect_linux.ts)
 * narrowed to the unit: the same marks, routing table and TPROXY ports, in chains of their own (`SKIFF_HOST_*`), so
 * a node's pods, its probe SNAT and the rest of the host never meet them. What is captured is chosen by cgroup
 * (outbound) and by address and port (inbound); everything else on the host (sshd, the agent, the control plane's
 * connections, ztunnel's own marked sockets) passes through every chain untouched.
 *
 * mangle OUTPUT → SKIFF_HOST_OUTPUT:
 *  1. ztunnel's own packets (0x539): untouched.
 *  2. A unit's replies on connections ztunnel dialled to it (connmark 0x111): restore the mark, so they route
 *     through table 100 back to ztunnel's transparent socket; then leave them.
 *  3. Per unit: TCP to its ports on any of the node's addresses (127/8 too) from outside its cgroup and the
 *     cgroups below it: dropped (the caller's connect times out; mangle has no REJECT). Such a caller (any local
 *     user's process) meets the unit through `lo`, which PREROUTING does not capture, so it would reach the unit
 *     in plaintext around ztunnel and its policy: a pod's loopback has only the pod behind it, the node's has
 *     every process on the node. ztunnel's own dials to the unit left at rule 1. A node-local client of the unit
 *     is to be a meshed unit itself, or call it from another node.
 *  4. Anything else through `lo` or to 127/8 (the unit calling the node's own addresses): not captured, as in a pod.
 *  5. TCP to port 53: not captured (no DNS proxy for units yet).
 *  6. Per unit: TCP it originates (`-m cgroup --path <its cgroup v2 path>`, conntrack ORIGINAL) gets 0x111 and is
 *     rerouted through `lo` to PREROUTING rule 3. The cgroup match is the kernel's own record of which unit owns
 *     the socket (set when the socket is made), so no process can leave it short of leaving the cgroup.
 *
 * mangle PREROUTING → SKIFF_HOST_PRERT:
 *  1. ztunnel's own packets looping through `lo` (0x539, its dials to the unit from the caller's address): tag the
 *     connection 0x111 (for OUTPUT rule 2); then leave them.
 *  2. A packet for a connection a transparent ztunnel socket holds: mark 0x111 and deliver it (SKIFF_HOST_DIVERT).
 *     `-m socket` ignores sockets bound to 0.0.0.0 (no `--nowildcard`), so traffic the node forwards to its
 *     pods is never taken by ztunnel's host listeners.
 *  3. A unit's new outbound connections, rerouted here by OUTPUT rule 6: TPROXY to 15001.
 *  4. Anything else on `lo`: not captured.
 *  5. 15001 and 15006 from the network to the node: dropped. They are capture ports, and a caller reaching them
 *     directly would have ztunnel speak as the unit.
 *  6. Connections established before capture began: not captured.
 *  7. Per unit: new TCP to its address and ports: TPROXY to 15006 (plaintext inbound). HBONE reaches ztunnel's
 *     15008 listener directly.
 *
 * UDP is not captured, either way, as a pod's is not but for DNS (upstream ztunnel carries TCP only): a unit's
 * UDP, DNS too (no DNS proxy for units yet), leaves and arrives in plaintext from and to the node's address, with
 * no mesh identity and no policy applied.
 *
 * ip6tables mangle, the same chain names: the unit's IPv6 is dropped but loopback, out by its cgroup and in to its
 * ports ({@link hostChains6}), as a pod's is, and node-local callers of its ports (`::1` too) as OUTPUT rule 3; the
 * host's other IPv6 is untouched.
 *
 * With ztunnel away, TPROXY finds no listener and drops the packet: the unit's captured connections fail, in
 * both directions, and never leave in plaintext. The policy route (`fwmark 0x111/0xfff lookup 100`, table 100
 * `local default dev lo`) is the in-pod one, installed in the node's namespace only while a unit is meshed.
 *
 * The cgroup match resolves its path once, when the rule is written, and holds that cgroup: a directory removed
 * and made again (systemd does so at each restart of a unit) is a new cgroup the rule does not match, though
 * `iptables-save` prints the rule unchanged. `cni/host_units.ts` therefore writes the set again whenever a unit's
 * cgroup directory changes (its inode), and makes the directory itself before the unit starts.
 *
 * @module
 */

import type { NodeUnit } from "../mesh/protocol/node_pods.ts";
import {
  INBOUND_PLAINTEXT_PORT,
  inNs,
  INPOD_MARK,
  MARK_MASK,
  mustInNs,
  OUTBOUND_PORT,
  ROUTE_TABLE,
  RULE_PRIORITY,
  TPROXY_MARK,
} from "./redirect_linux.ts";

const hex = (n: number) => `0x${n.toString(16)}`;
const MARK = `${hex(INPOD_MARK)}/${hex(MARK_MASK)}`;
const TMARK = `${hex(TPROXY_MARK)}/${hex(MARK_MASK)}`;

/** The host chains in mangle, and the built-in chain each is jumped to from (first rule there). */
export const HOST_JUMPS: readonly (readonly [string, string])[] = [
  ["PREROUTING", "SKIFF_HOST_PRERT"],
  ["OUTPUT", "SKIFF_HOST_OUTPUT"],
];

/** What the rules need of a unit. */
export type HostUnit = Pick<NodeUnit, "cgroup" | "address" | "ports">;

/**
 * The rule refusing a node-local caller outside `u`'s cgroup (or below it: the match takes descendants) the unit's
 * ports on any of the node's addresses: through `lo` it would reach the unit uncaptured (OUTPUT rule 3).
 */
const localDrop = (chain: string, u: HostUnit) =>
  `-A ${chain} -p tcp -m addrtype --dst-type LOCAL -m multiport --dports ${u.ports.join(",")} ` +
  `-m cgroup ! --path "${u.cgroup}" -j DROP`;

/** The chains for `units`, as `iptables-save` prints them (so a check compares text). Pure. */
export function hostChains(units: readonly HostUnit[]): Record<string, string[]> {
  const sorted = [...units].sort((a, b) => (a.cgroup < b.cgroup ? -1 : a.cgroup > b.cgroup ? 1 : 0));
  return {
    SKIFF_HOST_DIVERT: [
      `-A SKIFF_HOST_DIVERT -j MARK --set-xmark ${TMARK}`,
      `-A SKIFF_HOST_DIVERT -j ACCEPT`,
    ],
    SKIFF_HOST_OUTPUT: [
      `-A SKIFF_HOST_OUTPUT -m mark --mark ${MARK} -j RETURN`,
      `-A SKIFF_HOST_OUTPUT -m connmark --mark ${TMARK} -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff`,
      `-A SKIFF_HOST_OUTPUT -m mark --mark ${TMARK} -j RETURN`,
      ...sorted.map((u) => localDrop("SKIFF_HOST_OUTPUT", u)),
      `-A SKIFF_HOST_OUTPUT -o lo -j RETURN`,
      `-A SKIFF_HOST_OUTPUT -d 127.0.0.0/8 -j RETURN`,
      `-A SKIFF_HOST_OUTPUT -p tcp -m tcp --dport 53 -j RETURN`,
      ...sorted.map((u) =>
        `-A SKIFF_HOST_OUTPUT -p tcp -m cgroup --path "${u.cgroup}" -m conntrack --ctdir ORIGINAL ` +
        `-j MARK --set-xmark ${TMARK}`
      ),
    ],
    SKIFF_HOST_PRERT: [
      `-A SKIFF_HOST_PRERT -i lo -m mark --mark ${MARK} -j CONNMARK --set-xmark ${TMARK}`,
      `-A SKIFF_HOST_PRERT -i lo -m mark --mark ${MARK} -j RETURN`,
      `-A SKIFF_HOST_PRERT -p tcp -m socket --transparent -j SKIFF_HOST_DIVERT`,
      `-A SKIFF_HOST_PRERT -i lo -p tcp -m mark --mark ${TMARK} -j TPROXY --on-port ${OUTBOUND_PORT} --on-ip 0.0.0.0 --tproxy-mark ${TMARK}`,
      `-A SKIFF_HOST_PRERT -i lo -j RETURN`,
      `-A SKIFF_HOST_PRERT -p tcp -m addrtype --dst-type LOCAL -m multiport --dports ${OUTBOUND_PORT},${INBOUND_PLAINTEXT_PORT} -j DROP`,
      `-A SKIFF_HOST_PRERT -p tcp -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN`,
      ...sorted.map((u) =>
        `-A SKIFF_HOST_PRERT -d ${u.address}/32 -p tcp -m multiport --dports ${u.ports.join(",")} ` +
        `-j TPROXY --on-port ${INBOUND_PLAINTEXT_PORT} --on-ip 0.0.0.0 --tproxy-mark ${TMARK}`
      ),
    ],
  };
}

/**
 * The IPv6 chains (ip6tables mangle, the same jumps): a unit's IPv6 is dropped but loopback, out (by its cgroup)
 * and in (to its ports on the node's addresses), as a pod's IPv6 is (cni/redirect_linux.ts): Skiff captures IPv4
 * only, and a unit must not be reached, or reach out, around ztunnel over IPv6. The rest of the host's IPv6 is
 * untouched. Pure.
 */
export function hostChains6(units: readonly HostUnit[]): Record<string, string[]> {
  const sorted = [...units].sort((a, b) => (a.cgroup < b.cgroup ? -1 : a.cgroup > b.cgroup ? 1 : 0));
  return {
    SKIFF_HOST_OUTPUT: [
      ...sorted.map((u) => localDrop("SKIFF_HOST_OUTPUT", u)),
      "-A SKIFF_HOST_OUTPUT -o lo -j RETURN",
      ...sorted.map((u) => `-A SKIFF_HOST_OUTPUT -m cgroup --path "${u.cgroup}" -j DROP`),
    ],
    SKIFF_HOST_PRERT: [
      "-A SKIFF_HOST_PRERT -i lo -j RETURN",
      ...sorted.map((u) =>
        `-A SKIFF_HOST_PRERT -p tcp -m addrtype --dst-type LOCAL -m multiport --dports ${u.ports.join(",")} -j DROP`
      ),
    ],
  };
}

/** One address family's tools and chains. */
interface Family {
  iptables: string;
  save: string;
  restore: string;
  chains: (units: readonly HostUnit[]) => Record<string, string[]>;
}

const FAMILIES: readonly Family[] = [
  { iptables: "iptables", save: "iptables-save", restore: "iptables-restore", chains: hostChains },
  { iptables: "ip6tables", save: "ip6tables-save", restore: "ip6tables-restore", chains: hostChains6 },
];

/** The `iptables-restore --noflush` input that writes `chains` whole (declaring a chain flushes it). Pure. */
function restoreInput(chains: Record<string, string[]>): string {
  const names = Object.keys(chains);
  return ["*mangle", ...names.map((c) => `:${c} - [0:0]`), ...names.flatMap((c) => chains[c]), "COMMIT", ""].join(
    "\n",
  );
}

/** The IPv4 `iptables-restore --noflush` input for `units`. Pure. */
export function hostRestoreInput(units: readonly HostUnit[]): string {
  return restoreInput(hostChains(units));
}

/**
 * Writes the host rule set for `units` in the namespace at `netns` (the agent's own when undefined): the chains
 * whole and atomically, then the jumps (each once, first), IPv4 then IPv6, then the policy route. Rewriting
 * re-resolves every cgroup path. A unit whose cgroup directory does not exist fails the whole write (iptables
 * refuses the path): the caller makes the directories first.
 */
export async function installHostRules(netns: string | undefined, units: readonly HostUnit[]): Promise<void> {
  for (const f of FAMILIES) {
    await mustInNs(netns, [f.restore, "-w", "--noflush"], restoreInput(f.chains(units)));
    const saved = (await mustInNs(netns, [f.save, "-t", "mangle"])).split("\n");
    for (const [from, to] of HOST_JUMPS) {
      const rules = saved.filter((l) => l.startsWith(`-A ${from} `));
      const jump = `-A ${from} -j ${to}`;
      if (rules.filter((l) => l === jump).length === 1 && rules[0] === jump) continue;
      while ((await inNs(netns, [f.iptables, "-w", "-t", "mangle", "-C", from, "-j", to])).code === 0) {
        await mustInNs(netns, [f.iptables, "-w", "-t", "mangle", "-D", from, "-j", to]);
      }
      await mustInNs(netns, [f.iptables, "-w", "-t", "mangle", "-I", from, "1", "-j", to]);
    }
  }
  const rule = await mustInNs(netns, ["ip", "rule", "list", "pref", String(RULE_PRIORITY)]);
  if (!rule.includes(`fwmark ${TMARK} lookup ${ROUTE_TABLE}`)) {
    const pref = String(RULE_PRIORITY);
    await mustInNs(netns, ["ip", "rule", "add", "fwmark", TMARK, "pref", pref, "lookup", String(ROUTE_TABLE)]);
  }
  await mustInNs(netns, ["ip", "route", "replace", "local", "0.0.0.0/0", "dev", "lo", "table", String(ROUTE_TABLE)]);
}

/** Removes the host rule set, both families, and the policy route; removing what is not there is not an error. */
export async function removeHostRules(netns: string | undefined): Promise<void> {
  for (const f of FAMILIES) {
    for (const [from, to] of HOST_JUMPS) {
      while ((await inNs(netns, [f.iptables, "-w", "-t", "mangle", "-C", from, "-j", to])).code === 0) {
        await mustInNs(netns, [f.iptables, "-w", "-t", "mangle", "-D", from, "-j", to]);
      }
    }
    const saved = await mustInNs(netns, [f.save, "-t", "mangle"]);
    // Flush all first: SKIFF_HOST_PRERT refers to SKIFF_HOST_DIVERT, which cannot go while referenced.
    const present = Object.keys(f.chains([])).filter((c) => saved.includes(`:${c} `));
    for (const c of present) await mustInNs(netns, [f.iptables, "-w", "-t", "mangle", "-F", c]);
    for (const c of present) await mustInNs(netns, [f.iptables, "-w", "-t", "mangle", "-X", c]);
  }
  const ours = `fwmark ${TMARK} lookup ${ROUTE_TABLE}`;
  if (!(await mustInNs(netns, ["ip", "rule", "list", "pref", String(RULE_PRIORITY)])).includes(ours)) return;
  while ((await mustInNs(netns, ["ip", "rule", "list", "pref", String(RULE_PRIORITY)])).includes(ours)) {
    await mustInNs(netns, ["ip", "rule", "del", "fwmark", TMARK, "pref", String(RULE_PRIORITY)]);
  }
  await inNs(netns, ["ip", "route", "flush", "table", String(ROUTE_TABLE)]);
}

/** What differs from the rule set for `units`, both families (empty when all is in place), for status and tests. */
export async function checkHostRules(netns: string | undefined, units: readonly HostUnit[]): Promise<string[]> {
  const problems: string[] = [];
  for (const f of FAMILIES) {
    const saved = (await mustInNs(netns, [f.save, "-t", "mangle"])).split("\n");
    for (const [chain, rules] of Object.entries(f.chains(units))) {
      const have = saved.filter((l) => l.startsWith(`-A ${chain} `));
      if (have.join("\n") !== rules.join("\n")) {
        problems.push(`${f.iptables}: chain ${chain} differs from the units' set`);
      }
    }
    for (const [from, to] of HOST_JUMPS) {
      const rules = saved.filter((l) => l.startsWith(`-A ${from} `));
      const jumps = rules.filter((l) => l === `-A ${from} -j ${to}`).length;
      if (rules[0] !== `-A ${from} -j ${to}` || jumps !== 1) {
        problems.push(`${f.iptables}: ${from} jumps to ${to} ${jumps} times, expected once and first`);
      }
    }
  }
  return problems;
}
