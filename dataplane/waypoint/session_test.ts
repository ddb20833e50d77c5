import assert from "node:assert/strict";
import { admit, forwardedFor, isSelf, type Refusal, type Session, type WaypointSelf } from "./session.ts";
import { SpiffeId } from "../../mesh/identity.ts";
import { MeshState } from "../../mesh/store.ts";
import { decodeService, decodeWorkload } from "../../mesh/workload.ts";

const WAYPOINT_HOST = "waypoint.shop.svc.cluster.local";
const WAYPOINT_VIP = "10.96.0.10";
const CLIENT = SpiffeId.of("cluster.local", "shop", "client");

const self: WaypointSelf = {
  name: "waypoint",
  namespace: "shop",
  hostname: WAYPOINT_HOST,
  identity: SpiffeId.of("cluster.local", "shop", "waypoint"),
  network: "",
};

const byHostname = { hostname: { namespace: "shop", hostname: WAYPOINT_HOST } };

/**
 * A mesh with the waypoint's own service, services bound to it by hostname and by address, one bound to another
 * waypoint, one with the right hostname in the wrong namespace, one unbound, and workloads bound and unbound.
 */
function mesh(): MeshState {
  const state = new MeshState();
  const service = (name: string, vip: string, extra: Record<string, unknown> = {}) =>
    state.services.upsert(decodeService({
      name,
      namespace: "shop",
      hostname: `${name}.shop.svc.cluster.local`,
      addresses: [{ address: vip }],
      ports: [{ port: 80, targetPort: 8080, appProtocol: "http" }, { port: 9000, targetPort: 9000 }],
      ...extra,
    }));
  state.services.upsert(decodeService({
    name: "waypoint",
    namespace: "shop",
    hostname: WAYPOINT_HOST,
    addresses: [{ address: WAYPOINT_VIP }],
    ports: [{ port: 15008, targetPort: 15008 }],
  }));
  service("web", "10.96.0.1", { waypoint: byHostname });
  service("api", "10.96.0.2", { waypoint: { address: { address: WAYPOINT_VIP } } });
  service("other", "10.96.0.3", {
    waypoint: { hostname: { namespace: "shop", hostname: "other-waypoint.shop.svc.cluster.local" } },
  });
  service("unbound", "10.96.0.4");
  service("elsewhere", "10.96.0.5", {
    waypoint: { hostname: { namespace: "billing", hostname: WAYPOINT_HOST } },
  });
  service("stray", "10.96.0.6", { waypoint: { address: { address: "10.96.0.99" } } });
  state.workloads.upsert(
    decodeWorkload({
      uid: "client",
      name: "client",
      namespace: "shop",
      serviceAccount: "client",
      addresses: ["10.0.0.1"],
    }),
  );
  state.workloads.upsert(
    decodeWorkload({
      uid: "other",
      name: "other",
      namespace: "shop",
      serviceAccount: "other",
      addresses: ["10.0.0.7"],
    }),
  );
  state.workloads.upsert(decodeWorkload({
    uid: "db",
    name: "db",
    namespace: "shop",
    addresses: ["10.0.0.7"],
    waypoint: byHostname,
  }));
  state.workloads.upsert(decodeWorkload({ uid: "cache", name: "cache", namespace: "shop", addresses: ["10.0.0.8"] }));
  return state;
}

/** The headers of a CONNECT from the client's ztunnel. */
function connect(authority: string | undefined, extra: [string, string][] = []): [string, string][] {
  const h: [string, string][] = [[":method", "CONNECT"]];
  if (authority !== undefined) h.push([":authority", authority]);
  return [...h, ["forwarded", 'for="10.0.0.1:43210"'], ...extra];
}

/** The TCP peer of the tunnel: the client's ztunnel on its node. */
const tcpPeer = { identity: CLIENT, ip: "192.168.1.20", port: 51000 };

function admitted(result: Session | Refusal): Session {
  assert.ok(!("reason" in result), `refused: ${"reason" in result ? result.reason : ""}`);
  return result;
}

function refused(result: Session | Refusal): Refusal {
  assert.ok("reason" in result, `admitted: ${JSON.stringify(result)}`);
  return result;
}

Deno.test("admit() serves only CONNECT", () => {
  const r = refused(admit([[":method", "GET"], [":authority", "10.96.0.1:80"]], tcpPeer, self, mesh()));
  assert.equal(r.status, 400);
  assert.match(r.reason, /only CONNECT/);
});

Deno.test("admit() refuses an authority that is not ip:port", async (t) => {
  for (const authority of [undefined, "web.shop.svc.cluster.local:80", "10.96.0.1", "10.96.0.1:0", ""]) {
    await t.step(`${JSON.stringify(authority)} → 400`, () => {
      const r = refused(admit(connect(authority), tcpPeer, self, mesh()));
      assert.equal(r.status, 400);
      assert.match(r.reason, /is not ip:port/);
    });
  }
});

Deno.test("admit() admits a service bound to this waypoint, with the port's appProtocol", async (t) => {
  const cases = [
    { name: "bound by hostname and namespace, http port", authority: "10.96.0.1:80", host: "web", app: "http" },
    { name: "bound by hostname, port without appProtocol", authority: "10.96.0.1:9000", host: "web", app: undefined },
    { name: "bound by the address of the waypoint's service", authority: "10.96.0.2:80", host: "api", app: "http" },
  ];
  for (const c of cases) {
    await t.step(c.name, () => {
      const s = admitted(admit(connect(c.authority), tcpPeer, self, mesh()));
      assert.equal(s.authority, c.authority);
      assert.equal(s.destination.kind, "service");
      if (s.destination.kind !== "service") return;
      assert.equal(s.destination.service.hostname, `${c.host}.shop.svc.cluster.local`);
      assert.equal(s.destination.vip, c.authority.split(":")[0]);
      assert.equal(s.destination.port, Number(c.authority.split(":")[1]));
      assert.equal(s.destination.appProtocol, c.app);
    });
  }
});

Deno.test("admit() refuses with 503 what is not bound to this waypoint", async (t) => {
  const cases = [
    { name: "a service bound to another waypoint", authority: "10.96.0.3:80", reason: /not bound to this waypoint/ },
    { name: "an unbound service", authority: "10.96.0.4:80", reason: /not bound to this waypoint/ },
    {
      name: "a service bound to a waypoint of the same name in another namespace",
      authority: "10.96.0.5:80",
      reason: /not bound to this waypoint/,
    },
    {
      name: "a service bound by an address that is no service",
      authority: "10.96.0.6:80",
      reason: /not bound to this waypoint/,
    },
    { name: "a port the bound service lacks", authority: "10.96.0.1:81", reason: /has no port 81/ },
    { name: "an unbound workload", authority: "10.0.0.8:6379", reason: /workload cache is not bound/ },
    { name: "an address the mesh does not know", authority: "10.1.2.3:80", reason: /not a service or workload/ },
  ];
  for (const c of cases) {
    await t.step(c.name, () => {
      const r = refused(admit(connect(c.authority), tcpPeer, self, mesh()));
      assert.equal(r.status, 503);
      assert.match(r.reason, c.reason);
    });
  }
});

Deno.test("admit() admits a workload whose waypoint is this one as a workload destination", () => {
  const s = admitted(admit(connect("10.0.0.7:5432"), tcpPeer, self, mesh()));
  assert.equal(s.destination.kind, "workload");
  if (s.destination.kind !== "workload") return;
  assert.equal(s.destination.workload.uid, "db");
  assert.equal(s.destination.ip, "10.0.0.7");
  assert.equal(s.destination.port, 5432);
  assert.equal(s.destination.appProtocol, undefined);
});

Deno.test("admit() takes the peer from Forwarded: for= and looks its workload up by that address", () => {
  const s = admitted(admit(connect("10.96.0.1:80"), tcpPeer, self, mesh()));
  assert.equal(s.peer.identity, CLIENT);
  assert.equal(s.peer.ip, "10.0.0.1");
  assert.equal(s.peer.port, 43210);
  assert.equal(s.peer.workload?.uid, "client");
});

Deno.test("admit() believes Forwarded: for= only for an address whose workload has the peer's identity", () => {
  const spoofed: [string, string][] = [[":method", "CONNECT"], [":authority", "10.96.0.1:80"], [
    "forwarded",
    'for="10.0.0.7:1234"',
  ]];
  const s = admitted(admit(spoofed, tcpPeer, self, mesh()));
  assert.equal(s.peer.ip, "192.168.1.20", "another workload's address is not the client's to claim");
  assert.equal(s.peer.workload, undefined);
  const unknown: [string, string][] = [[":method", "CONNECT"], [":authority", "10.96.0.1:80"], [
    "forwarded",
    'for="10.9.9.9:1234"',
  ]];
  assert.equal(admitted(admit(unknown, tcpPeer, self, mesh())).peer.ip, "192.168.1.20");
});

Deno.test("admit() falls back to the TCP peer without Forwarded, and knows no workload for a node address", () => {
  const headers: [string, string][] = [[":method", "CONNECT"], [":authority", "10.96.0.1:80"]];
  const s = admitted(admit(headers, tcpPeer, self, mesh()));
  assert.equal(s.peer.ip, "192.168.1.20");
  assert.equal(s.peer.port, 51000);
  assert.equal(s.peer.workload, undefined);
});

Deno.test("forwardedFor() reads for= as ztunnel writes it, and nothing else", async (t) => {
  const cases: [value: string | undefined, want: { ip: string; port: number } | undefined][] = [
    ['for="10.0.0.1:1234"', { ip: "10.0.0.1", port: 1234 }],
    ["for=10.0.0.1:1234", { ip: "10.0.0.1", port: 1234 }],
    ['For="10.0.0.1:1234"', { ip: "10.0.0.1", port: 1234 }],
    ['proto=https;for="10.0.0.1:1234";by="10.0.0.9:15008"', { ip: "10.0.0.1", port: 1234 }],
    ['for="10.0.0.1:1234", for="10.0.0.2:80"', { ip: "10.0.0.1", port: 1234 }],
    ['for="[fd00::0001]:1234"', { ip: "fd00::1", port: 1234 }],
    ['for="10.0.0.1"', undefined],
    ['for="unknown"', undefined],
    ['for="client.example:80"', undefined],
    ['xfor="10.0.0.1:1234"', undefined],
    ["", undefined],
    [undefined, undefined],
  ];
  for (const [value, want] of cases) {
    await t.step(`${JSON.stringify(value)}`, () => {
      const headers: [string, string][] = value === undefined ? [] : [["forwarded", value]];
      assert.deepEqual(forwardedFor(headers), want);
    });
  }
});

Deno.test("isSelf() matches by hostname and namespace, or by the address of this waypoint's service", async (t) => {
  const state = mesh();
  const cases: [name: string, gw: Parameters<typeof isSelf>[0], want: boolean][] = [
    ["absent", undefined, false],
    ["hostname and namespace", { ...byHostname, hboneMtlsPort: 15008 }, true],
    [
      "hostname in another namespace",
      { hostname: { namespace: "billing", hostname: WAYPOINT_HOST }, hboneMtlsPort: 15008 },
      false,
    ],
    ["the waypoint's VIP", { address: { network: "", address: WAYPOINT_VIP }, hboneMtlsPort: 15008 }, true],
    ["another service's VIP", { address: { network: "", address: "10.96.0.1" }, hboneMtlsPort: 15008 }, false],
    ["a workload's address", { address: { network: "", address: "10.0.0.1" }, hboneMtlsPort: 15008 }, false],
    ["the VIP on another network", { address: { network: "n2", address: WAYPOINT_VIP }, hboneMtlsPort: 15008 }, false],
  ];
  for (const [name, gw, want] of cases) {
    await t.step(`${name} → ${want}`, () => assert.equal(isSelf(gw, self, state), want));
  }
});
