/**
 * The in-process tier (tests/harness/inprocess.ts): two ztunnels' real pod handling on loopback, no root. Each test
 * sends an app's connection through the client pod's outbound (15001), and asserts what a user of ztunnel relies
 * on: the bytes, who the app saw, the access log line and the Istio metrics.
 */

import assert from "node:assert/strict";
import { exchangeAll, InProcessMesh } from "../../tests/harness/inprocess.ts";

/** Waits, bounded, for `f` to hold: telemetry is written once both sides of a relay have closed. */
async function eventually(what: string, f: () => boolean | Promise<boolean>): Promise<void> {
  for (const deadline = performance.now() + 3_000; !(await f());) {
    if (performance.now() > deadline) throw new Error(`waited 3 s for: ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

const OPENED = "istio_tcp_connections_opened_total";

Deno.test("in-process: a TCP echo goes client pod → outbound → HBONE → inbound → app, logged and counted on both sides", async () => {
  await using mesh = await InProcessMesh.create();
  const client = await mesh.pod("client", { node: "a" });
  const server = await mesh.pod("server", { node: "b" });
  const app = await server.echo(8080);

  const reply = await exchangeAll(await client.connect(server.addr(8080)), "hello over HBONE");

  assert.equal(reply, "hello over HBONE");
  assert.deepEqual(app.peers, [client.ip], "the app sees the client pod's own address");
  const a = mesh.ztunnel("a");
  const b = mesh.ztunnel("b");
  await eventually("both access log lines", () => a.access.length === 1 && b.access.length === 1);
  assert.deepEqual(
    [a.access[0].direction, a.access[0]["src.identity"], a.access[0]["dst.identity"], a.access[0]["dst.addr"]],
    ["outbound", client.identity, server.identity, `${server.ip}:15008`],
  );
  assert.equal(a.access[0]["dst.hbone_addr"], `${server.ip}:8080`, "upstream's keys: the tunnel, then its target");
  assert.deepEqual(
    [b.access[0].direction, b.access[0]["src.identity"], b.access[0]["dst.identity"], b.access[0].bytes_recv],
    ["inbound", client.identity, server.identity, "hello over HBONE".length],
  );
  assert.equal(b.access[0].error, undefined);
  const mtls = {
    source_principal: client.identity,
    destination_principal: server.identity,
    connection_security_policy: "mutual_tls",
    response_flags: "-",
  };
  assert.equal(await mesh.counter("a", OPENED, { ...mtls, reporter: "source" }), 1);
  assert.equal(await mesh.counter("b", OPENED, { ...mtls, reporter: "destination" }), 1);
});

Deno.test("in-process: an L4 DENY policy refuses the tunnel with the DENY flag, and the app never sees it", async () => {
  await using mesh = await InProcessMesh.create();
  const client = await mesh.pod("client", { node: "a" });
  const server = await mesh.pod("server", { node: "b" });
  const app = await server.echo(8080);
  mesh.policy({
    name: "deny-client",
    namespace: "default",
    scope: "NAMESPACE",
    action: "DENY",
    rules: [{ clauses: [{ matches: [{ principals: [{ exact: client.identity.replace("spiffe://", "") }] }] }] }],
  });

  const outcome = await exchangeAll(await client.connect(server.addr(8080)), "let me in").then(
    (reply) => `reply ${JSON.stringify(reply)}`,
    (error) => `error ${error.code ?? error.message}`,
  );

  assert.equal(outcome, "error ECONNRESET", "the app's connection is reset, not answered");
  assert.deepEqual(app.peers, [], "the app was never dialled");
  const b = mesh.ztunnel("b");
  await eventually("the inbound refusal is logged", () => b.access.length === 1);
  assert.match(String(b.access[0].error), /deny-client/);
  assert.equal(b.access[0]["src.identity"], client.identity);
  assert.equal(await mesh.counter("b", OPENED, { reporter: "destination", response_flags: "DENY" }), 1);
  assert.equal(await mesh.counter("b", OPENED, { response_flags: "-" }), 0);
  const a = mesh.ztunnel("a");
  await eventually("the outbound refusal is logged", () => a.access.length === 1);
  assert.match(String(a.access[0].error), /answered 401 to CONNECT/);
  assert.equal(await mesh.counter("a", OPENED, { reporter: "source", response_flags: "-" }), 0);
});

Deno.test("in-process: a service VIP is sent to one of its endpoints, on the target port, per connection", async () => {
  let random = 0;
  await using mesh = await InProcessMesh.create({ random: () => random });
  const svc = mesh.service("web", { 80: 8080 });
  const endpoint = { extra: { services: { [svc.key]: [{ servicePort: 80, targetPort: 8080 }] } }, node: "b" };
  const client = await mesh.pod("client", { node: "a" });
  const web1 = await mesh.pod("web-1", endpoint);
  const web2 = await mesh.pod("web-2", endpoint);
  await web1.echo(8080, (d) => `web-1:${d}`);
  await web2.echo(8080, (d) => `web-2:${d}`);

  const replies = [];
  for (const r of [0, 0.999]) {
    random = r;
    replies.push(await exchangeAll(await client.connect({ ip: svc.vip, port: 80 }), "hi"));
  }

  assert.deepEqual(replies.toSorted(), ["web-1:hi", "web-2:hi"], "the two picks reach the two endpoints");
  const a = mesh.ztunnel("a");
  await eventually("two outbound lines", () => a.access.length === 2);
  for (const line of a.access) {
    assert.equal(line["dst.service"], "web.default.svc.cluster.local");
    assert.match(String(line["dst.hbone_addr"]), /:8080$/, "the service port 80 becomes the target port 8080");
  }
  assert.deepEqual(a.access.map((l) => l["dst.workload"]).toSorted(), ["web-1", "web-2"]);
  assert.equal(
    await mesh.counter("a", OPENED, { destination_service: "web.default.svc.cluster.local", reporter: "source" }),
    2,
  );
});

Deno.test("in-process: an address outside the mesh is passed through as plain TCP from the pod's address", async () => {
  await using mesh = await InProcessMesh.create();
  const client = await mesh.pod("client", { node: "a" });
  const outside = mesh.address(); // in no workload or service
  const app = await mesh.app(outside, 9090, (d) => d.toUpperCase());

  const reply = await exchangeAll(await client.connect({ ip: outside, port: 9090 }), "plain");

  assert.equal(reply, "PLAIN");
  assert.deepEqual(app.peers, [client.ip], "ztunnel dials from the pod's own address");
  const a = mesh.ztunnel("a");
  await eventually("the outbound line", () => a.access.length === 1);
  assert.equal(a.access[0]["dst.addr"], `${outside}:9090`);
  assert.equal(a.access[0]["dst.hbone_addr"], undefined);
  assert.equal(a.access[0]["dst.identity"], undefined);
  assert.equal(await mesh.counter("a", OPENED, { connection_security_policy: "unknown", reporter: "source" }), 1);
  assert.equal(await mesh.counter("a", OPENED, { connection_security_policy: "mutual_tls" }), 0);
});

Deno.test("in-process: plaintext from outside the mesh is captured on 15006, served without an identity, and refused once a policy requires one", async () => {
  await using mesh = await InProcessMesh.create();
  const server = await mesh.pod("server", { node: "b" });
  const app = await server.echo(8080);
  const outside = mesh.address();

  assert.equal(await exchangeAll(await server.connectPlaintext(outside, 8080), "plain in"), "plain in");
  mesh.policy({
    name: "mtls-only",
    namespace: "default",
    scope: "NAMESPACE",
    action: "ALLOW",
    rules: [{ clauses: [{ matches: [{ principals: [{ presence: true }] }] }] }],
  });
  const refused = await exchangeAll(await server.connectPlaintext(outside, 8080), "again").catch((e) => e.code);

  assert.match(refused, /^(ECONNRESET|EPIPE)$/, "reset: by the time the app writes, or while it reads");
  assert.deepEqual(app.peers, [outside], "one connection reached the app, from the client's own address");
  const b = mesh.ztunnel("b");
  await eventually("two inbound lines", () => b.access.length === 2);
  assert.deepEqual(b.access.map((l) => [l.direction, l["src.identity"], l["dst.addr"]]), [
    ["inbound", undefined, `${server.ip}:8080`],
    ["inbound", undefined, `${server.ip}:8080`],
  ]);
  const plain = { reporter: "destination", connection_security_policy: "unknown" };
  assert.equal(await mesh.counter("b", OPENED, { ...plain, response_flags: "-" }), 1);
  assert.equal(await mesh.counter("b", OPENED, { ...plain, response_flags: "DENY" }), 1);
});
