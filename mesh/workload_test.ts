import assert from "node:assert/strict";
import {
  decodeGatewayAddress,
  decodeNetworkAddress,
  decodeService,
  decodeWorkload,
  HBONE_PORT,
  type Service,
  serviceKey,
  type Workload,
} from "./workload.ts";
import { assertInvalid } from "../tests/harness/assert.ts";

const WEB = "default/web.default.svc.cluster.local";

/** A workload document with every field set, as the control plane would send it. */
function fullWorkload(): Record<string, unknown> {
  return {
    uid: "Kubernetes//Pod/default/web-v1-abc",
    name: "web-v1-abc",
    namespace: "default",
    addresses: ["10.0.0.5", "FD00::0005"],
    hostname: "web-v1.example.com",
    network: "net1",
    tunnelProtocol: "HBONE",
    trustDomain: "example.org",
    serviceAccount: "web",
    waypoint: { hostname: { namespace: "default", hostname: "waypoint.default.svc.cluster.local" } },
    networkGateway: { address: { network: "net1", address: "192.168.1.1" }, hboneMtlsPort: 15009 },
    node: "node-a",
    canonicalName: "web",
    canonicalRevision: "v1",
    workloadType: "DEPLOYMENT",
    workloadName: "web-v1",
    services: {
      [WEB]: [{ servicePort: 80, targetPort: 8080, appProtocol: "http" }, { servicePort: 443, targetPort: 0 }],
      "other/api.other.svc.cluster.local": [{ servicePort: 9090, targetPort: 9090 }],
    },
    authorizationPolicies: ["default/allow-web", "istio-system/global"],
    status: "UNHEALTHY",
    clusterId: "cluster-1",
    locality: { region: "eu", zone: "eu-1", subzone: "rack-3" },
    capacity: 3,
  };
}

/** The smallest workload document: one address. */
function minimalWorkload(): Record<string, unknown> {
  return { uid: "u1", name: "w1", namespace: "default", addresses: ["10.0.0.1"] };
}

Deno.test("decodeWorkload() reads every field of a full document", () => {
  const want: Workload = {
    uid: "Kubernetes//Pod/default/web-v1-abc",
    name: "web-v1-abc",
    namespace: "default",
    addresses: ["10.0.0.5", "fd00::5"],
    hostname: "web-v1.example.com",
    network: "net1",
    tunnelProtocol: "HBONE",
    trustDomain: "example.org",
    serviceAccount: "web",
    waypoint: {
      hostname: { namespace: "default", hostname: "waypoint.default.svc.cluster.local" },
      hboneMtlsPort: 15008,
    },
    networkGateway: { address: { network: "net1", address: "192.168.1.1" }, hboneMtlsPort: 15009 },
    node: "node-a",
    canonicalName: "web",
    canonicalRevision: "v1",
    workloadType: "DEPLOYMENT",
    workloadName: "web-v1",
    services: {
      [WEB]: [{ servicePort: 80, targetPort: 8080, appProtocol: "http" }, { servicePort: 443, targetPort: 0 }],
      "other/api.other.svc.cluster.local": [{ servicePort: 9090, targetPort: 9090 }],
    },
    authorizationPolicies: ["default/allow-web", "istio-system/global"],
    status: "UNHEALTHY",
    clusterId: "cluster-1",
    locality: { region: "eu", zone: "eu-1", subzone: "rack-3" },
    capacity: 3,
  };
  assert.deepEqual(decodeWorkload(fullWorkload()), want);
});

Deno.test("decodeWorkload() reads a waypoint given by address", () => {
  const doc = { ...minimalWorkload(), waypoint: { address: { address: "10.9.0.1" }, hboneMtlsPort: 15088 } };
  assert.deepEqual(decodeWorkload(doc).waypoint, {
    address: { network: "", address: "10.9.0.1" },
    hboneMtlsPort: 15088,
  });
});

Deno.test("decodeWorkload() fills Istio's defaults for a minimal document", () => {
  const w = decodeWorkload(minimalWorkload());
  assert.deepEqual(w, {
    uid: "u1",
    name: "w1",
    namespace: "default",
    addresses: ["10.0.0.1"],
    network: "",
    tunnelProtocol: "NONE",
    trustDomain: "cluster.local",
    serviceAccount: "default",
    node: "",
    canonicalName: "",
    canonicalRevision: "",
    workloadType: "POD",
    workloadName: "",
    services: {},
    authorizationPolicies: [],
    status: "HEALTHY",
    clusterId: "",
    capacity: 1,
  });
  assert.ok(!("hostname" in w) && !("waypoint" in w) && !("networkGateway" in w) && !("locality" in w));
});

Deno.test("decodeWorkload() treats empty strings and nulls as Istio's defaults", () => {
  const w = decodeWorkload({
    ...minimalWorkload(),
    trustDomain: "",
    serviceAccount: "",
    tunnelProtocol: "",
    status: null,
    workloadType: "",
    capacity: null,
    hostname: "",
    waypoint: null,
  });
  assert.equal(w.trustDomain, "cluster.local");
  assert.equal(w.serviceAccount, "default");
  assert.equal(w.tunnelProtocol, "NONE");
  assert.equal(w.status, "HEALTHY");
  assert.equal(w.workloadType, "POD");
  assert.equal(w.capacity, 1);
  assert.equal(w.hostname, undefined);
  assert.equal(w.waypoint, undefined);
});

Deno.test("decodeWorkload() gives a gateway address the HBONE port 15008 by default", () => {
  assert.equal(HBONE_PORT, 15008);
  const w = decodeWorkload({ ...minimalWorkload(), networkGateway: { address: { address: "10.9.9.9" } } });
  assert.equal(w.networkGateway?.hboneMtlsPort, 15008);
});

Deno.test("decodeWorkload() canonicalizes addresses so each address has one key", () => {
  const w = decodeWorkload({ ...minimalWorkload(), addresses: ["::FFFF:0a00:0001", "FD00:0:0:0:0:0:0:1", "10.0.0.2"] });
  assert.deepEqual(w.addresses, ["::ffff:a00:1", "fd00::1", "10.0.0.2"]);
  const gw = decodeWorkload({ ...minimalWorkload(), networkGateway: { address: { address: "::ffff:10.0.0.1" } } });
  assert.equal(gw.networkGateway?.address?.address, "::ffff:a00:1");
});

Deno.test("decodeWorkload() accepts a workload reached only by hostname or through a gateway", () => {
  const base = { uid: "u", name: "n", namespace: "default" };
  assert.equal(decodeWorkload({ ...base, hostname: "vm.example.com" }).hostname, "vm.example.com");
  const viaGateway = decodeWorkload({
    ...base,
    networkGateway: { hostname: { namespace: "gw", hostname: "gw.example" } },
  });
  assert.deepEqual(viaGateway.addresses, []);
});

Deno.test("decodeWorkload() names the exact field of every kind of bad value", async (t) => {
  const cases: [string, Record<string, unknown>, string, RegExp][] = [
    ["missing uid", { uid: undefined }, "workload.uid", /is required/],
    ["empty uid", { uid: "" }, "workload.uid", /must not be empty/],
    ["uid of the wrong type", { uid: 7 }, "workload.uid", /expected a string, got 7/],
    ["uid too long", { uid: "u".repeat(513) }, "workload.uid", /513 characters long, at most 512/],
    ["missing name", { name: undefined }, "workload.name", /is required/],
    ["empty name", { name: "" }, "workload.name", /name of 1 to 253/],
    ["missing namespace", { namespace: undefined }, "workload.namespace", /is required/],
    ["namespace not a DNS label", { namespace: "Default" }, "workload.namespace", /DNS label/],
    ["addresses not a list", { addresses: "10.0.0.1" }, "workload.addresses", /expected a list/],
    ["second address bad", { addresses: ["10.0.0.1", "10.0.0.300"] }, "workload.addresses[1]", /IPv4 or IPv6/],
    ["address with leading zero", { addresses: ["010.0.0.1"] }, "workload.addresses[0]", /IPv4 or IPv6/],
    ["address of the wrong type", { addresses: [167772161] }, "workload.addresses[0]", /expected a string/],
    [
      "too many addresses",
      {
        addresses: Array.from({ length: 17 }, (_, i) => `10.0.0.${i + 1}`),
      },
      "workload.addresses",
      /17 items, at most 16/,
    ],
    ["no address, hostname or gateway", { addresses: [] }, "workload.addresses", /needs an address, a hostname/],
    ["hostname not a DNS name", { hostname: "Web_1" }, "workload.hostname", /DNS subdomain/],
    ["network of the wrong type", { network: 1 }, "workload.network", /expected a string/],
    ["unknown tunnel protocol", { tunnelProtocol: "TLS" }, "workload.tunnelProtocol", /one of NONE, HBONE/],
    ["lowercase tunnel protocol", { tunnelProtocol: "hbone" }, "workload.tunnelProtocol", /one of NONE, HBONE/],
    ["trust domain uppercase", { trustDomain: "Cluster.local" }, "workload.trustDomain", /trust domain/],
    ["trust domain with a port", { trustDomain: "td:1" }, "workload.trustDomain", /trust domain/],
    ["service account with a slash", { serviceAccount: "a/b" }, "workload.serviceAccount", /DNS subdomain/],
    [
      "waypoint with both forms",
      {
        waypoint: { hostname: { namespace: "a", hostname: "b" }, address: { address: "10.0.0.1" } },
      },
      "workload.waypoint",
      /exactly one of hostname or address/,
    ],
    ["waypoint with neither form", { waypoint: {} }, "workload.waypoint", /exactly one of hostname or address/],
    ["waypoint not an object", { waypoint: "waypoint.default" }, "workload.waypoint", /expected an object/],
    [
      "waypoint hostname namespace bad",
      {
        waypoint: { hostname: { namespace: "A", hostname: "b" } },
      },
      "workload.waypoint.hostname.namespace",
      /DNS label/,
    ],
    [
      "waypoint hostname missing",
      {
        waypoint: { hostname: { namespace: "a" } },
      },
      "workload.waypoint.hostname.hostname",
      /is required/,
    ],
    [
      "waypoint address bad",
      {
        waypoint: { address: { address: "nope" } },
      },
      "workload.waypoint.address.address",
      /IPv4 or IPv6/,
    ],
    [
      "waypoint port 0",
      {
        waypoint: { address: { address: "10.0.0.1" }, hboneMtlsPort: 0 },
      },
      "workload.waypoint.hboneMtlsPort",
      /integer from 1 to 65535, got 0/,
    ],
    [
      "network gateway port too big",
      {
        networkGateway: { address: { address: "10.0.0.1" }, hboneMtlsPort: 70000 },
      },
      "workload.networkGateway.hboneMtlsPort",
      /got 70000/,
    ],
    [
      "network gateway with an unknown field",
      {
        networkGateway: { address: { address: "10.0.0.1", port: 1 } },
      },
      "workload.networkGateway.address.port",
      /not a known field/,
    ],
    ["node of the wrong type", { node: ["a"] }, "workload.node", /expected a string/],
    ["unknown workload type", { workloadType: "STATEFULSET" }, "workload.workloadType", /one of DEPLOYMENT/],
    ["services not an object", { services: [] }, "workload.services", /expected an object/],
    [
      "service key without a namespace",
      {
        services: { "web.default.svc.cluster.local": [] },
      },
      'workload.services["web.default.svc.cluster.local"]',
      /service key NAMESPACE\/HOSTNAME/,
    ],
    [
      "service key with an extra part",
      {
        services: { "a/b/c": [] },
      },
      'workload.services["a/b/c"]',
      /service key/,
    ],
    [
      "service ports not a list",
      {
        services: { [WEB]: { servicePort: 80 } },
      },
      `workload.services[${JSON.stringify(WEB)}]`,
      /list of port mappings/,
    ],
    [
      "service port mapping not an object",
      {
        services: { [WEB]: [80] },
      },
      `workload.services[${JSON.stringify(WEB)}][0]`,
      /expected an object, got 80/,
    ],
    [
      "service port 0",
      {
        services: { [WEB]: [{ servicePort: 0, targetPort: 80 }] },
      },
      `workload.services[${JSON.stringify(WEB)}][0].servicePort`,
      /integer from 1 to 65535, got 0/,
    ],
    [
      "service port 70000 in the second mapping",
      {
        services: { [WEB]: [{ servicePort: 80, targetPort: 80 }, { servicePort: 70000, targetPort: 80 }] },
      },
      `workload.services[${JSON.stringify(WEB)}][1].servicePort`,
      /got 70000/,
    ],
    [
      "service port a string",
      {
        services: { [WEB]: [{ servicePort: "80", targetPort: 80 }] },
      },
      `workload.services[${JSON.stringify(WEB)}][0].servicePort`,
      /got "80"/,
    ],
    [
      "service port fractional",
      {
        services: { [WEB]: [{ servicePort: 80.5, targetPort: 80 }] },
      },
      `workload.services[${JSON.stringify(WEB)}][0].servicePort`,
      /got 80.5/,
    ],
    [
      "target port missing",
      {
        services: { [WEB]: [{ servicePort: 80 }] },
      },
      `workload.services[${JSON.stringify(WEB)}][0].targetPort`,
      /is required/,
    ],
    [
      "target port negative",
      {
        services: { [WEB]: [{ servicePort: 80, targetPort: -1 }] },
      },
      `workload.services[${JSON.stringify(WEB)}][0].targetPort`,
      /integer from 0 to 65535/,
    ],
    [
      "port mapping with an unknown field",
      {
        services: { [WEB]: [{ servicePort: 80, targetPort: 80, protocol: "TCP" }] },
      },
      `workload.services[${JSON.stringify(WEB)}][0].protocol`,
      /not a known field/,
    ],
    [
      "policy key without a name",
      { authorizationPolicies: ["default/"] },
      "workload.authorizationPolicies[0]",
      /policy key/,
    ],
    [
      "policy key without a namespace",
      { authorizationPolicies: ["ok/a", "allow"] },
      "workload.authorizationPolicies[1]",
      /policy key/,
    ],
    [
      "policy key of the wrong type",
      { authorizationPolicies: [{}] },
      "workload.authorizationPolicies[0]",
      /expected a string/,
    ],
    ["unknown status", { status: "DEAD" }, "workload.status", /one of HEALTHY, UNHEALTHY/],
    ["cluster id of the wrong type", { clusterId: false }, "workload.clusterId", /expected a string/],
    ["locality not an object", { locality: "eu" }, "workload.locality", /expected an object/],
    ["locality zone of the wrong type", { locality: { zone: 1 } }, "workload.locality.zone", /expected a string/],
    [
      "locality with an unknown field",
      { locality: { country: "x" } },
      "workload.locality.country",
      /not a known field/,
    ],
    ["capacity negative", { capacity: -1 }, "workload.capacity", /integer from 0 to 4294967295, got -1/],
    ["capacity over 32 bits", { capacity: 2 ** 32 }, "workload.capacity", /got 4294967296/],
    ["capacity a string", { capacity: "1" }, "workload.capacity", /got "1"/],
    ["capacity not finite", { capacity: Infinity }, "workload.capacity", /integer/],
    ["misspelt field", { serviceaccount: "web" }, "workload.serviceaccount", /is not a known field/],
    ["field with a non-identifier name", { "x-y": 1 }, 'workload["x-y"]', /is not a known field/],
  ];
  for (const [name, patch, field, message] of cases) {
    await t.step(name, () => {
      const doc = { ...minimalWorkload(), ...patch };
      for (const [k, v] of Object.entries(patch)) if (v === undefined) delete doc[k];
      assertInvalid(() => decodeWorkload(doc), field, message);
    });
  }
});

Deno.test("decodeWorkload() rejects a document that is not an object at the top level", async (t) => {
  for (const value of [undefined, null, "workload", 42, true, [], [minimalWorkload()]]) {
    await t.step(JSON.stringify(value) ?? "undefined", () => {
      assertInvalid(() => decodeWorkload(value), "workload", /expected an object/);
    });
  }
});

Deno.test("decodeWorkload() prefixes fields with the path it is given", () => {
  assertInvalid(
    () => decodeWorkload({ ...minimalWorkload(), addresses: ["x"] }, "resources[3]"),
    "resources[3].addresses[0]",
  );
});

Deno.test("decodeWorkload() shortens a huge bad value in its message", () => {
  const err = assertInvalid(
    () => decodeWorkload({ ...minimalWorkload(), addresses: ["x".repeat(10_000)] }),
    "workload.addresses[0]",
  );
  assert.ok(err.message.length < 300, `message of ${err.message.length} characters`);
});

/** A service document with every field set. */
function fullService(): Record<string, unknown> {
  return {
    name: "web",
    namespace: "default",
    hostname: "web.default.svc.cluster.local",
    addresses: [{ network: "net1", address: "10.96.0.10" }, { address: "FD00:96::0010" }],
    ports: [
      { port: 80, targetPort: 8080, appProtocol: "http" },
      { port: 443, targetPortName: "https" },
      { port: 9090, targetPort: 0, targetPortName: "metrics" },
    ],
    subjectAltNames: ["spiffe://cluster.local/ns/default/sa/web"],
    waypoint: { address: { address: "10.96.0.99" }, hboneMtlsPort: 15008 },
    loadBalancing: { routingPreference: ["NETWORK", "REGION", "ZONE"], mode: "FAILOVER", healthPolicy: "ALLOW_ALL" },
  };
}

function minimalService(): Record<string, unknown> {
  return { name: "web", namespace: "default", hostname: "web.default.svc.cluster.local" };
}

Deno.test("decodeService() reads every field of a full document", () => {
  const want: Service = {
    name: "web",
    namespace: "default",
    hostname: "web.default.svc.cluster.local",
    addresses: [{ network: "net1", address: "10.96.0.10" }, { network: "", address: "fd00:96::10" }],
    ports: [
      { port: 80, targetPort: 8080, appProtocol: "http" },
      { port: 443, targetPort: 0, targetPortName: "https" },
      { port: 9090, targetPort: 0, targetPortName: "metrics" },
    ],
    subjectAltNames: ["spiffe://cluster.local/ns/default/sa/web"],
    waypoint: { address: { network: "", address: "10.96.0.99" }, hboneMtlsPort: 15008 },
    loadBalancing: { routingPreference: ["NETWORK", "REGION", "ZONE"], mode: "FAILOVER", healthPolicy: "ALLOW_ALL" },
  };
  assert.deepEqual(decodeService(fullService()), want);
});

Deno.test("decodeService() makes a headless service from a minimal document", () => {
  const s = decodeService(minimalService());
  assert.deepEqual(s, { ...minimalService(), addresses: [], ports: [], subjectAltNames: [] });
  assert.equal(serviceKey(s), "default/web.default.svc.cluster.local");
});

Deno.test("decodeService() fills load-balancing defaults", () => {
  const s = decodeService({ ...minimalService(), loadBalancing: {} });
  assert.deepEqual(s.loadBalancing, { routingPreference: [], mode: "UNSPECIFIED_MODE", healthPolicy: "ONLY_HEALTHY" });
});

Deno.test("decodeService() reads a waypoint given by hostname", () => {
  const s = decodeService({
    ...minimalService(),
    waypoint: {
      hostname: { namespace: "default", hostname: "waypoint.default.svc.cluster.local" },
      hboneMtlsPort: 15009,
    },
  });
  assert.deepEqual(s.waypoint, {
    hostname: { namespace: "default", hostname: "waypoint.default.svc.cluster.local" },
    hboneMtlsPort: 15009,
  });
});

Deno.test("decodeService() names the exact field of every kind of bad value", async (t) => {
  const cases: [string, Record<string, unknown>, string, RegExp][] = [
    ["missing name", { name: undefined }, "service.name", /is required/],
    ["name not a DNS label", { name: "Web" }, "service.name", /DNS label/],
    ["namespace not a DNS label", { namespace: "a.b" }, "service.namespace", /DNS label/],
    ["missing hostname", { hostname: undefined }, "service.hostname", /is required/],
    ["hostname not a DNS name", { hostname: "web..svc" }, "service.hostname", /DNS subdomain/],
    ["VIP not an object", { addresses: ["10.96.0.1"] }, "service.addresses[0]", /expected an object/],
    [
      "VIP address bad",
      { addresses: [{ address: "10.96.0.1" }, { address: "10.96.0" }] },
      "service.addresses[1].address",
      /IPv4 or IPv6/,
    ],
    ["VIP address missing", { addresses: [{ network: "n" }] }, "service.addresses[0].address", /expected a string/],
    [
      "VIP with an unknown field",
      { addresses: [{ address: "10.96.0.1", vip: true }] },
      "service.addresses[0].vip",
      /not a known field/,
    ],
    [
      "port with neither targetPort nor a name",
      { ports: [{ port: 80 }] },
      "service.ports[0].targetPort",
      /targetPort or a targetPortName/,
    ],
    [
      "port with targetPort 0 and no name",
      { ports: [{ port: 80, targetPort: 8080 }, { port: 81, targetPort: 0 }] },
      "service.ports[1].targetPort",
      /targetPort or a targetPortName/,
    ],
    ["port 0", { ports: [{ port: 0, targetPort: 80 }] }, "service.ports[0].port", /integer from 1 to 65535, got 0/],
    ["port 70000", { ports: [{ port: 70000, targetPort: 80 }] }, "service.ports[0].port", /got 70000/],
    ["port missing", { ports: [{ targetPort: 80 }] }, "service.ports[0].port", /integer from 1 to 65535/],
    [
      "target port 70000",
      { ports: [{ port: 80, targetPort: 70000 }] },
      "service.ports[0].targetPort",
      /integer from 0 to 65535/,
    ],
    [
      "target port name not a DNS label",
      { ports: [{ port: 80, targetPortName: "HTTP" }] },
      "service.ports[0].targetPortName",
      /DNS label/,
    ],
    [
      "duplicate port",
      {
        ports: [{ port: 80, targetPort: 8080 }, { port: 81, targetPort: 8081 }, { port: 80, targetPort: 9090 }],
      },
      "service.ports[2].port",
      /port 80 is listed twice/,
    ],
    ["ports not a list", { ports: { port: 80 } }, "service.ports", /expected a list/],
    ["empty subject alt name", { subjectAltNames: [""] }, "service.subjectAltNames[0]", /must not be empty/],
    [
      "waypoint with both forms",
      {
        waypoint: { hostname: { namespace: "a", hostname: "b" }, address: { address: "10.0.0.1" } },
      },
      "service.waypoint",
      /exactly one of hostname or address/,
    ],
    [
      "unknown routing scope",
      { loadBalancing: { routingPreference: ["ZONE", "PLANET"] } },
      "service.loadBalancing.routingPreference[1]",
      /one of REGION/,
    ],
    [
      "unknown load-balancing mode",
      { loadBalancing: { mode: "RANDOM" } },
      "service.loadBalancing.mode",
      /one of UNSPECIFIED_MODE/,
    ],
    [
      "unknown health policy",
      { loadBalancing: { healthPolicy: "ANY" } },
      "service.loadBalancing.healthPolicy",
      /one of ONLY_HEALTHY/,
    ],
    ["misspelt field", { vips: [] }, "service.vips", /is not a known field/],
  ];
  for (const [name, patch, field, message] of cases) {
    await t.step(name, () => {
      const doc = { ...minimalService(), ...patch };
      for (const [k, v] of Object.entries(patch)) if (v === undefined) delete doc[k];
      assertInvalid(() => decodeService(doc), field, message);
    });
  }
});

Deno.test("decodeService() rejects a document that is not an object", () => {
  assertInvalid(() => decodeService("web"), "service", /expected an object/);
  assertInvalid(() => decodeService(null, "services[2]"), "services[2]", /expected an object/);
});

Deno.test("decodeGatewayAddress() takes exactly one of hostname or address", async (t) => {
  await t.step("hostname", () => {
    assert.deepEqual(decodeGatewayAddress({ hostname: { namespace: "gw", hostname: "gw.example.com" } }, "g"), {
      hostname: { namespace: "gw", hostname: "gw.example.com" },
      hboneMtlsPort: 15008,
    });
  });
  await t.step("address", () => {
    assert.deepEqual(decodeGatewayAddress({ address: { network: "n", address: "10.0.0.1" }, hboneMtlsPort: 1 }, "g"), {
      address: { network: "n", address: "10.0.0.1" },
      hboneMtlsPort: 1,
    });
  });
  await t.step("both", () => {
    assertInvalid(
      () =>
        decodeGatewayAddress({ hostname: { namespace: "a", hostname: "b" }, address: { address: "10.0.0.1" } }, "g"),
      "g",
      /exactly one/,
    );
  });
  await t.step("neither", () => {
    assertInvalid(() => decodeGatewayAddress({ hboneMtlsPort: 15008 }, "g"), "g", /exactly one/);
  });
  await t.step("null hostname and null address", () => {
    assertInvalid(() => decodeGatewayAddress({ hostname: null, address: null }, "g"), "g", /exactly one/);
  });
  await t.step("hostname with a null address", () => {
    assert.deepEqual(decodeGatewayAddress({ hostname: { namespace: "gw", hostname: "gw" }, address: null }, "g"), {
      hostname: { namespace: "gw", hostname: "gw" },
      hboneMtlsPort: 15008,
    });
  });
  await t.step("address with a null hostname", () => {
    assert.deepEqual(decodeGatewayAddress({ hostname: null, address: { address: "10.0.0.1" } }, "g"), {
      address: { network: "", address: "10.0.0.1" },
      hboneMtlsPort: 15008,
    });
  });
  await t.step("hostname not an object", () => {
    assertInvalid(() => decodeGatewayAddress({ hostname: "gw.example.com" }, "g"), "g.hostname", /expected an object/);
  });
  await t.step("unknown field in hostname", () => {
    assertInvalid(
      () => decodeGatewayAddress({ hostname: { namespace: "a", hostname: "b", port: 1 } }, "g"),
      "g.hostname.port",
      /not a known field/,
    );
  });
  await t.step("unknown field at the top", () => {
    assertInvalid(
      () => decodeGatewayAddress({ address: { address: "10.0.0.1" }, port: 1 }, "g"),
      "g.port",
      /not a known field/,
    );
  });
});

Deno.test("decodeNetworkAddress() defaults the network to the empty name", () => {
  assert.deepEqual(decodeNetworkAddress({ address: "10.0.0.1" }, "a"), { network: "", address: "10.0.0.1" });
  assertInvalid(() => decodeNetworkAddress({ address: "10.0.0.1", network: 5 }, "a"), "a.network", /expected a string/);
});
