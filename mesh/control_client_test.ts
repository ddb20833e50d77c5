import assert from "node:assert/strict";
import { ClientConfig } from "./control_client.ts";
import { logger } from "./log.ts";

const body = (name: string, ip: string) => ({
  uid: `Kubernetes//Pod/shop/${name}`,
  name,
  namespace: "shop",
  addresses: [ip],
});

Deno.test("ClientConfig applies snapshots and deltas; a resource that does not decode keeps its previous version", () => {
  const config = new ClientConfig(logger("test"));
  const applied = config.apply({
    type: "snapshot",
    version: 1,
    unchanged: 0,
    removed: [],
    resources: [
      { kind: "Workload", name: "Kubernetes//Pod/shop/a", version: "v1", body: body("a", "10.0.0.1") },
      {
        kind: "Service",
        name: "shop/web.shop.svc.cluster.local",
        version: "s1",
        body: {
          name: "web",
          namespace: "shop",
          hostname: "web.shop.svc.cluster.local",
          addresses: [{ address: "10.96.0.1" }],
          ports: [{ port: 80, targetPort: 8080 }],
        },
      },
    ],
  });
  assert.deepEqual(applied, { type: "snapshot", version: 1, updated: 2, removed: 0, refused: 0 });
  const delta = config.apply({
    type: "delta",
    version: 2,
    removed: [{ kind: "Service", name: "shop/web.shop.svc.cluster.local" }],
    resources: [{
      kind: "Workload",
      name: "Kubernetes//Pod/shop/a",
      version: "v2",
      body: { ...body("a", "10.0.0.1"), addresses: ["not-an-ip"] },
    }],
  });
  assert.equal(delta.refused, 1);
  assert.deepEqual(config.state.workloads.byUid("Kubernetes//Pod/shop/a")!.addresses, ["10.0.0.1"]);
  assert.equal(config.state.services.size, 0);
  assert.deepEqual(config.known(), { "Workload/Kubernetes//Pod/shop/a": "v1" }, "the refused version is not claimed");
});
