import assert from "node:assert/strict";
import { join } from "node:path";
import { logger } from "../mesh/log.ts";
import { decodeCidr } from "../mesh/net.ts";
import type { NodePodsView } from "../mesh/protocol/node_pods.ts";
import { DEFAULT_SETTINGS } from "./build/common.ts";
import { ControlPlane } from "./plane.ts";
import { ControlStore } from "./store.ts";

const POD = `apiVersion: v1
kind: Pod
metadata: { name: web-1, namespace: shop }
spec: { nodeName: node-a }
status: { podIP: 10.0.1.2 }
---
apiVersion: v1
kind: Service
metadata: { name: web, namespace: shop }
spec: { selector: { app: web }, ports: [{ port: 80 }] }
`;

async function withPlane(fn: (dir: string, open: () => ControlPlane, store: () => ControlStore) => Promise<void>) {
  const dir = await Deno.makeTempDir({ prefix: "skiff-plane-" });
  const manifests = join(dir, "manifests");
  await Deno.mkdir(manifests);
  const stores: ControlStore[] = [];
  const open = () => {
    const store = ControlStore.open(join(dir, "data"));
    stores.push(store);
    return new ControlPlane({
      store,
      settings: DEFAULT_SETTINGS,
      serviceRange: decodeCidr("10.96.0.0/24", "range"),
      log: logger("test"),
      manifestDir: manifests,
    });
  };
  try {
    await fn(manifests, open, () => stores.at(-1)!);
  } finally {
    for (const s of stores) {
      try {
        s.close();
      } catch { /* closed */ }
    }
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("ControlPlane batches a burst of changes into one build and one delta", async () => {
  await withPlane(async (manifests, open) => {
    await Deno.writeTextFile(join(manifests, "shop.yaml"), POD.replace("status: { podIP: 10.0.1.2 }\n", ""));
    const plane = open();
    await plane.start();
    const before = plane.publisher.version;
    for (let i = 0; i < 50; i++) {
      plane.register("node-a", [{
        namespace: "shop",
        name: "web-1",
        node: "node-a",
        ips: [`10.0.2.${i + 1}`],
        redirected: true,
      }]);
    }
    await plane.settled();
    assert.equal(plane.publisher.version, before + 1);
    assert.deepEqual(
      plane.model.workloads.map((w) => w.addresses),
      [["10.0.2.50"]],
      "the node's last report is what counts",
    );
    plane.close();
  });
});

Deno.test("ControlPlane: after a restart, an object whose file broke meanwhile keeps its last good version, and its service address", async () => {
  await withPlane(async (manifests, open) => {
    await Deno.writeTextFile(join(manifests, "shop.yaml"), POD);
    const first = open();
    await first.start();
    const vip = first.model.services[0].addresses[0].address;
    assert.equal(first.model.workloads.length, 1);
    first.close();
    await Deno.writeTextFile(join(manifests, "shop.yaml"), POD.replace("kind: Pod", "kind: [Pod"));
    const second = open();
    await second.start();
    assert.deepEqual(second.model.workloads.map((w) => w.name), ["web-1"]);
    assert.deepEqual(second.model.services[0].addresses[0].address, vip);
    assert.match(second.status().problems[0].message, /not valid YAML/);
    second.close();
    await Deno.remove(join(manifests, "shop.yaml"));
    const third = open();
    await third.start();
    assert.deepEqual(
      [third.model.workloads.length, third.model.services.length],
      [0, 0],
      "a removed file removes its objects",
    );
    third.close();
  });
});

Deno.test("ControlPlane gives each node its view, and a new one to its subscribers when a manifest changes it", async () => {
  await withPlane(async (manifests, open) => {
    const ns = `apiVersion: v1
kind: Namespace
metadata: { name: shop, labels: { istio.io/dataplane-mode: ambient } }
---
`;
    await Deno.writeTextFile(join(manifests, "shop.yaml"), ns + POD);
    const plane = open();
    await plane.start();
    const first = plane.nodeView("node-a");
    assert.deepEqual(first.pods.map((p) => [p.name, p.enrolled]), [["web-1", true]]);
    assert.deepEqual(first.ambientNamespaces, ["shop"]);
    assert.deepEqual(plane.nodeView("node-b").pods, [], "a node with no pods has an empty view");
    const seen: NodePodsView[] = [];
    const stop = plane.subscribeNode("node-a", (v) => seen.push(v));
    const other: NodePodsView[] = [];
    plane.subscribeNode("node-b", (v) => other.push(v));
    await Deno.writeTextFile(
      join(manifests, "shop.yaml"),
      ns + POD.replace("namespace: shop }", "namespace: shop, labels: { istio.io/dataplane-mode: none } }"),
    );
    await plane.reloadManifests();
    await plane.settled();
    assert.deepEqual(seen.map((v) => v.pods.map((p) => [p.name, p.enrolled, p.reason])), [
      [["web-1", false, "pod label istio.io/dataplane-mode=none"]],
    ]);
    assert.notEqual(seen[0].version, first.version);
    assert.deepEqual(other, [], "node-b's view did not change");
    stop();
    plane.close();
  });
});

Deno.test("ControlPlane: between two builds, a node cannot take an address another node's report has just taken", async () => {
  await withPlane(async (manifests, open) => {
    // No Node gives a pod range, so only the addresses held tell the nodes apart.
    const pod = (name: string, node: string) =>
      `apiVersion: v1\nkind: Pod\nmetadata: { name: ${name}, namespace: shop }\nspec: { nodeName: ${node} }\n---\n`;
    await Deno.writeTextFile(join(manifests, "shop.yaml"), pod("web-1", "node-a") + pod("api-1", "node-b"));
    const plane = open();
    await plane.start();
    const reg = (name: string, node: string) => ({
      namespace: "shop",
      name,
      node,
      ips: ["10.0.5.5"],
      redirected: true,
    });
    // api-1 sorts before web-1: a build that saw both reports would give node-b the address.
    plane.register("node-a", [reg("web-1", "node-a")]);
    assert.throws(
      () => plane.register("node-b", [reg("api-1", "node-b")]),
      /pod shop\/api-1: address 10\.0\.5\.5 is held by pod shop\/web-1, as node node-a reported it/,
    );
    await plane.settled();
    assert.deepEqual(plane.model.workloads.map((w) => [w.name, w.addresses]), [["web-1", ["10.0.5.5"]]]);
    plane.close();
  });
});
