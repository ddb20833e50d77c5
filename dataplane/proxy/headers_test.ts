import assert from "node:assert/strict";
import { requestProblem } from "../h2/fields.ts";
import { decodeService, decodeWorkload, type Service, type Workload } from "../../mesh/workload.ts";
import { baggage, forwardedFor, hboneHeaders, traceparent } from "./headers.ts";

/** reviews-v1, a pod of the Deployment reviews-v1 in shop, with `extra` set on the decoded workload as is. */
function workload(extra: Partial<Workload> = {}): Workload {
  return {
    ...decodeWorkload({
      uid: "Kubernetes//Pod/shop/reviews-v1-abc",
      name: "reviews-v1-abc",
      namespace: "shop",
      addresses: ["10.0.0.1"],
      workloadType: "DEPLOYMENT",
      workloadName: "reviews-v1",
      canonicalName: "reviews",
      canonicalRevision: "v1",
      clusterId: "Kubernetes",
      locality: { region: "eu-west1", zone: "eu-west1-b" },
    }),
    ...extra,
  };
}

function service(extra: Partial<Service> = {}): Service {
  return {
    ...decodeService({
      name: "reviews",
      namespace: "shop",
      hostname: "reviews.shop.svc.cluster.local",
      addresses: [{ address: "10.96.0.1" }],
      ports: [{ port: 80, targetPort: 9080 }],
    }),
    ...extra,
  };
}

/**
 * A W3C Baggage header (https://www.w3.org/TR/baggage/#header-content) parsed strictly: members split on `,`, each
 * `key=value` with a token key and a value of baggage-octets only, decoded. Throws on anything else.
 */
function parseBaggage(header: string): [string, string][] {
  return header.split(",").map((member) => {
    const m = /^([!#$%&'*+\-.^_`|~0-9A-Za-z]+)=([\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*)$/.exec(member);
    if (!m) throw new Error(`not a baggage member: ${JSON.stringify(member)}`);
    return [m[1], decodeURIComponent(m[2])];
  });
}

Deno.test("baggage() names the caller as upstream's baggage.rs does", async (t) => {
  await t.step("every field", () => {
    assert.equal(
      baggage(workload()),
      "k8s.cluster.name=Kubernetes,k8s.namespace.name=shop,k8s.deployment.name=reviews-v1,service.name=reviews," +
        "service.version=v1,cloud.region=eu-west1,cloud.availability_zone=eu-west1-b",
    );
  });
  await t.step("empty values are left out; a workload without a workload name is named by its own name", () => {
    const w = workload({ workloadType: "POD", workloadName: "", canonicalRevision: "", clusterId: "" });
    delete w.locality;
    assert.equal(baggage(w), "k8s.namespace.name=shop,k8s.pod.name=reviews-v1-abc,service.name=reviews");
  });
});

Deno.test("baggage() encodes hostile values so that they stay one member's value", async (t) => {
  // Fields the control plane passes through with a length limit only (labels, WorkloadEntry locality, settings).
  const hostile: [name: string, extra: Partial<Workload>][] = [
    ["a comma adding a member", { canonicalName: "x,k8s.namespace.name=kube-system" }],
    ["a semicolon adding a property", { canonicalRevision: "v1;owner=admin" }],
    ["an equals sign", { workloadName: "a=b" }],
    ["CR LF adding a header", { clusterId: "c\r\nx-injected: 1" }],
    ["a lone LF and NUL", { canonicalName: "a\nb\0c" }],
    ["double quotes and a backslash", { canonicalName: '"quoted"\\' }],
    ["spaces and a tab", { canonicalRevision: " v 1\t" }],
    ["a percent sign", { canonicalName: "100%25" }],
    ["non-ASCII", { workloadName: "révision-✓" }],
    ["a locality with separators", { locality: { region: "r1,cloud.region=evil", zone: "z;1", subzone: "" } }],
  ];
  for (const [name, extra] of hostile) {
    await t.step(name, () => {
      const w = workload(extra);
      const header = baggage(w);
      const members = parseBaggage(header);
      assert.deepEqual(members.map(([k]) => k), [
        "k8s.cluster.name",
        "k8s.namespace.name",
        "k8s.deployment.name",
        "service.name",
        "service.version",
        "cloud.region",
        "cloud.availability_zone",
      ]);
      assert.deepEqual(Object.fromEntries(members), {
        "k8s.cluster.name": w.clusterId,
        "k8s.namespace.name": w.namespace,
        "k8s.deployment.name": w.workloadName,
        "service.name": w.canonicalName,
        "service.version": w.canonicalRevision,
        "cloud.region": w.locality?.region,
        "cloud.availability_zone": w.locality?.zone,
      });
      // The header can be sent: RFC 9113 §8.2.1 forbids CR, LF and NUL in a field value.
      assert.equal(requestProblem([[":method", "CONNECT"], [":authority", "10.0.0.2:80"], ["baggage", header]]), null);
    });
  }
});

/** A `crypto.getRandomValues` stand-in that writes `byte(i)` at each index. */
function filling(byte: (i: number) => number) {
  return <T extends ArrayBufferView>(b: T): T => {
    const bytes = new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
    bytes.forEach((_, i) => bytes[i] = byte(i));
    return b;
  };
}

Deno.test("traceparent() is a version 00 W3C traceparent with non-zero ids", async (t) => {
  await t.step("random bytes", () => {
    let n = 0;
    assert.match(traceparent(filling(() => (n++ * 37) & 0xff)), /^00-[0-9a-f]{32}-[0-9a-f]{16}-00$/);
  });
  await t.step("an all-zero draw is not sent (W3C Trace Context §3.2.2.3: an all-zero id is invalid)", () => {
    const [, traceId, parentId] = traceparent(filling(() => 0)).split("-");
    assert.notEqual(traceId, "0".repeat(32));
    assert.notEqual(parentId, "0".repeat(16));
  });
  await t.step("one per call", () => {
    assert.notEqual(traceparent(), traceparent());
  });
});

Deno.test("hboneHeaders() sends forwarded, baggage and traceparent", async (t) => {
  const cases: [name: string, ip: string, svc: Service | undefined, forwarded: string][] = [
    ["IPv4, to a service", "10.0.0.1", service(), 'for="10.0.0.1:40000";host=reviews.shop.svc.cluster.local'],
    ["IPv6, to a service", "fd00::1", service(), 'for="[fd00::1]:40000";host=reviews.shop.svc.cluster.local'],
    ["to a workload: no host", "10.0.0.1", undefined, 'for="10.0.0.1:40000"'],
  ];
  for (const [name, ip, svc, forwarded] of cases) {
    await t.step(name, () => {
      const headers = hboneHeaders(workload(), { ip, port: 40000 }, svc);
      assert.deepEqual(headers.map(([n]) => n), ["forwarded", "baggage", "traceparent"]);
      assert.equal(headers[0][1], forwarded);
      assert.equal(headers[1][1], baggage(workload()));
      assert.deepEqual(forwardedFor(headers), { ip, port: 40000 });
    });
  }
});

Deno.test("hboneHeaders() never lets a service hostname add to forwarded", async (t) => {
  // decodeService checks hostnames as DNS names; a Service built another way must not be able to do more.
  const hostile: [name: string, hostname: string][] = [
    ["a second for=", 'x;for="6.6.6.6:1"'],
    ["a second element", "x,for=6.6.6.6"],
    ["a quote", 'x"y'],
    ["CR LF", "x\r\nx-injected: 1"],
    ["a space", "x y"],
    ["empty", ""],
  ];
  for (const [name, hostname] of hostile) {
    await t.step(name, () => {
      const headers = hboneHeaders(workload(), { ip: "10.0.0.1", port: 40000 }, service({ hostname }));
      const forwarded = headers.find(([n]) => n === "forwarded")![1];
      assert.equal(forwarded, 'for="10.0.0.1:40000"', "the host parameter is left out");
      assert.deepEqual(forwardedFor(headers), { ip: "10.0.0.1", port: 40000 });
      assert.equal(requestProblem([[":method", "CONNECT"], [":authority", "10.0.0.2:80"], ...headers]), null);
    });
  }
});
