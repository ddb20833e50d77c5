/**
 * Turns what an adapter knows at the end of a request into the telemetry record (metrics and access log).
 *
 * @module
 */

import { type Handled, type Headers, sessionFacts, type WaypointContext } from "./exchange.ts";
import type { Session } from "./session.ts";
import { formatAddr } from "../ztunnel/pod.ts";

/** What an adapter reports at the end of a request. */
export interface Completed {
  handled?: Handled;
  protocol: "http" | "grpc";
  method: string;
  path: string;
  authority: string;
  downstreamProtocol: string;
  status: number;
  grpcStatus?: string;
  flags: string;
  bytesReceived: number;
  bytesSent: number;
  started: number;
  headers: Headers;
}

/** Records a request's metrics and its access-log line. */
export function recordRequest(ctx: WaypointContext, session: Session, c: Completed): void {
  const h = c.handled;
  const facts = h?.facts ?? sessionFacts(session);
  const answer = h?.answer;
  const service = h?.service;
  const header = (name: string) => c.headers.find(([n]) => n === name)?.[1];
  ctx.metrics.record({
    facts,
    protocol: c.protocol,
    method: c.method,
    path: c.path,
    authority: c.authority,
    downstreamProtocol: c.downstreamProtocol,
    status: c.status,
    grpcStatus: c.grpcStatus,
    flags: c.flags,
    bytesReceived: c.bytesReceived,
    bytesSent: c.bytesSent,
    durationMs: performance.now() - c.started,
    upstreamHost: answer?.kind === "upstream" ? `${answer.endpoint.ip}:${answer.endpoint.port}` : undefined,
    upstreamCluster: service && answer?.kind === "upstream"
      ? `outbound|${h?.servicePort}||${service.hostname}`
      : undefined,
    route: h?.route,
    srcAddr: formatAddr(session.peer),
    requestId: header("x-request-id"),
    userAgent: header("user-agent"),
    attempts: h?.attempts ?? 0,
  }, ctx.access);
}
