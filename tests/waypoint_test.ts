/**
 * The waypoint end to end, in network namespaces: a real control plane reading manifests (a Gateway of class
 * istio-waypoint, an HTTPRoute, an L7 AuthorizationPolicy), a real ztunnel on each of two nodes, a real
 * `skiff waypoint` process in its own pod, and real apps: HTTP/1.1 echo servers in two versions and gRPC
 * servers, called with curl, a raw HTTP client and a gRPC client from a captured client pod. The node agent is
 * played by the test (tests/cni_test.ts runs the real one): it reports the pods redirected and hands them to
 * ztunnel.
 */

import assert from "node:assert/strict";
import { installRedirect } from "../cni/redirect_linux.ts";
import { loadSocketSupport } from "../dataplane/sockets_linux.ts";
import { AppProcess, runApp, runIn } from "./harness/apps.ts";
import { ControlProcess } from "./harness/control.ts";
import { IS_ROOT, NetnsCluster, netnsTest, type Pod } from "./harness/netns.ts";
import { call } from "./harness/tcp.ts";
import { echoApp, ZtunnelProcess } from "./harness/ztunnel.ts";
import { freePortBase } from "./harness/ports.ts";
import { startWaypoint } from "./harness/waypoint.ts";

if (IS_ROOT) loadSocketSupport();

const ECHO = "10.96.8.1";
const V1 = "10.96.8.2";
const V2 = "10.96.8.3";
const WAYPOINT_ID = "spiffe://cluster.local/ns/shop/sa/waypoint";

const pod = (p: Pod, labels: string, sa = p.name) =>
  `apiVersion: v1
kind: Pod
metadata: { name: ${p.name}, namespace: shop, labels: { ${labels} } }
spec: { nodeName: ${p.node.name}, serviceAccountName: ${sa} }
status: { podIP: ${p.address}, phase: Running }
---
`;

const service = (name: string, vip: string, selector: string) =>
  `apiVersion: v1
kind: Service
metadata: { name: ${name}, namespace: shop }
spec:
  clusterIP: ${vip}
  selector: { ${selector} }
  ports:
  - { name: http, port: 80, targetPort: 8080 }
  - { name: grpc, port: 9090, targetPort: 9090 }
  - { name: tcp, port: 7000, targetPort: 7000 }
---
`;

const ROUTES = `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: echo, namespace: shop }
spec:
  parentRefs: [{ group: "", kind: Service, name: echo, port: 80 }]
  rules:
  - matches: [{ path: { type: PathPrefix, value: /split } }]
    backendRefs: [{ name: echo-v1, port: 80, weight: 90 }, { name: echo-v2, port: 80, weight: 10 }]
  - matches: [{ headers: [{ name: x-version, value: v2 }] }]
    backendRefs: [{ name: echo-v2, port: 80 }]
    filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier: { set: [{ name: x-route, value: by-header }] }
  - matches: [{ path: { type: Exact, value: /v2 } }]
    backendRefs: [{ name: echo-v2, port: 80 }]
  - filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: { add: [{ name: x-added, value: by-waypoint }] }
    backendRefs: [{ name: echo-v1, port: 80 }]
`;

const DENY_ADMIN = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: deny-admin, namespace: shop }
spec:
  targetRefs: [{ kind: Service, group: "", name: echo }]
  action: DENY
  rules: [{ to: [{ operation: { ports: ["80"], methods: [GET], paths: [/admin, /admin/*] } }] }]
`;

netnsTest("waypoint: HTTPRoute split and matches, L7 DENY with normalization, gRPC, identities", async (t) => {
  await using cluster = await NetnsCluster.create("waypoint", { nodes: 2 });
  const [nodeA, nodeB] = cluster.nodes;
  const client = await cluster.addPod(nodeA, "client");
  const v1 = await cluster.addPod(nodeB, "v1");
  const v2 = await cluster.addPod(nodeB, "v2");
  const wp = await cluster.addPod(nodeB, "waypoint");
  for (const p of [client, v1, v2]) await installRedirect(p.netnsPath);
  await using _h1 = await AppProcess.start(v1, "http_echo.ts", ["v1", "8080"]);
  await using _h2 = await AppProcess.start(v2, "http_echo.ts", ["v2", "8080"]);
  await using _g1 = await AppProcess.start(v1, "grpc_echo.ts", ["v1", "9090"]);
  await using _g2 = await AppProcess.start(v2, "grpc_echo.ts", ["v2", "9090"]);
  await using _t1 = echoApp(v1, 7000);
  await using _t2 = echoApp(v2, 7000);

  await using control = await ControlProcess.start({
    "shop.yaml": `apiVersion: v1
kind: Namespace
metadata: { name: shop, labels: { istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint } }
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: { name: waypoint, namespace: shop }
spec:
  gatewayClassName: istio-waypoint
  listeners: [{ name: mesh, port: 15008, protocol: HBONE }]
---
${pod(client, "app: client")}${pod(v1, "app: echo, version: v1")}${pod(v2, "app: echo, version: v2")}${
      pod(wp, "gateway.networking.k8s.io/gateway-name: waypoint, istio.io/dataplane-mode: none", "waypoint")
    }${service("echo", ECHO, "app: echo")}${service("echo-v1", V1, "version: v1")}${
      service("echo-v2", V2, "version: v2")
    }${ROUTES}---
${DENY_ADMIN}`,
  });
  const tokenA = await control.addNode(nodeA.name);
  const tokenB = await control.addNode(nodeB.name);
  for (const [token, pods] of [[tokenA, [client]], [tokenB, [v1, v2]]] as const) {
    assert.deepEqual(await control.reportRedirected(token, "shop", pods), { accepted: pods.length });
  }
  await using zA = await ZtunnelProcess.start(nodeA.name, {
    dir: control.dir,
    control: control.url,
    tokenFile: tokenA,
  });
  await using zB = await ZtunnelProcess.start(nodeB.name, {
    dir: control.dir,
    control: control.url,
    tokenFile: tokenB,
  });
  await zA.enroll(client, "shop");
  await zB.enroll(v1, "shop");
  await zB.add(`Kubernetes//Pod/shop/${v2.name}`, v2, { name: v2.name, namespace: "shop", serviceAccount: v2.name });
  for (const z of [zA, zB]) await z.waitForLog((l) => String(l.msg).startsWith("ready"));
  const base = freePortBase(3);
  await using waypoint = await startWaypoint({
    namespace: "shop",
    control: control.url,
    tokenFile: tokenB,
    netnsPath: wp.netnsPath,
    base,
  });

  const curl = async (...args: string[]) => {
    const r = await runIn(client, ["curl", "-sS", "--max-time", "10", ...args]);
    assert.equal(r.code, 0, `curl ${args.join(" ")}: ${r.stderr}`);
    return r.stdout;
  };

  await t.step(
    "VIP traffic from a captured client goes through the waypoint; the destination sees its identity",
    async () => {
      assert.equal(await curl(`http://${ECHO}/hello`), "v1 GET /hello\n");
      const outbound = await zA.waitForLog((l) => l.msg === "connection complete" && l.direction === "outbound");
      assert.equal(outbound["dst.hbone_addr"], `${ECHO}:80`);
      assert.equal(outbound["dst.addr"], `${wp.address}:15008`);
      const access = await waypoint.waitForLog((l) => l.msg === "request complete" && l.path === "/hello");
      assert.equal(access["src.identity"], "spiffe://cluster.local/ns/shop/sa/client");
      assert.equal(access.response_code, 200);
      // The waypoint keeps its connection to v1 for the next requests: the destination's metrics show it open.
      const metrics = await (await fetch(`http://127.0.0.1:${zB.ports.metrics}/metrics`)).text();
      const opened = metrics.split("\n").find((l) =>
        l.startsWith("istio_tcp_connections_opened_total{") && l.includes('reporter="destination"')
      );
      assert.ok(opened, metrics.slice(0, 2000));
      assert.match(opened, new RegExp(`source_principal="${WAYPOINT_ID}"`));
      assert.match(opened, /destination_principal="spiffe:\/\/cluster.local\/ns\/shop\/sa\/v1"/);
    },
  );

  await t.step("an HTTPRoute 90/10 split holds within ±3 points over 1,000 requests", async () => {
    const out = await curl(`http://${ECHO}/split?[1-1000]`);
    const lines = out.trim().split("\n");
    assert.equal(lines.length, 1000);
    const toV2 = lines.filter((l) => l.startsWith("v2 ")).length;
    const toV1 = lines.filter((l) => l.startsWith("v1 ")).length;
    assert.equal(toV1 + toV2, 1000);
    assert.ok(Math.abs(toV2 / 10 - 10) <= 3, `v2 got ${toV2 / 10}% of the requests`);
  });

  await t.step("path and header matches pick their rules; header modifiers apply", async () => {
    assert.equal(await curl(`http://${ECHO}/v2`), "v2 GET /v2\n");
    assert.equal(await curl(`http://${ECHO}/v2/deeper`), "v1 GET /v2/deeper\n", "Exact does not match a longer path");
    const head = await curl("-i", "-H", "x-version: v2", `http://${ECHO}/any`);
    assert.match(head, /^x-route: by-header\r$/m);
    assert.match(head, /\r\n\r\nv2 GET \/any\n$/);
    const seen = JSON.parse(await curl(`http://${ECHO}/headers`));
    assert.equal(seen.name, "v1");
    assert.equal(seen.headers["x-added"], "by-waypoint");
    assert.ok(seen.headers["x-request-id"], "the waypoint adds x-request-id");
    // Only WebSocket is upgraded: an h2c upgrade would carry requests past the L7 policy once switched.
    const h2c = JSON.parse(await curl("-H", "connection: upgrade", "-H", "upgrade: h2c", `http://${ECHO}/headers`));
    assert.equal(h2c.headers.upgrade, undefined);
  });

  await t.step("a forged x-forwarded-client-cert is replaced by the identities the waypoint verified", async () => {
    const forged = "By=spiffe://cluster.local/ns/shop/sa/echo-v1;URI=spiffe://cluster.local/ns/shop/sa/admin";
    const seen = JSON.parse(await curl("-H", `x-forwarded-client-cert: ${forged}`, `http://${ECHO}/headers`));
    assert.equal(
      seen.headers["x-forwarded-client-cert"],
      `By=${WAYPOINT_ID};URI=spiffe://cluster.local/ns/shop/sa/client`,
    );
  });

  await t.step("an L7 DENY on method and path holds against //admin, /admin%2F and /admin#x", async () => {
    const r = await runApp(client, "raw_http.ts", [
      ECHO,
      "80",
      "/admin",
      "//admin",
      "/admin%2F",
      "/admin%2fsecret",
      "/admin#x",
      "/./admin",
      "/public",
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(r.stdout.trim().split("\n"), [
      ...Array(6).fill("HTTP/1.1 403 Forbidden"),
      "HTTP/1.1 200 OK",
    ]);
    assert.equal(await curl(`http://${ECHO}/admin`), "RBAC: access denied");
    assert.equal(
      await curl("-X", "POST", "-d", "x", `http://${ECHO}/admin`),
      "v1 POST /admin 1\n",
      "only GET is denied",
    );
  });

  await t.step("gRPC unary and streaming calls pass through the waypoint with their trailers", async () => {
    const r = await runApp(client, "grpc_client.ts", [ECHO, "9090"], 20_000);
    assert.equal(r.code, 0, r.stderr + JSON.stringify(waypoint.lines.slice(-30)));
    const result = JSON.parse(r.stdout);
    assert.equal(result.unary.status, "0");
    assert.match(result.unary.messages[0], /^v[12]:hello$/);
    assert.equal(result.stream.status, "0");
    assert.equal(result.stream.messages.length, 3);
    assert.match(result.stream.messages.join(","), /^(v[12]):one,\1:two,\1:three$/);
    assert.deepEqual([result.fail.status, result.fail.message], ["5", "nothing here"]);
    const grpc = await waypoint.waitForLog((l) => l.msg === "request complete" && l.path === "/echo.Echo/Stream");
    assert.equal(grpc.protocol, "HTTP/2");
  });

  await t.step("a WebSocket upgrade passes through the waypoint", async () => {
    const r = await runApp(client, "ws_client.ts", [ECHO, "80", "one", "two"], 20_000);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout), ["v1:one", "v1:two"]);
    const upgraded = await waypoint.waitForLog((l) => l.msg === "request complete" && l.path === "/ws");
    assert.equal(upgraded.response_code, 101);
  });

  await t.step("TCP that is not HTTP passes the waypoint at L4", async () => {
    // deny-admin is scoped to port 80; on 7000 no DENY rule applies. (Unscoped, its HTTP-only conditions would be
    // ignored for TCP and it would deny every connection, as Istio reads such a policy.)
    assert.match(await call(client.netnsPath, ECHO, 7000, "ping"), /^v[12]:ping$/);
    const line = await waypoint.waitForLog((l) => l.msg === "connection complete" && l["dst.service"] !== undefined);
    assert.equal(line["src.identity"], "spiffe://cluster.local/ns/shop/sa/client");
    assert.equal(line["dst.service"], "echo.shop.svc.cluster.local");
  });

  await t.step("malformed HTTP gets a 400 and never reaches a backend", async () => {
    const served = (_h1 as AppProcess).output.join("").length;
    const r = await runIn(client, [
      "bash",
      "-c",
      `exec 3<>/dev/tcp/${ECHO}/80; printf 'GET / HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: 3\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n0\\r\\n\\r\\n' >&3; head -c 12 <&3`,
    ]);
    assert.equal(r.stdout, "HTTP/1.1 400");
    assert.equal((_h1 as AppProcess).output.join("").length, served);
  });

  await t.step("the waypoint's metrics carry Istio's labels with reporter=waypoint", async () => {
    const text = await (await fetch(`http://127.0.0.1:${base + 1}/metrics`)).text();
    const lines = text.split("\n").filter((l) => l.startsWith("istio_requests_total{"));
    const denied = lines.find((l) => l.includes('response_code="403"'));
    assert.ok(denied, text.slice(0, 2000));
    assert.match(denied, /reporter="waypoint"/);
    assert.match(denied, /source_principal="spiffe:\/\/cluster.local\/ns\/shop\/sa\/client"/);
    assert.match(denied, /destination_service="echo.shop.svc.cluster.local"/);
    assert.match(text, /istio_request_duration_milliseconds_bucket\{/);
    assert.match(text, /istio_request_bytes_bucket\{/);
    assert.match(text, /istio_response_bytes_bucket\{/);
    assert.match(text, /request_protocol="grpc"/);
  });

  // The last step: the waypoint exits in it.
  await t.step("SIGTERM drains the waypoint: every request in flight completes, then it exits 0", async () => {
    const slow = `http://${ECHO}/slow/3000`;
    const N = 4;
    // HTTP/1.1 keep-alive clients (curl keeps its connection unless told to close) and one HTTP/2 client with three
    // streams on one connection (nghttp), all waiting on a slow backend.
    const h1 = Array.from(
      { length: N },
      () =>
        runIn(client, ["curl", "-sS", "--max-time", "20", "-D", "-", "-o", "/dev/null", "-w", "%{http_code}", slow]),
    );
    const h2 = runIn(client, ["nghttp", "-v", "-n", "-t", "20", `${slow}?1`, `${slow}?2`, `${slow}?3`]);
    await new Promise((r) => setTimeout(r, 1_000)); // in flight by now; the drain log line below counts them
    const from = waypoint.lines.length;
    Deno.kill(waypoint.pid, "SIGTERM");
    // New connections are refused once the drain starts (SIGTERM is handled within milliseconds; the log line
    // checked below says the drain began): no listener takes this one.
    await new Promise((r) => setTimeout(r, 300));
    const late = await runIn(client, ["curl", "-sS", "--max-time", "5", `http://${ECHO}/hello`]);
    assert.notEqual(late.code, 0, `a request after the drain began was served: ${late.stdout}`);

    const answers = await Promise.all(h1);
    const h1Outcomes = answers.map((r) => `${r.code} ${r.stdout.slice(-3)} ${/connection: close/i.test(r.stdout)}`);
    assert.deepEqual(h1Outcomes, Array(N).fill("0 200 true"), answers.map((r) => r.stderr).join("\n"));
    const nghttp = await h2;
    assert.equal(nghttp.code, 0, nghttp.stderr + nghttp.stdout.slice(-2000));
    const lines = nghttp.stdout.split("\n");
    const statuses = lines.flatMap((l) => /recv \(stream_id=\d+\) :status: (\d+)/.exec(l)?.slice(1) ?? []);
    assert.deepEqual(statuses, ["200", "200", "200"]);
    const goaways = lines.flatMap((l, i) =>
      /recv GOAWAY frame/.test(l) ? [Number(/last_stream_id=(\d+)/.exec(lines[i + 1])?.[1])] : []
    );
    assert.equal(goaways[0], 2 ** 31 - 1, `GOAWAY frames received: ${goaways}`);

    const status = await waypoint.status;
    assert.equal(status.code, 0);
    const draining = waypoint.lines.slice(from).find((l) => l.msg === "shutting down: draining");
    assert.equal(draining?.inflight, N + 3, "requests in flight when the drain began");
    assert.ok(waypoint.lines.slice(from).some((l) => l.msg === "drained: no request left in flight"));
  });
});
