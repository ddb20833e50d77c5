/**
 * Policies fail closed, end to end in network namespaces: a real `skiff control` process reading manifests and
 * two real ztunnel processes, the test playing the node agents (as tests/control_test.ts).
 *
 * - An AuthorizationPolicy DENY holding only HTTP fields, which ztunnel cannot see, denies every connection its
 *   L4 fields cover (istiod's conversion leaves a match that never matches, and so drops the DENY).
 * - A policy the destination's ztunnel cannot decode denies all in its scope until a version that decodes
 *   arrives. The server's ztunnel takes its config through {@link StreamRelay}, which stands in for a control
 *   plane newer than the proxy: it forwards every request to the real one and, in the config stream, gives the
 *   Authorization bodies it is told to a field this proxy does not know (upstream's `extensions`).
 * - A policy with IP ranges is not such a policy: it decodes, and is enforced as written.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { CertificateAuthority } from "../certs/ca.ts";
import { certificatesToPem } from "../certs/x509.ts";
import { installRedirect } from "../cni/redirect_linux.ts";
import { CA_SUBDIR } from "../control/mod.ts";
import { loadSocketSupport } from "../dataplane/sockets_linux.ts";
import { STREAM_PATH } from "../mesh/protocol/config_stream.ts";
import { ControlProcess } from "./harness/control.ts";
import { IS_ROOT, NetnsCluster, netnsTest, type Pod } from "./harness/netns.ts";
import { call as callIn, dialFrom, roundTrip } from "./harness/tcp.ts";
import { echoApp, ZtunnelProcess } from "./harness/ztunnel.ts";

if (IS_ROOT) loadSocketSupport();

const VIP = "10.96.15.15";
const CLIENT = "cluster.local/ns/shop/sa/client";

/**
 * A control plane newer than the proxy, played by a relay in front of the real one: same CA, every request
 * forwarded with its token; in the config stream, each Authorization named in {@link garble} gets a field
 * the proxy does not know.
 */
class StreamRelay implements AsyncDisposable {
  /** Keys (`namespace/name`) of the Authorization resources to make undecodable. */
  readonly garble = new Set<string>();
  readonly #server: Deno.HttpServer<Deno.NetAddr>;
  readonly #client: Deno.HttpClient;
  readonly #streams = new Set<ReadableStreamDefaultReader<string>>();

  private constructor(control: ControlProcess, tls: { cert: string; key: string }, root: string) {
    this.#client = Deno.createHttpClient({ caCerts: [root] });
    this.#server = Deno.serve(
      { hostname: "127.0.0.1", port: 0, ...tls, onListen: () => {} },
      (req) => this.#forward(control, req),
    );
  }

  static async start(control: ControlProcess): Promise<StreamRelay> {
    const ca = await CertificateAuthority.load(join(control.dataDir, CA_SUBDIR));
    const serving = await ca.issueServing(["127.0.0.1"]);
    return new StreamRelay(
      control,
      { cert: certificatesToPem(serving.chain), key: serving.keyPem },
      certificatesToPem(ca.roots),
    );
  }

  get url(): string {
    return `https://127.0.0.1:${this.#server.addr.port}`;
  }

  async #forward(control: ControlProcess, req: Request): Promise<Response> {
    const path = new URL(req.url).pathname;
    const upstream = await fetch(new URL(path, control.url), {
      method: req.method,
      headers: { authorization: req.headers.get("authorization") ?? "", "content-type": "application/json" },
      body: await req.arrayBuffer(),
      client: this.#client,
    });
    if (path !== STREAM_PATH || !upstream.ok) return upstream;
    const reader = upstream.body!.pipeThrough(new TextDecoderStream()).getReader();
    const streams = this.#streams;
    const garble = this.garble;
    let buffer = "";
    const body = new ReadableStream<Uint8Array>({
      async pull(c) {
        const { done, value } = await reader.read().catch(() => ({ done: true, value: undefined }));
        if (done) return c.close();
        buffer += value;
        let nl: number;
        while ((nl = buffer.indexOf("\n")) >= 0) {
          const message = JSON.parse(buffer.slice(0, nl));
          buffer = buffer.slice(nl + 1);
          for (const r of message.resources ?? []) {
            if (r.kind === "Authorization" && garble.has(r.name)) r.body.extensions = [{ name: "from-the-future" }];
          }
          c.enqueue(new TextEncoder().encode(`${JSON.stringify(message)}\n`));
        }
      },
      cancel: () => reader.cancel(),
    });
    streams.add(reader);
    return new Response(body, { headers: { "content-type": "application/x-ndjson" } });
  }

  async [Symbol.asyncDispose]() {
    for (const s of this.#streams) await s.cancel().catch(() => {});
    await this.#server.shutdown();
    this.#client.close();
  }
}

const pod = (p: Pod) =>
  `apiVersion: v1
kind: Pod
metadata: { name: ${p.name}, namespace: shop, labels: { app: ${p.name} } }
spec: { nodeName: ${p.node.name}, serviceAccountName: ${p.name} }
status: { podIP: ${p.address}, phase: Running }
---
`;

const policy = (name: string, spec: string) =>
  `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: ${name}, namespace: shop }
spec:
  selector: { matchLabels: { app: server } }
${spec}
`;

/** Polls `fn` until its answer passes `ok`, or throws after `timeoutMs` with the last answer. */
async function until(fn: () => Promise<string>, ok: (answer: string) => boolean, timeoutMs = 5_000): Promise<void> {
  const started = Date.now();
  let last = "";
  while (Date.now() - started < timeoutMs) {
    last = await fn();
    if (ok(last)) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`still ${JSON.stringify(last)} after ${timeoutMs} ms`);
}

/** A metric's value in a Prometheus text exposition, or undefined. */
async function metric(port: number, series: string): Promise<number | undefined> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

netnsTest("policies fail closed: HTTP-only DENY rules and policies a ztunnel cannot decode deny", async (t) => {
  await using cluster = await NetnsCluster.create("failclosed", { nodes: 2 });
  const [nodeA, nodeB] = cluster.nodes;
  const client = await cluster.addPod(nodeA, "client");
  const server = await cluster.addPod(nodeB, "server");
  for (const p of [client, server]) await installRedirect(p.netnsPath);
  await using _app = echoApp(server, 8080);

  await using control = await ControlProcess.start({
    "shop.yaml": `apiVersion: v1
kind: Namespace
metadata: { name: shop, labels: { istio.io/dataplane-mode: ambient } }
---
${pod(client)}${pod(server)}apiVersion: v1
kind: Service
metadata: { name: echo, namespace: shop }
spec: { clusterIP: ${VIP}, selector: { app: server }, ports: [{ port: 80, targetPort: 8080 }] }
`,
  });
  await using relay = await StreamRelay.start(control);
  const tokenA = await control.addNode(nodeA.name);
  const tokenB = await control.addNode(nodeB.name);
  for (const [token, p] of [[tokenA, client], [tokenB, server]] as const) {
    assert.deepEqual(await control.reportRedirected(token, "shop", [p]), { accepted: 1 });
  }
  await using zA = await ZtunnelProcess.start(nodeA.name, {
    dir: control.dir,
    control: control.url,
    tokenFile: tokenA,
  });
  await using zB = await ZtunnelProcess.start(nodeB.name, { dir: control.dir, control: relay.url, tokenFile: tokenB });
  await zA.enroll(client, "shop");
  await zB.enroll(server, "shop");
  for (const z of [zA, zB]) await z.waitForLog((l) => String(l.msg).startsWith("ready"));
  const call = (message: string) => callIn(client.netnsPath, VIP, 80, message);
  const passes = (a: string) => a.startsWith("server:");
  const refused = (a: string) => !passes(a);
  assert.equal(await call("hi"), "server:hi");

  await t.step("a DENY of GET only, which ztunnel cannot see, denies every connection", async () => {
    await control.writeManifest(
      "p.yaml",
      policy("no-get", "  action: DENY\n  rules: [{ to: [{ operation: { methods: [GET] } }] }]"),
    );
    await until(() => call("get?"), refused);
    await zB.waitForLog((l) =>
      l.msg === "connection complete" && /denied by policy shop\/no-get/.test(String(l.error))
    );
  });

  await t.step("with principals beside it, it denies exactly those principals", async () => {
    await control.writeManifest(
      "p.yaml",
      policy(
        "no-get",
        `  action: DENY
  rules: [{ from: [{ source: { principals: [cluster.local/ns/shop/sa/other] } }], to: [{ operation: { methods: [GET] } }] }]`,
      ),
    );
    await until(() => call("other"), passes);
    await control.writeManifest(
      "p.yaml",
      policy(
        "no-get",
        `  action: DENY
  rules: [{ from: [{ source: { principals: [${CLIENT}], requestPrincipals: ["*"] } }], to: [{ operation: { paths: [/admin] } }] }]`,
      ),
    );
    await until(() => call("client"), refused);
    await control.writeManifest("p.yaml", "# no policy\n");
    await until(() => call("none"), passes);
  });

  await t.step("a DENY the server's ztunnel cannot decode denies all its scope, open connections too", async () => {
    const held = await dialFrom(client.netnsPath, VIP, 80);
    try {
      assert.equal(await roundTrip(held, "held"), "server:held");
      relay.garble.add("shop/deny-client");
      const from = zB.lines.length;
      await control.writeManifest(
        "p.yaml",
        policy("deny-client", `  action: DENY\n  rules: [{ from: [{ source: { principals: [${CLIENT}] } }] }]`),
      );
      await until(() => call("refused-deny"), refused);
      const line = await zB.waitForLog((l) => String(l.msg).startsWith("policy refused"));
      assert.equal(line.resource, "Authorization/shop/deny-client");
      assert.match(String(line.error), /extensions: is not a known field/);
      assert.equal(line.denies, "the workloads the policy selects");
      assert.ok(zB.lines.slice(from).every((l) => l.msg !== "resource refused; its previous version stays"));
      await zB.waitForLog((l) => l.msg === "connection complete" && /could not be decoded/.test(String(l.error)));
      assert.notEqual(await roundTrip(held, "still?"), "server:still?", "the open connection was closed");
      assert.equal(await metric(zB.ports.metrics, 'skiff_policies_failing_closed{kind="Authorization"}'), 1);
      assert.equal(await metric(zB.ports.metrics, 'skiff_config_refused_total{kind="Authorization"}'), 1);
    } finally {
      held.close();
    }
  });

  await t.step("a version that decodes ends it", async () => {
    relay.garble.delete("shop/deny-client");
    await control.writeManifest(
      "p.yaml",
      policy(
        "deny-client",
        "  action: DENY\n  rules: [{ from: [{ source: { principals: [cluster.local/ns/shop/sa/other] } }] }]",
      ),
    );
    await until(() => call("decoded"), passes);
    assert.equal(await metric(zB.ports.metrics, 'skiff_policies_failing_closed{kind="Authorization"}'), 0);
  });

  await t.step("a sole ALLOW it cannot decode does not become allow-all; its removal ends it", async () => {
    relay.garble.add("shop/allow-other");
    await control.writeManifest(
      "p.yaml",
      policy("allow-other", "  rules: [{ from: [{ source: { principals: [cluster.local/ns/shop/sa/other] } }] }]"),
    );
    await until(() => call("refused-allow"), refused);
    await zB.waitForLog((l) => l.resource === "Authorization/shop/allow-other");
    await control.writeManifest("p.yaml", "# no policy\n");
    await until(() => call("gone"), passes);
  });

  await t.step("a policy with IP ranges decodes and is enforced as written, not refused", async () => {
    // The stream once carried ranges as objects, which every proxy refused: now that a refusal fails closed,
    // an ALLOW of every address would have denied all.
    const from = zB.lines.length;
    await control.writeManifest(
      "p.yaml",
      policy("by-ip", "  rules: [{ from: [{ source: { ipBlocks: [192.0.2.0/24] } }] }]"),
    );
    await until(() => call("elsewhere"), refused);
    await control.writeManifest(
      "p.yaml",
      policy("by-ip", "  rules: [{ from: [{ source: { ipBlocks: [0.0.0.0/0] } }] }]"),
    );
    await until(() => call("anywhere"), passes);
    assert.deepEqual(zB.lines.slice(from).filter((l) => l.resource === "Authorization/shop/by-ip"), []);
    await control.writeManifest("p.yaml", "# no policy\n");
  });
});
