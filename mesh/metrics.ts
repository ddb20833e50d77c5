/**
 * Istio's TCP metrics, as ztunnel reports them (reference fact 15), on prom-client: connections opened and
 * closed, bytes received (request direction) and sent (response direction), with Istio's standard labels so
 * that an ambient user's dashboards carry over. Missing values are `"unknown"`, as upstream writes them;
 * `source_principal` comes only from an mTLS peer identity, never from a header.
 *
 * {@link tcpLabels} is pure; {@link TcpMetrics} binds the four counters to one registry, which the metrics
 * listener (15020 `/metrics`) serves.
 *
 * @module
 */

import client from "prom-client";
import type { SpiffeId } from "./identity.ts";
import type { Service, Workload } from "./workload.ts";

/** Istio's standard labels on TCP metrics, in a fixed order. */
export const TCP_LABELS = [
  "reporter",
  "source_workload",
  "source_canonical_service",
  "source_canonical_revision",
  "source_workload_namespace",
  "source_principal",
  "source_app",
  "source_version",
  "source_cluster",
  "destination_service",
  "destination_service_namespace",
  "destination_service_name",
  "destination_workload",
  "destination_canonical_service",
  "destination_canonical_revision",
  "destination_workload_namespace",
  "destination_principal",
  "destination_app",
  "destination_version",
  "destination_cluster",
  "request_protocol",
  "response_flags",
  "connection_security_policy",
] as const;

/** One label set. */
export type TcpLabelSet = Record<(typeof TCP_LABELS)[number], string>;

/** What is known about a connection when its metrics are recorded. */
export interface ConnectionFacts {
  reporter: "source" | "destination" | "waypoint";
  source?: Workload;
  /** The mTLS peer identity of the source; absent for plaintext. */
  sourceIdentity?: SpiffeId;
  destination?: Workload;
  destinationIdentity?: SpiffeId;
  service?: Service;
  /** True when the connection was carried over mTLS (HBONE). */
  mtls: boolean;
  /** Istio response flags, e.g. `DENY`, `CONNECT`; `-` when none. */
  responseFlags?: string;
}

const or = (v: string | undefined) => (v === undefined || v === "" ? "unknown" : v);

/** The standard labels for a connection. */
export function tcpLabels(f: ConnectionFacts): TcpLabelSet {
  const s = f.source;
  const d = f.destination;
  return {
    reporter: f.reporter,
    source_workload: or(s?.workloadName || s?.name),
    source_canonical_service: or(s?.canonicalName),
    source_canonical_revision: or(s?.canonicalRevision),
    source_workload_namespace: or(s?.namespace),
    source_principal: f.sourceIdentity ? f.sourceIdentity.toString() : "unknown",
    source_app: or(s?.canonicalName),
    source_version: or(s?.canonicalRevision),
    source_cluster: or(s?.clusterId),
    destination_service: or(f.service?.hostname),
    destination_service_namespace: or(f.service?.namespace),
    destination_service_name: or(f.service?.name),
    destination_workload: or(d?.workloadName || d?.name),
    destination_canonical_service: or(d?.canonicalName),
    destination_canonical_revision: or(d?.canonicalRevision),
    destination_workload_namespace: or(d?.namespace),
    destination_principal: f.destinationIdentity ? f.destinationIdentity.toString() : "unknown",
    destination_app: or(d?.canonicalName),
    destination_version: or(d?.canonicalRevision),
    destination_cluster: or(d?.clusterId),
    request_protocol: "tcp",
    response_flags: f.responseFlags || "-",
    connection_security_policy: f.mtls ? "mutual_tls" : "unknown",
  };
}

/** The four TCP counters on one registry. */
export class TcpMetrics {
  readonly registry: client.Registry;
  readonly opened: client.Counter<(typeof TCP_LABELS)[number]>;
  readonly closed: client.Counter<(typeof TCP_LABELS)[number]>;
  readonly received: client.Counter<(typeof TCP_LABELS)[number]>;
  readonly sent: client.Counter<(typeof TCP_LABELS)[number]>;

  constructor(registry = new client.Registry()) {
    this.registry = registry;
    const counter = (name: string, help: string) =>
      new client.Counter({ name, help, labelNames: [...TCP_LABELS], registers: [registry] });
    this.opened = counter("istio_tcp_connections_opened_total", "Connections opened.");
    this.closed = counter("istio_tcp_connections_closed_total", "Connections closed.");
    this.received = counter("istio_tcp_received_bytes_total", "Bytes received in the request direction.");
    this.sent = counter("istio_tcp_sent_bytes_total", "Bytes sent in the response direction.");
  }

  /** The Prometheus text exposition and its content type. */
  async expose(): Promise<{ body: string; contentType: string }> {
    return { body: await this.registry.metrics(), contentType: this.registry.contentType };
  }
}
