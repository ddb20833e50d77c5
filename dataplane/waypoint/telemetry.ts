/**
 * The waypoint's telemetry, with Istio's standard HTTP metrics as Envoy's stats filter reports them in a
 * waypoint: `istio_requests_total` (counter), `istio_request_duration_milliseconds`, `istio_request_bytes` and
 * `istio_response_bytes` (histograms with Istio's buckets), labelled like the TCP metrics (mesh/metrics.ts) with
 * `reporter="waypoint"`, `request_protocol` `http` or `grpc`, plus `response_code` and `grpc_response_status`.
 * Connections passed through at L4 count on the TCP metrics of the same registry. One access-log line per
 * request, `request complete`, with Envoy's fields under the names of Istio's default access-log format.
 *
 * @module
 */

import client from "prom-client";
import type { Logger } from "../../mesh/log.ts";
import { type ConnectionFacts, TCP_LABELS, tcpLabels, TcpMetrics } from "../../mesh/metrics.ts";
import type { ResponseFlags } from "../proxy/flags.ts";

/** Labels of the HTTP metrics: the TCP set plus the response's codes. */
export const HTTP_LABELS = [...TCP_LABELS, "response_code", "grpc_response_status"] as const;
type HttpLabel = (typeof HTTP_LABELS)[number];

/** Istio's buckets for `istio_request_duration_milliseconds`. */
export const DURATION_BUCKETS = [
  0.5,
  1,
  5,
  10,
  25,
  50,
  100,
  250,
  500,
  1000,
  2500,
  5000,
  10000,
  30000,
  60000,
  300000,
  600000,
  1800000,
  3600000,
];
/** Istio's buckets for the byte histograms: powers of ten from 1 to 10^8. */
export const BYTES_BUCKETS = [1, 10, 100, 1000, 10000, 100000, 1000000, 10000000, 100000000];

/** What is known about a request when it completes. */
export interface RequestRecord {
  facts: ConnectionFacts;
  protocol: "http" | "grpc";
  method: string;
  /** The path as forwarded (normalized), without the query. */
  path: string;
  authority: string;
  /** HTTP/1.1 or HTTP/2, as the client spoke. */
  downstreamProtocol: string;
  status: number;
  grpcStatus?: string;
  /** Envoy response flags: `-`, `UF` (upstream connection failure), `UT` (timeout), `UH` (no healthy upstream), `NR` (no route), `DPE` (downstream protocol error), `UC`/`DC` (upstream/downstream reset), `URX` (retries exhausted). */
  flags: ResponseFlags;
  bytesReceived: number;
  bytesSent: number;
  durationMs: number;
  /** The endpoint that answered, ip:port. */
  upstreamHost?: string;
  /** `outbound|PORT||HOSTNAME`, Envoy's cluster name. */
  upstreamCluster?: string;
  route?: string;
  srcAddr: string;
  requestId?: string;
  userAgent?: string;
  attempts: number;
}

/** Label sets remembered by {@link WaypointMetrics.record}. */
export const SERIES_CACHE_MAX = 10_000;

interface Series {
  requests: client.Counter.Internal;
  duration: client.Histogram.Internal<HttpLabel>;
  requestBytes: client.Histogram.Internal<HttpLabel>;
  responseBytes: client.Histogram.Internal<HttpLabel>;
}

/** The HTTP histograms and counter, on the same registry as the TCP counters. */
export class WaypointMetrics extends TcpMetrics {
  readonly requests: client.Counter<HttpLabel>;
  readonly duration: client.Histogram<HttpLabel>;
  readonly requestBytes: client.Histogram<HttpLabel>;
  readonly responseBytes: client.Histogram<HttpLabel>;

  constructor(registry = new client.Registry()) {
    super(registry);
    const labelNames = [...HTTP_LABELS];
    this.requests = new client.Counter({
      name: "istio_requests_total",
      help: "Requests handled.",
      labelNames,
      registers: [registry],
    });
    this.duration = new client.Histogram({
      name: "istio_request_duration_milliseconds",
      help: "Request duration, first byte of the request to last byte of the response.",
      labelNames,
      buckets: DURATION_BUCKETS,
      registers: [registry],
    });
    this.requestBytes = new client.Histogram({
      name: "istio_request_bytes",
      help: "Request sizes: headers and body.",
      labelNames,
      buckets: BYTES_BUCKETS,
      registers: [registry],
    });
    this.responseBytes = new client.Histogram({
      name: "istio_response_bytes",
      help: "Response sizes: headers and body.",
      labelNames,
      buckets: BYTES_BUCKETS,
      registers: [registry],
    });
  }

  /**
   * The four series of one label set, found by a key made of the objects the labels come from, so that a request
   * like the last one costs a map lookup rather than building, validating and hashing twenty-five labels four
   * times. Emptied when it grows past {@link SERIES_CACHE_MAX} (the series themselves stay in the registry).
   */
  #series = new Map<string, Series>();

  /** Records a completed request and writes its access-log line (built only when it will be written). */
  record(r: RequestRecord, access: Logger): void {
    const f = r.facts;
    const key = `${f.source?.uid}|${f.sourceIdentity}|${f.service?.namespace}/${f.service?.hostname}|` +
      `${f.destination?.uid}|${f.destinationIdentity}|${f.mtls}|${r.protocol}|${r.status}|${r.grpcStatus}|${r.flags}`;
    let series = this.#series.get(key);
    if (!series) {
      const labels: Record<HttpLabel, string> = {
        ...tcpLabels({ ...f, responseFlags: r.flags }),
        request_protocol: r.protocol,
        response_code: String(r.status),
        grpc_response_status: r.grpcStatus ?? "",
      };
      if (this.#series.size >= SERIES_CACHE_MAX) this.#series.clear();
      series = {
        requests: this.requests.labels(labels),
        duration: this.duration.labels(labels),
        requestBytes: this.requestBytes.labels(labels),
        responseBytes: this.responseBytes.labels(labels),
      };
      this.#series.set(key, series);
    }
    series.requests.inc();
    series.duration.observe(r.durationMs);
    series.requestBytes.observe(r.bytesReceived);
    series.responseBytes.observe(r.bytesSent);
    if (access.isLevelEnabled("info")) access.info(accessLogFields(r), "request complete");
  }
}

/** The access-log fields of a request, named as Istio's default text format names them. */
export function accessLogFields(r: RequestRecord): Record<string, string | number> {
  const f = r.facts;
  const out: Record<string, string | number> = {
    method: r.method,
    path: r.path,
    protocol: r.downstreamProtocol,
    response_code: r.status,
    response_flags: r.flags,
    bytes_received: r.bytesReceived,
    bytes_sent: r.bytesSent,
    duration: Math.round(r.durationMs),
    authority: r.authority,
    "src.addr": r.srcAddr,
    attempts: r.attempts,
  };
  if (r.grpcStatus !== undefined) out.grpc_status = r.grpcStatus;
  if (f.sourceIdentity) out["src.identity"] = f.sourceIdentity.toString();
  if (f.source) {
    out["src.workload"] = f.source.name;
    out["src.namespace"] = f.source.namespace;
  }
  if (f.service) out["dst.service"] = f.service.hostname;
  if (f.destination) {
    out["dst.workload"] = f.destination.name;
    out["dst.namespace"] = f.destination.namespace;
  }
  if (f.destinationIdentity) out["dst.identity"] = f.destinationIdentity.toString();
  if (r.upstreamHost) out.upstream_host = r.upstreamHost;
  if (r.upstreamCluster) out.upstream_cluster = r.upstreamCluster;
  if (r.route) out.route_name = r.route;
  if (r.requestId) out.request_id = r.requestId;
  if (r.userAgent) out.user_agent = r.userAgent;
  return out;
}
