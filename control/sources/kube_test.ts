import assert from "node:assert/strict";
import { logger } from "../../mesh/log.ts";
import { KubeApiDouble } from "../../tests/harness/kube_api.ts";
import { DEFAULT_SETTINGS } from "../build/common.ts";
import { buildMesh } from "../build/mod.ts";
import type { NodeSpec } from "../build/nodes.ts";
import type { PodSpec } from "../build/workloads.ts";
import { KubeSource } from "./kube.ts";

const POLICY = "/apis/security.istio.io/v1/authorizationpolicies";

/** Waits until `test` holds, polling. */
async function until(test: () => boolean, what: string) {
  for (let i = 0; i < 100 && !test(); i++) await new Promise((r) => setTimeout(r, 50));
  assert.ok(test(), what);
}

Deno.test({
  name: "KubeSource reads and watches the kinds Skiff uses, from a Kubernetes API server double",
  // The client library leaves timers behind when its watches end (deno-platform.md).
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async (t) => {
    await using api = await KubeApiDouble.start();
    api.put("/api/v1/namespaces", "Namespace", {
      metadata: { name: "shop", labels: { "istio.io/dataplane-mode": "ambient" } },
    });
    api.put("/api/v1/pods", "Pod", {
      metadata: { name: "web-1", namespace: "shop", labels: { app: "web" } },
      spec: { nodeName: "node-a", serviceAccountName: "web", containers: [{ name: "app", image: "x" }] },
      status: { podIP: "10.0.1.2", phase: "Running" },
    });
    api.put("/api/v1/nodes", "Node", {
      metadata: { name: "node-a", labels: { "kubernetes.io/hostname": "node-a" } },
      spec: { podCIDR: "10.0.1.0/24", podCIDRs: ["10.0.1.0/24"], providerID: "kind://docker/kind/node-a" },
      status: { addresses: [{ type: "InternalIP", address: "172.18.0.2" }] },
    });
    api.put(POLICY, "AuthorizationPolicy", {
      metadata: { name: "allow-web", namespace: "shop" },
      spec: { rules: [{ from: [{ source: { principals: ["cluster.local/ns/shop/sa/web"] } }] }] },
    });
    const changes: string[] = [];
    const source = new KubeSource(logger("test"), (why) => changes.push(why));
    try {
      await source.start(api.kubeconfig);
      await t.step("the initial lists fill the source; list items get their kind from the collection", () => {
        assert.deepEqual([...source.objects().keys()].sort(), [
          "AuthorizationPolicy/shop/allow-web",
          "Namespace//shop",
          "Node//node-a",
          "Pod/shop/web-1",
        ]);
        const node = source.objects().get("Node//node-a")!;
        assert.deepEqual((node.spec as NodeSpec).podCidrs, [{ address: "10.0.1.0", length: 24 }], "its pod range");
        const pod = source.objects().get("Pod/shop/web-1")!;
        assert.deepEqual((pod.spec as PodSpec).ips, ["10.0.1.2"]);
        const model = buildMesh({
          objects: source.objects().values(),
          registrations: [],
          vips: new Map(),
          settings: DEFAULT_SETTINGS,
        });
        assert.deepEqual(model.workloads.map((w) => [w.uid, w.serviceAccount]), [[
          "Kubernetes//Pod/shop/web-1",
          "web",
        ]]);
        assert.ok(
          api.requests.some((r) => r.startsWith("GET /api/v1/pods?") && r.includes("watch=true")),
          "pods are watched",
        );
      });
      await t.step("a watched change updates the object and asks for a build", async () => {
        api.put("/api/v1/pods", "Pod", {
          metadata: { name: "web-1", namespace: "shop", labels: { app: "web", version: "v2" } },
          spec: { nodeName: "node-a", serviceAccountName: "web" },
          status: { podIP: "10.0.1.2", phase: "Running" },
        });
        await until(() => source.objects().get("Pod/shop/web-1")!.labels.version === "v2", "the update arrived");
        assert.ok(changes.includes("kubernetes: Pod/shop/web-1"));
      });
      await t.step("a pod's Ready condition from the API decides its status; none yet is not ready", async () => {
        const status = () => {
          const objects = source.objects().values();
          const model = buildMesh({ objects, registrations: [], vips: new Map(), settings: DEFAULT_SETTINGS });
          return model.workloads[0]?.status;
        };
        assert.equal(status(), "UNHEALTHY", "Running without a Ready condition: the kubelet has not said");
        const put = (ready: string, metadata: Record<string, unknown> = {}) =>
          api.put("/api/v1/pods", "Pod", {
            metadata: { name: "web-1", namespace: "shop", labels: { app: "web", version: "v2" }, ...metadata },
            spec: { nodeName: "node-a", serviceAccountName: "web" },
            status: { podIP: "10.0.1.2", phase: "Running", conditions: [{ type: "Ready", status: ready }] },
          });
        put("True");
        await until(() => status() === "HEALTHY", "Ready True makes it HEALTHY");
        put("True", { deletionTimestamp: "2026-12-03T17:00:00Z" });
        await until(() => status() === "UNHEALTHY", "a pod being deleted is UNHEALTHY, even Ready");
        put("True");
        await until(() => status() === "HEALTHY", "Ready again");
        put("False");
        await until(() => status() === "UNHEALTHY", "Ready False makes it UNHEALTHY");
      });
      await t.step("a bad object is reported by kind and field; its last good version stays", async () => {
        api.put(POLICY, "AuthorizationPolicy", {
          metadata: { name: "allow-web", namespace: "shop" },
          spec: { rules: [{ from: [{ source: { principal: ["typo"] } }] }] },
        });
        await until(() => source.problems().length === 1, "the problem is reported");
        assert.deepEqual(source.problems()[0], {
          file: "kubernetes:AuthorizationPolicy/shop/allow-web",
          line: 0,
          field: "spec.rules[0].from[0].source.principal",
          message: "is not a known field",
          key: "AuthorizationPolicy/shop/allow-web",
        });
        assert.ok(source.objects().has("AuthorizationPolicy/shop/allow-web"));
      });
      await t.step("a deletion removes the object (and its problem)", async () => {
        api.delete(POLICY, "shop", "allow-web");
        await until(() => !source.objects().has("AuthorizationPolicy/shop/allow-web"), "the deletion arrived");
        assert.deepEqual(source.problems(), []);
      });
    } finally {
      await source.stop();
    }
  },
});

Deno.test({
  name: "KubeSource with a token the API server double refuses logs it, holds nothing, and stops cleanly",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    await using api = await KubeApiDouble.start();
    const wrong = api.kubeconfig + ".wrong";
    await Deno.writeTextFile(wrong, (await Deno.readTextFile(api.kubeconfig)).replace(api.token, "stolen"));
    const source = new KubeSource(logger("test"), () => {});
    try {
      await source.start(wrong);
      assert.equal(source.objects().size, 0);
      assert.ok(api.requests.length > 0, "it did ask");
    } finally {
      await source.stop();
    }
  },
});
