/**
 * The in-pod redirection: the rules inside an enrolled pod's network namespace that send its TCP traffic to
 * ztunnel, installed, checked and removed idempotently. ztunnel's tests and the node agent both use this one
 * module.
 *
 * Skiff captures with TPROXY rather than upstream's nat REDIRECT (Deno gives no fd of an accepted socket, so
 * `SO_ORIGINAL_DST` is out; a listener with IP_TRANSPARENT sees the original destination as its local
 * address). Marks and table are upstream's (istio-cni `config.go`): 0x539 on every socket ztunnel opens,
 * 0x111 for "deliver locally", routing table 100 with `local 0.0.0.0/0 dev lo` and the rule `fwmark
 * 0x111/0xfff lookup 100` at priority 32764. Because TPROXY works on every packet (REDIRECT only on the first
 * of a connection), the order below matters; each line says why it is where it is.
 *
 * mangle PREROUTING → SKIFF_PRERT:
 *  1. ztunnel's own packets (0x539), looping through `lo` to the app with a spoofed client source: tag the
 *     connection 0x111, so the app's replies are routed back to ztunnel; then leave them alone.
 *  2. A packet of a connection a transparent ztunnel socket already holds: mark 0x111 and deliver it to that
 *     socket (SKIFF_DIVERT). This carries every established captured flow and the replies above.
 *  3. Node health probes, SNATed to 169.254.7.127 on the node: never captured.
 *  4. New outbound connections from the app, rerouted here through `lo` by SKIFF_OUTPUT: TPROXY to 15001.
 *  5. Anything else on `lo` (loopback, the app calling its own pod IP): not captured.
 *  6. Connections established before capture began, and replies to ztunnel's own dials: not captured.
 *  7. Inbound TCP from the network, except to the HBONE port 15008: TPROXY to 15006.
 *
 * mangle OUTPUT → SKIFF_OUTPUT:
 *  1. ztunnel's own packets (0x539): untouched; above all, not given the connection's 0x111.
 *  2. The app's replies on connections ztunnel dialled (connmark 0x111): restore the mark, so they route
 *     through table 100 to ztunnel's transparent socket.
 *  3. Loopback and the pod's own addresses: not captured.
 *  4. TCP to port 53: left to nat SKIFF_DNS below (marked, it would reach 15001 through PREROUTING rule 4).
 *  5. Packets the app originates (conntrack ORIGINAL direction) get 0x111: rerouted through `lo` to
 *     PREROUTING, where rule 2 or 4 takes them to ztunnel. Replies to connections others opened (probes,
 *     connections that predate capture) are the REPLY direction and go out as usual.
 *
 * nat OUTPUT → SKIFF_DNS, DNS capture (upstream's `ISTIO_OUTPUT` rules 4 and 5 in istio-cni `iptables.go`):
 *  1. ztunnel's own packets (0x539): never captured (a DNS proxy that forwarded from the pod would loop).
 *  2. UDP and TCP to port 53 not leaving through `lo`: REDIRECT to ztunnel's DNS proxy on 127.0.0.1:15053.
 *     nat, not TPROXY: conntrack rewrites the replies' source back to the resolver the app asked, so the proxy
 *     needs no transparent UDP socket. With the proxy down the query meets a closed port (ICMP port
 *     unreachable, or a TCP reset) and fails: it never reaches the resolver around ztunnel.
 *  {@link dnsCaptureRules} builds these rules for any chain, so a host's rules can capture the same way.
 *
 * IPv6 is not captured yet, and it cannot simply be left alone: every interface in a pod has an `fe80::`
 * address (RFC 4862 §5.3) whatever its CNI configured, so a neighbour on the node's bridge would reach the app
 * over `[fe80::…%eth0]` around ztunnel, and the app's own IPv6 would leave uncaptured. So the same chain names
 * in ip6tables' mangle table drop all IPv6 but loopback, both ways: PREROUTING (before routing, so nothing
 * addressed to the pod or through it) and OUTPUT. Upstream ztunnel captures IPv6 in dual-stack clusters with
 * the same rules under ip6tables (istio-cni `ambient.ipv6`); Skiff drops it until it captures it too. The IPv6 set is
 * installed, checked and removed with the IPv4 one; if it cannot be installed (no ip6tables, no IPv6 netfilter)
 * installation fails and the agent refuses the pod rather than enrol it with its IPv6 open.
 *
 * ip6tables mangle PREROUTING → SKIFF_PRERT: `lo` returns (`::1`, the pod's own addresses); all else is dropped.
 * ip6tables mangle OUTPUT → SKIFF_OUTPUT: `lo` returns; all else, neighbour discovery included, is dropped.
 *
 * @module
 */

import { inNs, INPOD_MARK } from "../mesh/inpod.ts";
import { HBONE_PORT } from "../mesh/workload.ts";

// INPOD_MARK and inNs live in mesh/inpod.ts, shared with ztunnel and the demo; re-exported for this role.
export { inNs, INPOD_MARK };
/** The mark that routes a packet through table 100 to a local (transparent) socket. */
export const TPROXY_MARK = 0x111;
/** The mask both marks are compared under. */
export const MARK_MASK = 0xfff;
/** The routing table of the `local` default route. */
export const ROUTE_TABLE = 100;
/** Priority of the `fwmark` rule. */
export const RULE_PRIORITY = 32764;
/** The source node health probes are SNATed to. */
export const PROBE_SNAT_IP = "169.254.7.127";
/** ztunnel's outbound capture port. */
export const OUTBOUND_PORT = 15001;
/** ztunnel's inbound plaintext capture port. */
export const INBOUND_PLAINTEXT_PORT = 15006;
/** ztunnel's DNS proxy port (UDP and TCP, on 127.0.0.1), upstream's `DNSCapturePort`. */
export const DNS_CAPTURE_PORT = 15053;

const hex = (n: number) => `0x${n.toString(16)}`;
const MARK = `${hex(INPOD_MARK)}/${hex(MARK_MASK)}`;
const TMARK = `${hex(TPROXY_MARK)}/${hex(MARK_MASK)}`;

/** Our chains, each with its rules, written as `iptables-save` prints them (so `check` compares text). */
export const CHAINS: Readonly<Record<string, readonly string[]>> = {
  SKIFF_DIVERT: [
    `-A SKIFF_DIVERT -j MARK --set-xmark ${TMARK}`,
    `-A SKIFF_DIVERT -j ACCEPT`,
  ],
  SKIFF_OUTPUT: [
    `-A SKIFF_OUTPUT -m mark --mark ${MARK} -j RETURN`,
    `-A SKIFF_OUTPUT -m connmark --mark ${TMARK} -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff`,
    `-A SKIFF_OUTPUT -m mark --mark ${TMARK} -j RETURN`,
    `-A SKIFF_OUTPUT -o lo -j RETURN`,
    `-A SKIFF_OUTPUT -d 127.0.0.0/8 -j RETURN`,
    `-A SKIFF_OUTPUT -p tcp -m tcp --dport 53 -j RETURN`,
    `-A SKIFF_OUTPUT -p tcp -m conntrack --ctdir ORIGINAL -j MARK --set-xmark ${TMARK}`,
  ],
  SKIFF_PRERT: [
    `-A SKIFF_PRERT -m mark --mark ${MARK} -j CONNMARK --set-xmark ${TMARK}`,
    `-A SKIFF_PRERT -m mark --mark ${MARK} -j RETURN`,
    `-A SKIFF_PRERT -p tcp -m socket --transparent -j SKIFF_DIVERT`,
    `-A SKIFF_PRERT -s ${PROBE_SNAT_IP}/32 -p tcp -j RETURN`,
    `-A SKIFF_PRERT -i lo -p tcp -m mark --mark ${TMARK} -j TPROXY --on-port ${OUTBOUND_PORT} --on-ip 0.0.0.0 --tproxy-mark ${TMARK}`,
    `-A SKIFF_PRERT -i lo -j RETURN`,
    `-A SKIFF_PRERT -p tcp -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN`,
    `-A SKIFF_PRERT -p tcp -m tcp ! --dport ${HBONE_PORT} -j TPROXY --on-port ${INBOUND_PLAINTEXT_PORT} --on-ip 0.0.0.0 --tproxy-mark ${TMARK}`,
  ],
};

/**
 * DNS capture as nat rules of `chain` (as `iptables-save` prints them): every UDP and TCP query to port 53 that does
 * not leave through `lo`, unless ztunnel sent it (0x539), is REDIRECTed to {@link DNS_CAPTURE_PORT}. The in-pod set
 * uses it as `SKIFF_DNS`; a host's rules can put a cgroup match in front of a jump to the same rules.
 */
export function dnsCaptureRules(chain: string): string[] {
  return [
    `-A ${chain} -m mark --mark ${MARK} -j RETURN`,
    `-A ${chain} ! -o lo -p udp -m udp --dport 53 -j REDIRECT --to-ports ${DNS_CAPTURE_PORT}`,
    `-A ${chain} ! -o lo -p tcp -m tcp --dport 53 -j REDIRECT --to-ports ${DNS_CAPTURE_PORT}`,
  ];
}

/** The in-pod nat chains: DNS capture. */
export const NAT_CHAINS: Readonly<Record<string, readonly string[]>> = { SKIFF_DNS: dnsCaptureRules("SKIFF_DNS") };

/** The nat jump into {@link NAT_CHAINS}, first in nat OUTPUT (why first: see {@link JUMPS}). */
export const NAT_JUMPS: readonly (readonly [string, string])[] = [["OUTPUT", "SKIFF_DNS"]];

/**
 * The jumps from the built-in chains into ours, each the first rule of its chain, once (install puts it there,
 * check insists on it): a rule ahead of it that ACCEPTs would end the table for the packet, skipping our set.
 */
export const JUMPS: readonly (readonly [string, string])[] = [["PREROUTING", "SKIFF_PRERT"], [
  "OUTPUT",
  "SKIFF_OUTPUT",
]];

/**
 * The IPv6 chains (ip6tables mangle, reached by the same {@link JUMPS}): all IPv6 but loopback dropped both
 * ways, until Skiff captures IPv6. Written as `ip6tables-save` prints them.
 */
export const CHAINS6: Readonly<Record<string, readonly string[]>> = {
  SKIFF_OUTPUT: [
    `-A SKIFF_OUTPUT -o lo -j RETURN`,
    `-A SKIFF_OUTPUT -j DROP`,
  ],
  SKIFF_PRERT: [
    `-A SKIFF_PRERT -i lo -j RETURN`,
    `-A SKIFF_PRERT -j DROP`,
  ],
};

/** One table's rule set in one address family, and the tools that write and read it. */
interface Family {
  /** Prefix of this set's problems in {@link checkRedirect}'s report ("" for IPv4 mangle, as it always was). */
  label: string;
  iptables: string;
  save: string;
  restore: string;
  table: "mangle" | "nat";
  chains: Readonly<Record<string, readonly string[]>>;
  jumps: readonly (readonly [string, string])[];
}

const IPV4: Family = {
  label: "",
  iptables: "iptables",
  save: "iptables-save",
  restore: "iptables-restore",
  table: "mangle",
  chains: CHAINS,
  jumps: JUMPS,
};
const IPV4_NAT: Family = { ...IPV4, label: "nat: ", table: "nat", chains: NAT_CHAINS, jumps: NAT_JUMPS };
const IPV6: Family = {
  label: "IPv6: ",
  iptables: "ip6tables",
  save: "ip6tables-save",
  restore: "ip6tables-restore",
  table: "mangle",
  chains: CHAINS6,
  jumps: JUMPS,
};

/** A command that failed inside the pod's namespace. */
export class RedirectError extends Error {
  readonly code = "REDIRECT";
  constructor(message: string) {
    super(message);
    this.name = "RedirectError";
  }
}

/** What {@link checkRedirect} found missing or wrong; empty when all is in place. */
export interface RedirectProblems {
  problems: string[];
}

/** {@link inNs}, throwing a {@link RedirectError} with the command's stderr when it fails. */
export async function mustInNs(netnsPath: string | undefined, cmd: string[], stdin?: string): Promise<string> {
  const r = await inNs(netnsPath, cmd, stdin);
  if (r.code !== 0) {
    const where = netnsPath ?? "the node's namespace";
    throw new RedirectError(`in ${where}: ${cmd.join(" ")} failed (exit ${r.code}): ${r.stderr.trim()}`);
  }
  return r.stdout;
}

/**
 * The `iptables-restore --noflush` input that (re)writes our chains (`chains`: {@link CHAINS}, or
 * {@link CHAINS6} for `ip6tables-restore`); declaring a chain flushes it, so the rewrite is whole and atomic.
 */
export function restoreInput(
  chains: Readonly<Record<string, readonly string[]>> = CHAINS,
  table: "mangle" | "nat" = "mangle",
): string {
  const names = Object.keys(chains);
  return [`*${table}`, ...names.map((c) => `:${c} - [0:0]`), ...names.flatMap((c) => chains[c]), "COMMIT", ""].join(
    "\n",
  );
}

async function hasJump(netnsPath: string, f: Family, from: string, to: string): Promise<boolean> {
  return (await inNs(netnsPath, [f.iptables, "-w", "-t", f.table, "-C", from, "-j", to])).code === 0;
}

/**
 * The rules of the built-in chain `from` ahead of its first jump to `to` (all of them when there is none). Our
 * jump must come first: an ACCEPT ahead of it ends the table for the packet, skipping the whole set.
 */
function ahead(saved: string[], from: string, to: string): number {
  const rules = saved.filter((l) => l.startsWith(`-A ${from} `));
  const at = rules.indexOf(`-A ${from} -j ${to}`);
  return at < 0 ? rules.length : at;
}

async function installChains(netnsPath: string, f: Family): Promise<void> {
  await mustInNs(netnsPath, [f.restore, "-w", "--noflush"], restoreInput(f.chains, f.table));
  const saved = (await mustInNs(netnsPath, [f.save, "-t", f.table])).split("\n");
  for (const [from, to] of f.jumps) {
    const count = saved.filter((l) => l === `-A ${from} -j ${to}`).length;
    if (count === 1 && ahead(saved, from, to) === 0) continue;
    // Missing, duplicated or behind another rule: written again, once, first.
    while (await hasJump(netnsPath, f, from, to)) {
      await mustInNs(netnsPath, [f.iptables, "-w", "-t", f.table, "-D", from, "-j", to]);
    }
    await mustInNs(netnsPath, [f.iptables, "-w", "-t", f.table, "-I", from, "1", "-j", to]);
  }
}

async function checkChains(netnsPath: string, f: Family, problems: string[]): Promise<void> {
  const saved = (await mustInNs(netnsPath, [f.save, "-t", f.table])).split("\n");
  for (const [chain, rules] of Object.entries(f.chains)) {
    const have = saved.filter((l) => l.startsWith(`-A ${chain} `));
    if (!saved.includes(`:${chain} - [0:0]`) && have.length === 0) {
      problems.push(`${f.label}chain ${chain} is missing`);
      continue;
    }
    if (have.join("\n") !== rules.join("\n")) {
      problems.push(`${f.label}chain ${chain} differs: expected ${rules.length} rules, found ${have.length}`);
    }
  }
  for (const [from, to] of f.jumps) {
    const count = saved.filter((l) => l === `-A ${from} -j ${to}`).length;
    if (count !== 1) problems.push(`${f.label}${from} jumps to ${to} ${count} times, expected once`);
    const before = count === 0 ? 0 : ahead(saved, from, to);
    if (before > 0) {
      problems.push(`${f.label}${from} has ${before} rule${before === 1 ? "" : "s"} before its jump to ${to}`);
    }
  }
}

async function removeChains(netnsPath: string, f: Family): Promise<void> {
  for (const [from, to] of f.jumps) {
    while (await hasJump(netnsPath, f, from, to)) {
      await mustInNs(netnsPath, [f.iptables, "-w", "-t", f.table, "-D", from, "-j", to]);
    }
  }
  const saved = await mustInNs(netnsPath, [f.save, "-t", f.table]);
  // Flush all first: SKIFF_PRERT refers to SKIFF_DIVERT, which cannot be deleted while referenced.
  const present = Object.keys(f.chains).filter((c) => saved.includes(`:${c} `));
  for (const c of present) await mustInNs(netnsPath, [f.iptables, "-w", "-t", f.table, "-F", c]);
  for (const c of present) await mustInNs(netnsPath, [f.iptables, "-w", "-t", f.table, "-X", c]);
}

async function hasPolicyRoute(netnsPath: string): Promise<{ rule: boolean; route: boolean }> {
  const rules = await mustInNs(netnsPath, ["ip", "rule", "list", "pref", String(RULE_PRIORITY)]);
  // An empty table "does not exist" to ip: that is simply no route.
  const route = await inNs(netnsPath, ["ip", "route", "show", "table", String(ROUTE_TABLE)]);
  return {
    rule: rules.includes(`fwmark ${hex(TPROXY_MARK)}/${hex(MARK_MASK)} lookup ${ROUTE_TABLE}`),
    route: route.code === 0 && /^local default dev lo/m.test(route.stdout),
  };
}

/**
 * Installs the rules in the namespace at `netnsPath`; running it again changes nothing. Throws a
 * {@link RedirectError} when any part fails, the IPv6 drop included: a pod is never left captured for IPv4 and
 * open over IPv6 without its caller hearing of it.
 */
export async function installRedirect(netnsPath: string): Promise<void> {
  await installChains(netnsPath, IPV4);
  await installChains(netnsPath, IPV4_NAT);
  const pr = await hasPolicyRoute(netnsPath);
  if (!pr.rule) {
    await mustInNs(netnsPath, [
      "ip",
      "rule",
      "add",
      "fwmark",
      `${hex(TPROXY_MARK)}/${hex(MARK_MASK)}`,
      "pref",
      String(RULE_PRIORITY),
      "lookup",
      String(ROUTE_TABLE),
    ]);
  }
  await mustInNs(netnsPath, [
    "ip",
    "route",
    "replace",
    "local",
    "0.0.0.0/0",
    "dev",
    "lo",
    "table",
    String(ROUTE_TABLE),
  ]);
  await installChains(netnsPath, IPV6);
}

/**
 * Reports what is missing or different from the rule set, IPv4 first, then the IPv6 drop (its problems start
 * with "IPv6: "); no problems means capture is in place.
 */
export async function checkRedirect(netnsPath: string): Promise<RedirectProblems> {
  const problems: string[] = [];
  await checkChains(netnsPath, IPV4, problems);
  await checkChains(netnsPath, IPV4_NAT, problems);
  const pr = await hasPolicyRoute(netnsPath);
  if (!pr.rule) problems.push(`ip rule fwmark ${hex(TPROXY_MARK)}/${hex(MARK_MASK)} lookup ${ROUTE_TABLE} is missing`);
  if (!pr.route) problems.push(`route local 0.0.0.0/0 dev lo in table ${ROUTE_TABLE} is missing`);
  await checkChains(netnsPath, IPV6, problems);
  return { problems };
}

/** Removes the rules, IPv4 and IPv6; removing what is not there is not an error. */
export async function removeRedirect(netnsPath: string): Promise<void> {
  await removeChains(netnsPath, IPV4);
  await removeChains(netnsPath, IPV4_NAT);
  while ((await hasPolicyRoute(netnsPath)).rule) {
    await mustInNs(netnsPath, ["ip", "rule", "del", "pref", String(RULE_PRIORITY)]);
  }
  await inNs(netnsPath, ["ip", "route", "flush", "table", String(ROUTE_TABLE)]);
  await removeChains(netnsPath, IPV6);
}
