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

/**
 * Where prom-client (15.x) keeps a series: `hashMap[key]` of its metric, `{ value }` for a counter and
 * `{ sum, count, bucketValues }` for a histogram. Its `inc()` and `observe()` validate the 25 labels and build
 * their key again at every call, four times a request: with the strings it builds, 7% of the waypoint's CPU time
 * per request, 2% once this was done (docs/performance.md). So once prom-client has made a series, it is updated in
 * place here as `inc()` and `observe()` would (`value += 1`; `sum`, `count`, and the first bucket whose bound holds
 * the value). Before each update the store is checked to still be the one the metric holds under that key (`reset()`
 * replaces them); when it is not, or prom-client keeps its series some other way, the public call runs instead.
 */
interface Store {
  value: number;
  sum: number;
  count: number;
  bucketValues: Record<number, number>;
}
type StoreMap = Record<string, Partial<Store> | undefined>;

/** prom-client's key of a series: `name:value,` for each label name in sorted order (lib/util.js `hashObject`). */
const SORTED_LABELS = [...HTTP_LABELS].sort();

interface Series {
  labels: Record<HttpLabel, string>;
  key: string;
  requests?: Partial<Store>;
  duration?: Partial<Store>;
  requestBytes?: Partial<Store>;
  responseBytes?: Partial<Store>;
}

const storesOf = (metric: object) => (metric as { hashMap?: StoreMap }).hashMap;

/** Counts one more in `metric`'s series; returns its store when it can be updated in place next time. */
function inc(
  metric: client.Counter<HttpLabel>,
  s: Series,
  store: Partial<Store> | undefined,
): Partial<Store> | undefined {
  if (store !== undefined && storesOf(metric)?.[s.key] === store) {
    store.value! += 1;
    return store;
  }
  metric.inc(s.labels);
  const made = storesOf(metric)?.[s.key];
  return typeof made?.value === "number" ? made : undefined;
}

/** Observes `value` in `metric`'s series; returns its store when it can be updated in place next time. */
function observe(
  metric: client.Histogram<HttpLabel>,
  buckets: readonly number[],
  s: Series,
  store: Partial<Store> | undefined,
  value: number,
): Partial<Store> | undefined {
  if (store !== undefined && storesOf(metric)?.[s.key] === store && Number.isFinite(value)) {
    store.sum! += value;
    store.count! += 1;
    for (const bound of buckets) {
      if (value <= bound) {
        store.bucketValues![bound] += 1;
        break;
      }
    }
    return store;
  }
  metric.observe(s.labels, value);
  const made = storesOf(metric)?.[s.key];
  const usable = typeof made?.sum === "number" && typeof made.count === "number" &&
    buckets.every((b) => typeof made.bucketValues?.[b] === "number");
  return usable ? made : undefined;
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
      series = { labels, key: SORTED_LABELS.map((name) => `${name}:${labels[name]},`).join("") };
      this.#series.set(key, series);
    }
    const s = series;
    s.requests = inc(this.requests, s, s.requests);
    s.duration = observe(this.duration, DURATION_BUCKETS, s, s.duration, r.durationMs);
    s.requestBytes = observe(this.requestBytes, BYTES_BUCKETS, s, s.requestBytes, r.bytesReceived);
    s.responseBytes = observe(this.responseBytes, BYTES_BUCKETS, s, s.responseBytes, r.bytesSent);
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
