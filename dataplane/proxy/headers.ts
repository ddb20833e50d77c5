/**
 * The request headers of an HBONE CONNECT besides `:method` and `:authority`, as upstream ztunnel sends them:
 * `forwarded` (RFC 7239) with the client's address, `baggage` (W3C Baggage) naming the caller for the peer's
 * telemetry, and a fresh W3C `traceparent`.
 *
 * @module
 */

import { field, type HeaderField } from "../h2/fields.ts";
import type { Service, Workload } from "../../mesh/workload.ts";
import { formatAddr, parseAuthority, type SocketAddr } from "./addr.ts";

/**
 * Upstream's baggage (`src/baggage.rs`): who is calling, for the other side's telemetry. Empty values left out.
 * Upstream writes the values as they are, trusting Kubernetes' validation of names and labels; here they come from
 * fields the control plane passes with a length limit only (labels, a WorkloadEntry's locality, settings), so each
 * value is percent-encoded as W3C Baggage allows (https://www.w3.org/TR/baggage/#value): a `,` or `;` cannot add a
 * member or a property (a spoofed `k8s.namespace.name` in the peer's metrics), and CR, LF or NUL cannot make the
 * CONNECT malformed (RFC 9113 §8.2.1) and so fail every connection of the workload.
 */
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
  return parts.filter(([, v]) => v).map(([k, v]) => `${k}=${baggageValue(v!)}`).join(",");
}

/** W3C Baggage's `baggage-octet`, less `%` (which must itself be encoded). */
const PLAIN_BAGGAGE = /^[\x21\x23\x24\x26-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*$/;

/** `v` as a baggage value: each UTF-8 byte outside {@link PLAIN_BAGGAGE} percent-encoded. */
function baggageValue(v: string): string {
  if (PLAIN_BAGGAGE.test(v)) return v;
  let out = "";
  for (const b of new TextEncoder().encode(v)) {
    const c = String.fromCharCode(b);
    out += b < 0x80 && PLAIN_BAGGAGE.test(c) ? c : `%${b.toString(16).toUpperCase().padStart(2, "0")}`;
  }
  return out;
}

/**
 * A random W3C traceparent, one per connection as upstream sends it. An all-zero trace id or parent id is invalid
 * (W3C Trace Context §3.2.2.3, §3.2.2.4), so such a draw gets a last byte of 1.
 */
export function traceparent(random = crypto.getRandomValues.bind(crypto)): string {
  const hex = (n: number) => {
    const bytes = random(new Uint8Array(n));
    if (bytes.every((b) => b === 0)) bytes[n - 1] = 1;
    return [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
  };
  return `00-${hex(16)}-${hex(8)}-00`;
}

/** An RFC 9110 §5.6.2 token: what a `forwarded` parameter value may be without quotes. */
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

/**
 * The headers of an outbound CONNECT besides `:method` and `:authority`. `forwarded` is upstream's
 * `for="IP:PORT";host=HOSTNAME` (RFC 7239 §4, §5.2, §5.3); a hostname that is not a token (never a DNS name, which
 * `decodeService` requires) is left out rather than quoted, so that it can add no parameter or element.
 */
export function hboneHeaders(source: Workload, client: SocketAddr, service: Service | undefined): HeaderField[] {
  const host = service && TOKEN.test(service.hostname) ? `;host=${service.hostname}` : "";
  const forwarded = `for="${formatAddr(client)}"${host}`;
  return [["forwarded", forwarded], ["baggage", baggage(source)], ["traceparent", traceparent()]];
}

/** The client's address from `Forwarded: for="ip:port"` (as {@link hboneHeaders} writes it): how the waypoint reads the client address ztunnel sends.. */
export function forwardedFor(headers: HeaderField[]): { ip: string; port: number } | undefined {
  const value = field(headers, "forwarded");
  const m = value && /(?:^|[;,\s])for="?([^";,]+)"?/i.exec(value);
  if (!m) return undefined;
  const parsed = parseAuthority(m[1]);
  return parsed?.ip ? { ip: parsed.ip, port: parsed.port } : undefined;
}
