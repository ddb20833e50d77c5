/**
 * The request headers of an HBONE CONNECT besides `:method` and `:authority`, as upstream ztunnel sends them:
 * `forwarded` (RFC 7239) with the client's address, `baggage` (W3C Baggage) naming the caller for the peer's
 * telemetry, and a fresh W3C `traceparent`.
 *
 * @module
 */

import type { HeaderField } from "../h2/fields.ts";
import type { Service, Workload } from "../../mesh/workload.ts";
import { formatAddr, type SocketAddr } from "./addr.ts";

/** Upstream's baggage (`src/baggage.rs`): who is calling, for the other side's telemetry. Empty values left out. */
export function baggage(w: Workload): string {
  const type = w.workloadType.toLowerCase();
  const parts: [string, string | undefined][] = [
    ["k8s.cluster.name", w.clusterId],
    ["k8s.namespace.name", w.namespace],
    [`k8s.${type}.name`, w.workloadName || w.name],
    ["service.name", w.canonicalName],
    ["service.version", w.canonicalRevision],
    ["cloud.region", w.locality?.region],
    ["cloud.availability_zone", w.locality?.zone],
  ];
  return parts.filter(([, v]) => v).map(([k, v]) => `${k}=${v}`).join(",");
}

/** A random W3C traceparent, one per connection as upstream sends it. */
export function traceparent(random = crypto.getRandomValues.bind(crypto)): string {
  const hex = (n: number) => [...random(new Uint8Array(n))].map((b) => b.toString(16).padStart(2, "0")).join("");
  return `00-${hex(16)}-${hex(8)}-00`;
}

/** The headers of an outbound CONNECT besides `:method` and `:authority`. */
export function hboneHeaders(source: Workload, client: SocketAddr, service: Service | undefined): HeaderField[] {
  const forwarded = `for="${formatAddr(client)}"${service ? `;host=${service.hostname}` : ""}`;
  return [["forwarded", forwarded], ["baggage", baggage(source)], ["traceparent", traceparent()]];
}
