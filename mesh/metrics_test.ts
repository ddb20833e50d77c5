import assert from "node:assert/strict";
import { SpiffeId } from "./identity.ts";
import { TCP_LABELS, tcpLabels, TcpMetrics } from "./metrics.ts";
import { decodeService, decodeWorkload } from "./workload.ts";

const src = decodeWorkload({
  uid: "u1",
  name: "client-7d9-abc",
  namespace: "shop",
  addresses: ["10.0.1.2"],
  workloadName: "client",
  canonicalName: "client",
  canonicalRevision: "v1",
  clusterId: "Kubernetes",
});
const dst = decodeWorkload({ uid: "u2", name: "server-x", namespace: "shop", addresses: ["10.0.2.2"] });
const svc = decodeService({
  name: "server",
  namespace: "shop",
  hostname: "server.shop.svc.cluster.local",
  ports: [{ port: 80, targetPort: 8080 }],
});
const SRC_ID = SpiffeId.parse("spiffe://cluster.local/ns/shop/sa/client");

Deno.test("tcpLabels() fills every standard label, unknown where nothing is known", () => {
  const l = tcpLabels({ reporter: "destination", mtls: false });
  assert.deepEqual(Object.keys(l), [...TCP_LABELS]);
  for (const k of TCP_LABELS.filter((k) => !["reporter", "request_protocol", "response_flags"].includes(k))) {
    assert.equal(l[k], "unknown", k);
  }
  assert.equal(l.request_protocol, "tcp");
  assert.equal(l.response_flags, "-");
});

Deno.test("tcpLabels() takes workload, service and principal from what the connection proved", () => {
  const l = tcpLabels({
    reporter: "source",
    source: src,
    sourceIdentity: SRC_ID,
    destination: dst,
    service: svc,
    mtls: true,
    responseFlags: "DENY",
  });
  assert.equal(l.reporter, "source");
  assert.equal(l.source_workload, "client", "the owner's name, not the pod's");
  assert.equal(l.destination_workload, "server-x", "the pod's name when no owner is known");
  assert.equal(l.source_workload_namespace, "shop");
  assert.equal(l.source_canonical_revision, "v1");
  assert.equal(l.source_principal, "spiffe://cluster.local/ns/shop/sa/client");
  assert.equal(l.destination_principal, "unknown", "no identity was verified for the destination");
  assert.equal(l.destination_service, "server.shop.svc.cluster.local");
  assert.equal(l.destination_service_name, "server");
  assert.equal(l.connection_security_policy, "mutual_tls");
  assert.equal(l.response_flags, "DENY");
});

Deno.test("TcpMetrics exposes Istio's counter names in Prometheus text", async () => {
  const m = new TcpMetrics();
  const labels = tcpLabels({ reporter: "destination", source: src, destination: dst, mtls: false });
  m.opened.inc(labels);
  m.received.inc(labels, 1234);
  m.sent.inc(labels, 56);
  m.closed.inc(labels);
  const { body, contentType } = await m.expose();
  assert.match(contentType, /^text\/plain; version=0\.0\.4/);
  for (const name of ["opened", "closed"]) {
    assert.match(body, new RegExp(`^istio_tcp_connections_${name}_total\\{reporter="destination",.*\\} 1$`, "m"));
  }
  assert.match(body, /^istio_tcp_received_bytes_total\{.*source_workload="client".*\} 1234$/m);
  assert.match(body, /^istio_tcp_sent_bytes_total\{.*connection_security_policy="unknown".*\} 56$/m);
});
