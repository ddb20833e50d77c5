/**
 * The node's side of in-pod redirection: health probes. The kubelet (or any process on the node) probing an
 * enrolled pod must reach the app itself, not ztunnel, which would refuse a plaintext caller under STRICT mTLS.
 * As upstream's `AppendHostRules`, connections from the node's own sockets (`-m owner --socket-exists` matches
 * locally originated packets only, never forwarded traffic) to an enrolled pod are SNATed to
 * {@link PROBE_SNAT_IP}, a source the pod's rules never capture (cni/redirect_linux.ts). Upstream keeps the pod
 * addresses in an ipset; Skiff writes one rule per address into its own chain, rewritten whole with
 * `iptables-restore --noflush`, so no ipset package or kernel module is needed (a node holds at most a few hundred
 * pods).
 *
 * @module
 */

import { isIPv4 } from "node:net";
import { inNs, mustInNs, PROBE_SNAT_IP } from "./redirect_linux.ts";

/** The chain in the node's nat table. */
export const PROBE_CHAIN = "SKIFF_POSTRT";

/** The `iptables-restore --noflush` input that makes the chain hold exactly these addresses' rules. */
export function probeRulesInput(podIps: readonly string[]): string {
  const rules = [...new Set(podIps)].filter((ip) => isIPv4(ip)).sort().map((ip) =>
    `-A ${PROBE_CHAIN} -d ${ip}/32 -p tcp -m owner --socket-exists -j SNAT --to-source ${PROBE_SNAT_IP}`
  );
  return ["*nat", `:${PROBE_CHAIN} - [0:0]`, ...rules, "COMMIT", ""].join("\n");
}

/**
 * Makes the node's probe rules cover exactly `podIps` (IPv4; IPv6 pods are not probed through SNAT yet), in the
 * namespace at `netns`, or the agent's own when undefined. Idempotent.
 */
export async function syncProbeRules(netns: string | undefined, podIps: readonly string[]): Promise<void> {
  await mustInNs(netns, ["iptables-restore", "-w", "--noflush"], probeRulesInput(podIps));
  const jump = ["POSTROUTING", "-j", PROBE_CHAIN];
  if ((await inNs(netns, ["iptables", "-w", "-t", "nat", "-C", ...jump])).code !== 0) {
    await mustInNs(netns, ["iptables", "-w", "-t", "nat", "-I", "POSTROUTING", "1", "-j", PROBE_CHAIN]);
  }
}

/** The addresses the node's probe rules cover now. */
export async function probeRuleAddresses(netns: string | undefined): Promise<string[]> {
  const saved = await mustInNs(netns, ["iptables-save", "-t", "nat"]);
  return saved.split("\n").filter((l) => l.startsWith(`-A ${PROBE_CHAIN} `)).map((l) =>
    / -d ([0-9.]+)\/32 /.exec(l)?.[1] ?? ""
  ).filter((ip) => ip !== "");
}

/** Removes the chain and its jump; removing what is not there is not an error. */
export async function removeProbeRules(netns: string | undefined): Promise<void> {
  while ((await inNs(netns, ["iptables", "-w", "-t", "nat", "-C", "POSTROUTING", "-j", PROBE_CHAIN])).code === 0) {
    await mustInNs(netns, ["iptables", "-w", "-t", "nat", "-D", "POSTROUTING", "-j", PROBE_CHAIN]);
  }
  if ((await inNs(netns, ["iptables", "-w", "-t", "nat", "-F", PROBE_CHAIN])).code === 0) {
    await mustInNs(netns, ["iptables", "-w", "-t", "nat", "-X", PROBE_CHAIN]);
  }
}
