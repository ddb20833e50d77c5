/**
 * Turns what an adapter knows at the end of a request into the telemetry record (metrics and access log).
 *
 * @module
 */

import { type Handled, type Headers, sessionFacts, type WaypointContext } from "./exchange.ts";
import type { Session } from "./session.ts";
import type { RequestRecord } from "./telemetry.ts";
import { formatAddr } from "../proxy/addr.ts";

/** What an adapter reports at the end of a request: the record's own fields, and what the rest comes from. */
export type Completed =
  & Pick<
    RequestRecord,
    | "protocol"
    | "method"
    | "path"
    | "authority"
    | "downstreamProtocol"
    | "status"
    | "grpcStatus"
    | "flags"
    | "bytesReceived"
    | "bytesSent"
  >
  & { handled?: Handled; started: number; headers: Headers };

/** Records a request's metrics and its access-log line. */
export function recordRequest(ctx: WaypointContext, session: Session, c: Completed): void {
  const { handled: h, started, headers, ...reported } = c;
  const answer = h?.answer;
  const service = h?.service;
  const header = (name: string) => headers.find(([n]) => n === name)?.[1];
  ctx.metrics.record({
    ...reported,
    facts: h?.facts ?? sessionFacts(session),
    durationMs: performance.now() - started,
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
