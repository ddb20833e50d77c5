/**
 * Traffic that is not HTTP passes the waypoint at L4: authorized by the same policies, sent to an endpoint of
 * the destination (round robin, as HTTP requests are), bytes relayed both ways. Policies written for HTTP are
 * read as Istio reads them for TCP traffic: in a DENY rule the HTTP-only conditions are ignored (the rule denies
 * more), and an ALLOW rule with an HTTP-only condition is left out (it allows less).
 *
 * @module
 */

import type { Duplex } from "node:stream";
import { authorizeRequest } from "./authz.ts";
import { peerAttributes, policiesFor, sessionFacts, type WaypointContext } from "./exchange.ts";
import type { Session } from "./session.ts";
import { ConnectFailure, type Endpoint } from "./upstream.ts";
import { DialGuard } from "../proxy/dial_guard.ts";
import type { ResponseFlag } from "../proxy/flags.ts";
import { relay } from "../proxy/relay.ts";
import { workloadIdentity } from "../proxy/identity.ts";
import type { L7Operation, L7Policy, L7Rule } from "../../mesh/l7.ts";
import { tcpLabels } from "../../mesh/metrics.ts";

const HTTP_ONLY_OPERATION: (keyof L7Operation)[] = ["hosts", "notHosts", "methods", "notMethods", "paths", "notPaths"];
const httpOnlyCondition = (key: string) => key.startsWith("request.");

function ruleIsHttpOnly(r: L7Rule): boolean {
  return r.to.some((op) => HTTP_ONLY_OPERATION.some((k) => (op[k] as unknown[]).length > 0)) ||
    r.when.some((c) => httpOnlyCondition(c.key));
}

function withoutHttp(r: L7Rule): L7Rule {
  const to = r.to.map((op) => ({
    ...op,
    hosts: [],
    notHosts: [],
    methods: [],
    notMethods: [],
    paths: [],
    notPaths: [],
  }));
  return { ...r, to, when: r.when.filter((c) => !httpOnlyCondition(c.key)) };
}

/** Policies as they apply to a TCP connection (see the module's comment). */
export function tcpPolicies(policies: readonly L7Policy[]): L7Policy[] {
  return policies.map((p) =>
    p.action === "DENY"
      ? { ...p, rules: p.rules.map(withoutHttp) }
      : { ...p, rules: p.rules.filter((r) => !ruleIsHttpOnly(r)) }
  );
}

/**
 * What each client identity may make this waypoint dial at L4, across all its HBONE connections: the bound
 * `proxy/dial_guard.ts` gives ztunnel's inbound, for the same reason (streams reset after their dial began,
 * spread over many connections, each under the codec's per-connection limit). One per process, as in ztunnel:
 * a waypoint process is one waypoint.
 */
export const tcpDials = new DialGuard();

/** Serves a tunnel as TCP; `tunnel` still holds any bytes that were sniffed. */
export async function passTcp(tunnel: Duplex, session: Session, ctx: WaypointContext): Promise<void> {
  const started = performance.now();
  const dest = session.destination;
  const facts = sessionFacts(session);
  /** Counts the tunnel closed without a byte carried, with its flag. */
  const refused = (flag: ResponseFlag) => ctx.metrics.closed.inc(tcpLabels({ ...facts, responseFlags: flag }));
  const policies = policiesFor(session, ctx);
  if (policies.length > 0) {
    const d = authorizeRequest(tcpPolicies(policies), {
      ...peerAttributes(session),
      method: "",
      path: "",
      host: "",
      headers: [],
    });
    if (!d.allowed) {
      ctx.log.info({ policy: d.policy, src: session.peer.ip, dst: session.authority }, "connection denied");
      refused("DENY");
      tunnel.destroy();
      return;
    }
  }
  const state = ctx.state();
  let upstream: Duplex | undefined;
  let endpoint: Endpoint | undefined;
  const tried = new Set<string>();
  // A port not sniffed gets here in the very read that brought its CONNECT: let the rest of that read (a
  // RST_STREAM right behind the HEADERS) be processed before dialling. The waypoint answered 200 before it
  // sniffed, so a client that reset its CONNECT meanwhile (rapid reset) must cost no upstream connection, as
  // ztunnel's inbound dials for no gone client either.
  await new Promise((resolve) => setTimeout(resolve, 0));
  if (tunnel.destroyed) return void refused("DC");
  const peer = session.peer.identity.toString();
  const overflow = tcpDials.admit(peer, performance.now());
  if (overflow) {
    // The 200 is out already: the tunnel is reset, recorded as Envoy records an overflowing circuit breaker.
    ctx.log.info({ peer, dst: session.authority, reason: overflow }, "too many dials for this peer");
    refused("UO");
    tunnel.destroy();
    return;
  }
  try {
    for (let attempt = 0; attempt < 3 && !upstream && !tunnel.destroyed; attempt++) {
      endpoint = dest.kind === "workload"
        ? { workload: dest.workload, ip: dest.ip, port: dest.port, hbone: dest.workload.tunnelProtocol === "HBONE" }
        : ctx.balancer.pick(state, dest.service, dest.port, ctx.self, tried);
      if (!endpoint) break;
      tried.add(`${endpoint.ip}:${endpoint.port}`);
      try {
        upstream = await ctx.tunnels.open(endpoint);
      } catch (error) {
        if (!(error instanceof ConnectFailure)) throw error;
        ctx.balancer.eject(endpoint);
        ctx.log.info({ endpoint: `${endpoint.ip}:${endpoint.port}`, error: error.message }, "upstream connect failed");
      }
    }
  } finally {
    tcpDials.settled(peer, tunnel.destroyed, performance.now());
  }
  if (tunnel.destroyed) {
    upstream?.destroy();
    return void refused("DC");
  }
  if (!upstream || !endpoint) {
    refused(endpoint ? "CONNECT" : "NO_HEALTHY_UPSTREAM");
    tunnel.destroy();
    return;
  }
  facts.destination = endpoint.workload;
  facts.destinationIdentity = endpoint.hbone ? workloadIdentity(endpoint.workload) : undefined;
  const labels = tcpLabels(facts);
  ctx.metrics.opened.inc(labels);
  const result = await relay(tunnel, upstream).done;
  ctx.metrics.received.inc(labels, result.aToB);
  ctx.metrics.sent.inc(labels, result.bToA);
  ctx.metrics.closed.inc(labels);
  ctx.access.info({
    "src.addr": `${session.peer.ip}:${session.peer.port}`,
    "src.identity": session.peer.identity.toString(),
    "dst.addr": `${endpoint.ip}:${endpoint.port}`,
    "dst.service": facts.service?.hostname,
    "dst.workload": endpoint.workload.name,
    bytes_received: result.aToB,
    bytes_sent: result.bToA,
    duration: `${Math.round(performance.now() - started)}ms`,
  }, "connection complete");
}
