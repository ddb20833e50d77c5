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
 *  4. Packets the app originates (conntrack ORIGINAL direction) get 0x111: rerouted through `lo` to
 *     PREROUTING, where rule 2 or 4 takes them to ztunnel. Replies to connections others opened (probes,
 *     connections that predate capture) are the REPLY direction and go out as usual.
 *
 * @module
 */

import { HBONE_PORT } from "../mesh/workload.ts";

/** The mark on every socket ztunnel opens in a pod; the rules never capture it. */
export const INPOD_MARK = 0x539;
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

/** The jumps from the built-in chains into ours. */
export const JUMPS: readonly (readonly [string, string])[] = [["PREROUTING", "SKIFF_PRERT"], [
  "OUTPUT",
  "SKIFF_OUTPUT",
]];

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

/**
 * Runs a command inside the network namespace at `netnsPath` (through nsenter), or in this process's own
 * namespace when `netnsPath` is undefined; never throws for a failing command.
 */
export async function inNs(
  netnsPath: string | undefined,
  cmd: string[],
  stdin?: string,
): Promise<{ code: number; stdout: string; stderr: string }> {
  const [program, ...args] = netnsPath === undefined ? cmd : ["nsenter", `--net=${netnsPath}`, "--", ...cmd];
  const child = new Deno.Command(program, {
    args,
    stdin: stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (stdin !== undefined) {
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode(stdin));
    await w.close();
  }
  const out = await child.output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
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

/** The `iptables-restore --noflush` input that (re)writes our chains; declaring a chain flushes it. */
export function restoreInput(): string {
  const names = Object.keys(CHAINS);
  return ["*mangle", ...names.map((c) => `:${c} - [0:0]`), ...names.flatMap((c) => CHAINS[c]), "COMMIT", ""].join("\n");
}

async function hasJump(netnsPath: string, from: string, to: string): Promise<boolean> {
  return (await inNs(netnsPath, ["iptables", "-w", "-t", "mangle", "-C", from, "-j", to])).code === 0;
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

/** Installs the rules in the namespace at `netnsPath`; running it again changes nothing. */
export async function installRedirect(netnsPath: string): Promise<void> {
  await mustInNs(netnsPath, ["iptables-restore", "-w", "--noflush"], restoreInput());
  for (const [from, to] of JUMPS) {
    if (!await hasJump(netnsPath, from, to)) {
      await mustInNs(netnsPath, ["iptables", "-w", "-t", "mangle", "-A", from, "-j", to]);
    }
  }
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
}

/** Reports what is missing or different from the rule set; no problems means capture is in place. */
export async function checkRedirect(netnsPath: string): Promise<RedirectProblems> {
  const problems: string[] = [];
  const saved = (await mustInNs(netnsPath, ["iptables-save", "-t", "mangle"])).split("\n");
  for (const [chain, rules] of Object.entries(CHAINS)) {
    const have = saved.filter((l) => l.startsWith(`-A ${chain} `));
    if (!saved.includes(`:${chain} - [0:0]`) && have.length === 0) {
      problems.push(`chain ${chain} is missing`);
      continue;
    }
    if (have.join("\n") !== rules.join("\n")) {
      problems.push(`chain ${chain} differs: expected ${rules.length} rules, found ${have.length}`);
    }
  }
  for (const [from, to] of JUMPS) {
    const count = saved.filter((l) => l === `-A ${from} -j ${to}`).length;
    if (count !== 1) problems.push(`${from} jumps to ${to} ${count} times, expected once`);
  }
  const pr = await hasPolicyRoute(netnsPath);
  if (!pr.rule) problems.push(`ip rule fwmark ${hex(TPROXY_MARK)}/${hex(MARK_MASK)} lookup ${ROUTE_TABLE} is missing`);
  if (!pr.route) problems.push(`route local 0.0.0.0/0 dev lo in table ${ROUTE_TABLE} is missing`);
  return { problems };
}

/** Removes the rules; removing what is not there is not an error. */
export async function removeRedirect(netnsPath: string): Promise<void> {
  for (const [from, to] of JUMPS) {
    while (await hasJump(netnsPath, from, to)) {
      await mustInNs(netnsPath, ["iptables", "-w", "-t", "mangle", "-D", from, "-j", to]);
    }
  }
  const saved = await mustInNs(netnsPath, ["iptables-save", "-t", "mangle"]);
  // Flush all first: SKIFF_PRERT refers to SKIFF_DIVERT, which cannot be deleted while referenced.
  const present = Object.keys(CHAINS).filter((c) => saved.includes(`:${c} `));
  for (const c of present) await mustInNs(netnsPath, ["iptables", "-w", "-t", "mangle", "-F", c]);
  for (const c of present) await mustInNs(netnsPath, ["iptables", "-w", "-t", "mangle", "-X", c]);
  while ((await hasPolicyRoute(netnsPath)).rule) {
    await mustInNs(netnsPath, ["ip", "rule", "del", "pref", String(RULE_PRIORITY)]);
  }
  await inNs(netnsPath, ["ip", "route", "flush", "table", String(ROUTE_TABLE)]);
}
