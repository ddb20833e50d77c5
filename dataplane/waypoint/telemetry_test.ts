import assert from "node:assert/strict";
import pino from "pino";
import { accessLogFields, HTTP_LABELS, type RequestRecord, WaypointMetrics } from "./telemetry.ts";
import { SpiffeId } from "../../mesh/identity.ts";
import { decodeService, decodeWorkload } from "../../mesh/workload.ts";

/** Istio's buckets for istio_request_duration_milliseconds (Envoy stats filter defaults), in ms. */
const ISTIO_DURATION_BUCKETS = [
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
/** Istio's buckets for istio_request_bytes and istio_response_bytes: 1 to 10^8. */
const ISTIO_BYTES_BUCKETS = [1, 10, 100, 1000, 10000, 100000, 1000000, 10000000, 100000000];

const client = decodeWorkload({
  uid: "client",
  name: "client-7d9f",
  namespace: "shop",
  addresses: ["10.0.0.100"],
  serviceAccount: "client",
  canonicalName: "client",
  canonicalRevision: "v1",
  workloadName: "client",
});
const web = decodeWorkload({
  uid: "web-a",
  name: "web-a",
  namespace: "shop",
  addresses: ["10.0.0.1"],
  serviceAccount: "web",
  canonicalName: "web",
  canonicalRevision: "v2",
  workloadName: "web",
});
const webService = decodeService({
  name: "web",
  namespace: "shop",
  hostname: "web.shop.svc.cluster.local",
  addresses: [{ address: "10.96.0.1" }],
  ports: [{ port: 80, targetPort: 8080 }],
});

function record(r: Partial<RequestRecord> = {}): RequestRecord {
  return {
    facts: {
      reporter: "waypoint",
      source: client,
      sourceIdentity: SpiffeId.of("cluster.local", "shop", "client"),
      destination: web,
      destinationIdentity: SpiffeId.of("cluster.local", "shop", "web"),
      service: webService,
      mtls: true,
    },
    protocol: "http",
    method: "GET",
    path: "/items",
    authority: "web.shop.svc.cluster.local",
    downstreamProtocol: "HTTP/1.1",
    status: 200,
    flags: "-",
    bytesReceived: 150,
    bytesSent: 2_500,
    durationMs: 42.4,
    upstreamHost: "10.0.0.1:8080",
    upstreamCluster: "outbound|80||web.shop.svc.cluster.local",
    route: "shop/web-route",
    srcAddr: "10.0.0.100:40000",
    requestId: "abc",
    userAgent: "curl/8.5.0",
    attempts: 1,
    ...r,
  };
}

/** A logger that keeps its lines. */
function capture(): { log: pino.Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  return { log: pino({ level: "info" }, { write: (s: string) => lines.push(JSON.parse(s)) }), lines };
}

const silent = pino({ level: "silent" });

Deno.test("WaypointMetrics.record() counts istio_requests_total with Istio's labels and reporter waypoint", async () => {
  const m = new WaypointMetrics();
  m.record(record(), silent);
  m.record(record(), silent);
  m.record(record({ status: 503, flags: "URX,UF" }), silent);
  const { values } = await m.requests.get();
  assert.equal(values.length, 2);
  const ok = values.find((v) => v.labels.response_code === "200")!;
  assert.equal(ok.value, 2);
  assert.deepEqual(Object.keys(ok.labels).sort(), [...HTTP_LABELS].sort());
  assert.deepEqual(
    {
      reporter: ok.labels.reporter,
      request_protocol: ok.labels.request_protocol,
      response_flags: ok.labels.response_flags,
      grpc_response_status: ok.labels.grpc_response_status,
      source_workload: ok.labels.source_workload,
      source_principal: ok.labels.source_principal,
      source_canonical_revision: ok.labels.source_canonical_revision,
      destination_service: ok.labels.destination_service,
      destination_service_name: ok.labels.destination_service_name,
      destination_workload: ok.labels.destination_workload,
      destination_principal: ok.labels.destination_principal,
      destination_version: ok.labels.destination_version,
      connection_security_policy: ok.labels.connection_security_policy,
    },
    {
      reporter: "waypoint",
      request_protocol: "http",
      response_flags: "-",
      grpc_response_status: "",
      source_workload: "client",
      source_principal: "spiffe://cluster.local/ns/shop/sa/client",
      source_canonical_revision: "v1",
      destination_service: "web.shop.svc.cluster.local",
      destination_service_name: "web",
      destination_workload: "web",
      destination_principal: "spiffe://cluster.local/ns/shop/sa/web",
      destination_version: "v2",
      connection_security_policy: "mutual_tls",
    },
  );
  const failed = values.find((v) => v.labels.response_code === "503")!;
  assert.equal(failed.value, 1);
  assert.equal(failed.labels.response_flags, "URX,UF");
});

Deno.test("WaypointMetrics.record() labels gRPC requests with their protocol and status", async () => {
  const m = new WaypointMetrics();
  m.record(record({ protocol: "grpc", grpcStatus: "14", downstreamProtocol: "HTTP/2" }), silent);
  const [v] = (await m.requests.get()).values;
  assert.equal(v.labels.request_protocol, "grpc");
  assert.equal(v.labels.grpc_response_status, "14");
  assert.equal(v.labels.response_code, "200");
});

Deno.test("WaypointMetrics has Istio's histograms and buckets, and observes into them", async (t) => {
  const m = new WaypointMetrics();
  m.record(record({ durationMs: 42, bytesReceived: 150, bytesSent: 2_500 }), silent);
  const cases = [
    { name: "istio_request_duration_milliseconds", metric: m.duration, buckets: ISTIO_DURATION_BUCKETS, observed: 42 },
    { name: "istio_request_bytes", metric: m.requestBytes, buckets: ISTIO_BYTES_BUCKETS, observed: 150 },
    { name: "istio_response_bytes", metric: m.responseBytes, buckets: ISTIO_BYTES_BUCKETS, observed: 2_500 },
  ];
  for (const c of cases) {
    await t.step(c.name, async () => {
      const got = await c.metric.get();
      assert.equal(got.name, c.name);
      assert.equal(got.type, "histogram");
      // prom-client adds `le` to the bucket series' labels.
      const le = (v: { labels: object }) => (v.labels as { le?: number | string }).le;
      const buckets = got.values.filter((v) => v.metricName === `${c.name}_bucket`);
      assert.deepEqual(buckets.map(le), [...c.buckets, "+Inf"]);
      for (const b of buckets) {
        const want = le(b) === "+Inf" || Number(le(b)) >= c.observed ? 1 : 0;
        assert.equal(b.value, want, `bucket le=${le(b)}`);
        assert.equal(b.labels.reporter, "waypoint");
        assert.equal(b.labels.response_code, "200");
      }
      assert.equal(got.values.find((v) => v.metricName === `${c.name}_sum`)?.value, c.observed);
      assert.equal(got.values.find((v) => v.metricName === `${c.name}_count`)?.value, 1);
    });
  }
});

Deno.test("WaypointMetrics exposes the HTTP metrics beside the TCP ones on one registry", async () => {
  const m = new WaypointMetrics();
  m.record(record(), silent);
  const { body } = await m.expose();
  for (
    const name of [
      "istio_requests_total",
      "istio_request_duration_milliseconds_bucket",
      "istio_request_bytes_bucket",
      "istio_response_bytes_bucket",
      "istio_tcp_connections_opened_total",
    ]
  ) {
    assert.match(body, new RegExp(`^# TYPE ${name.replace(/_bucket$/, "")} `, "m"), name);
  }
  assert.match(body, /^istio_requests_total\{reporter="waypoint",.*response_code="200".*\} 1$/m);
});

Deno.test("WaypointMetrics.record() writes one request complete access-log line", () => {
  const m = new WaypointMetrics();
  const { log, lines } = capture();
  m.record(record(), log);
  assert.equal(lines.length, 1);
  assert.equal(lines[0].msg, "request complete");
  assert.equal(lines[0].response_code, 200);
  assert.equal(lines[0]["dst.service"], "web.shop.svc.cluster.local");
});

Deno.test("accessLogFields() names the fields as Istio's access log does", () => {
  assert.deepEqual(accessLogFields(record({ grpcStatus: "0" })), {
    method: "GET",
    path: "/items",
    protocol: "HTTP/1.1",
    response_code: 200,
    response_flags: "-",
    bytes_received: 150,
    bytes_sent: 2_500,
    duration: 42,
    authority: "web.shop.svc.cluster.local",
    "src.addr": "10.0.0.100:40000",
    attempts: 1,
    grpc_status: "0",
    "src.identity": "spiffe://cluster.local/ns/shop/sa/client",
    "src.workload": "client-7d9f",
    "src.namespace": "shop",
    "dst.service": "web.shop.svc.cluster.local",
    "dst.workload": "web-a",
    "dst.namespace": "shop",
    "dst.identity": "spiffe://cluster.local/ns/shop/sa/web",
    upstream_host: "10.0.0.1:8080",
    upstream_cluster: "outbound|80||web.shop.svc.cluster.local",
    route_name: "shop/web-route",
    request_id: "abc",
    user_agent: "curl/8.5.0",
  });
});

Deno.test("accessLogFields() leaves out what is not known", () => {
  const fields = accessLogFields(record({
    facts: { reporter: "waypoint", mtls: true },
    upstreamHost: undefined,
    upstreamCluster: undefined,
    route: undefined,
    requestId: undefined,
    userAgent: undefined,
    status: 403,
    flags: "RBAC",
    durationMs: 0.6,
    attempts: 0,
  }));
  assert.deepEqual(fields, {
    method: "GET",
    path: "/items",
    protocol: "HTTP/1.1",
    response_code: 403,
    response_flags: "RBAC",
    bytes_received: 150,
    bytes_sent: 2_500,
    duration: 1,
    authority: "web.shop.svc.cluster.local",
    "src.addr": "10.0.0.100:40000",
    attempts: 0,
  });
});

Deno.test("WaypointMetrics.record() keys a label set once, then counts in place exactly as prom-client does", async (t) => {
  // Values at, around and past the buckets' bounds, and fractions whose sum depends on the order of the additions.
  const durations = [0.1, 0.5, 0.50001, 1, 4.2, 42, 0.3, 99_999_999, 1e-9, 3600000, 3600001, 7.7];
  const sizes = [0, 1, 2, 10, 11, 100_000_000, 100_000_001, 5, 0, 999, 1000, 1001];
  const records = durations.map((d, i) =>
    record({ durationMs: d, bytesReceived: sizes[i], bytesSent: sizes.at(-1 - i) })
  );
  /** Counts the public calls that validate and key the labels. */
  const spy = (m: WaypointMetrics) => {
    const calls = { inc: 0, observe: 0 };
    const inc = m.requests.inc.bind(m.requests);
    m.requests.inc = ((...a: Parameters<typeof inc>) => (calls.inc++, inc(...a))) as typeof inc;
    for (const h of [m.duration, m.requestBytes, m.responseBytes]) {
      const observe = h.observe.bind(h);
      h.observe = ((...a: Parameters<typeof observe>) => (calls.observe++, observe(...a))) as typeof observe;
    }
    return calls;
  };
  const fast = new WaypointMetrics();
  const calls = spy(fast);
  for (const r of records) fast.record(r, silent);
  // What prom-client makes of the same observations through its public calls, with the labels record() gave them.
  const reference = new WaypointMetrics();
  const { labels } = (await fast.requests.get()).values[0];
  for (const r of records) {
    reference.requests.inc(labels);
    reference.duration.observe(labels, r.durationMs);
    reference.requestBytes.observe(labels, r.bytesReceived);
    reference.responseBytes.observe(labels, r.bytesSent);
  }

  await t.step("one public call per metric for the label set, not one per request", () => {
    assert.deepEqual(calls, { inc: 1, observe: 3 });
  });
  await t.step("the exposition is the one prom-client writes itself", async () => {
    assert.equal(await fast.registry.metrics(), await reference.registry.metrics());
  });
  await t.step("after reset() the series starts again from zero", async () => {
    fast.duration.reset();
    fast.record(record({ durationMs: 3 }), silent);
    const got = (await fast.duration.get()).values;
    assert.equal(got.find((v) => v.metricName === "istio_request_duration_milliseconds_count")?.value, 1);
    assert.equal(got.find((v) => v.metricName === "istio_request_duration_milliseconds_sum")?.value, 3);
    assert.equal((await fast.requests.get()).values[0].value, records.length + 1);
  });
});
