/**
 * `skiff control --kubeconfig` as a process, against a Kubernetes API server double (tests/harness/kube_api.ts;
 * there is no API server on these machines): objects from the API reach a subscribed client, and a change made
 * through the API arrives as a delta.
 */

import assert from "node:assert/strict";
import { ClientConfig, ControlConnection, runConfigClient } from "../mesh/control_client.ts";
import { logger } from "../mesh/log.ts";
import { ControlProcess } from "./harness/control.ts";
import { KubeApiDouble } from "./harness/kube_api.ts";

Deno.test({
  name: "skiff control --kubeconfig streams what a Kubernetes API server double holds, and its changes",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    await using api = await KubeApiDouble.start();
    api.put("/api/v1/namespaces", "Namespace", { metadata: { name: "shop" } });
    const pod = (version: string) => ({
      metadata: { name: "web-1", namespace: "shop", labels: { app: "web", version } },
      spec: { nodeName: "node-a", serviceAccountName: "web" },
      status: { podIP: "10.0.1.2", phase: "Running" },
    });
    api.put("/api/v1/pods", "Pod", pod("v1"));
    await using control = await ControlProcess.start({}, [`--kubeconfig=${api.kubeconfig}`]);
    const token = await control.addNode("node-a");
    const config = new ClientConfig(logger("test"));
    const controller = new AbortController();
    const versions: number[] = [];
    const run = runConfigClient({
      connection: new ControlConnection({
        url: control.url,
        tokenFile: token,
        caFile: token.replace(/token$/, "root-cert.pem"),
      }),
      config,
      log: logger("test"),
      signal: controller.signal,
      onChange: (c) => versions.push(c.version),
    });
    try {
      const revision = () => config.state.workloads.byUid("Kubernetes//Pod/shop/web-1")?.canonicalRevision;
      for (let i = 0; i < 100 && revision() !== "v1"; i++) await new Promise((r) => setTimeout(r, 50));
      assert.equal(revision(), "v1");
      api.put("/api/v1/pods", "Pod", pod("v2"));
      for (let i = 0; i < 100 && revision() !== "v2"; i++) await new Promise((r) => setTimeout(r, 50));
      assert.equal(revision(), "v2", "the change made through the API arrived");
      assert.ok(versions.length >= 2, "as a delta after the snapshot");
    } finally {
      controller.abort();
      await run;
    }
  },
});
