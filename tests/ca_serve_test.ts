/**
 * `skiff ca serve`: the CA service apart from the control plane, as processes on loopback. It takes the registry
 * from the control plane's config stream and checks callers' tokens with the control plane's token review.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { requestCertificate } from "../certs/ca_client.ts";
import { ControlConnection, ControlError } from "../mesh/control_client.ts";
import { SpiffeId } from "../mesh/identity.ts";
import { ControlProcess } from "./harness/control.ts";
import { SkiffProcess } from "./harness/process.ts";

Deno.test("skiff ca serve issues for a node only the identities on it, with the control plane's registry and tokens", async (t) => {
  await using control = await ControlProcess.start({
    "shop.yaml": `apiVersion: v1
kind: Pod
metadata: { name: web-1, namespace: shop }
spec: { nodeName: node-a, serviceAccountName: web }
status: { podIP: 10.0.1.2 }
`,
  });
  const nodeToken = await control.addNode("node-a");
  const caToken = await control.addNode("ca-host");
  const port = control.port + 2;
  await using ca = new SkiffProcess("ca serve", [
    "ca",
    "serve",
    `--dir=${join(control.dataDir, "ca")}`,
    `--control=${control.url}`,
    `--token-file=${caToken}`,
    "--listen=127.0.0.1",
    `--port=${port}`,
  ]);
  await ca.waitForLog((l) => String(l.msg).startsWith("listener established: CA"), 20_000);
  await ca.waitForLog((l) => l.msg === "config synced from the control plane", 20_000);
  const asNode = (token: string) =>
    new ControlConnection({
      url: `https://127.0.0.1:${port}`,
      tokenFile: token,
      caFile: join(control.dir, "nodes", "node-a", "root-cert.pem"),
    });

  await t.step("an identity that runs on the caller's node is issued", async () => {
    const conn = asNode(nodeToken);
    try {
      const cert = await requestCertificate(conn, SpiffeId.parse("spiffe://cluster.local/ns/shop/sa/web"), 3_600_000);
      assert.equal(cert.identity.toString(), "spiffe://cluster.local/ns/shop/sa/web");
      assert.ok(cert.notAfter - cert.notBefore <= 3_600_000 + 120_000);
    } finally {
      conn.close();
    }
    const line = await ca.waitForLog((l) => l.msg === "certificate issued");
    assert.equal(line.node, "node-a");
  });

  await t.step("one that does not is refused opaquely, and the log says why", async () => {
    const conn = asNode(nodeToken);
    const err = await requestCertificate(conn, SpiffeId.parse("spiffe://cluster.local/ns/shop/sa/db"), 3_600_000)
      .then(() => undefined, (e) => e);
    conn.close();
    assert.ok(err instanceof ControlError && err.status === 403, String(err));
    const line = await ca.waitForLog((l) => l.msg === "certificate refused");
    assert.match(String(line.reason), /no workload with namespace shop and service account db runs on node node-a/);
  });

  await t.step("a token the control plane does not know is refused with a 401 that says why", async () => {
    const bad = join(control.dir, "bad-token");
    await Deno.writeTextFile(bad, "nope");
    const conn = asNode(bad);
    const err = await requestCertificate(conn, SpiffeId.parse("spiffe://cluster.local/ns/shop/sa/web"), 3_600_000)
      .then(() => undefined, (e) => e);
    conn.close();
    assert.ok(err instanceof ControlError && err.status === 401, String(err));
    assert.match(err.message, /the node token is not valid for this control plane/);
  });
});
