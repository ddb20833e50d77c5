import assert from "node:assert/strict";
import type { NodePod, NodePodsView } from "../mesh/protocol/node_pods.ts";
import { nodePodsView, NodeViews } from "./node_views.ts";

const pod = (name: string, enrolled = true): NodePod => ({
  namespace: "shop",
  name,
  serviceAccount: "default",
  enrolled,
  reason: enrolled ? "namespace label istio.io/dataplane-mode=ambient" : "pod label istio.io/dataplane-mode=none",
});

Deno.test("nodePodsView() versions a view by its content: equal content, equal version", () => {
  const a = nodePodsView("node-a", [pod("web")], ["shop"]);
  assert.match(a.version, /^[0-9a-f]{32}$/);
  assert.equal(nodePodsView("node-a", [pod("web")], ["shop"]).version, a.version);
  for (
    const other of [
      nodePodsView("node-b", [pod("web")], ["shop"]),
      nodePodsView("node-a", [pod("web", false)], ["shop"]),
      nodePodsView("node-a", [pod("web")], []),
      nodePodsView("node-a", [], ["shop"]),
    ]
  ) {
    assert.notEqual(other.version, a.version);
  }
});

Deno.test("NodeViews tells a node's subscribers when its view changes, and only then", async (t) => {
  const views = new NodeViews();
  const seen: Record<string, NodePodsView[]> = { "node-a": [], "node-b": [], "node-c": [] };
  const stops = Object.keys(seen).map((node) => views.subscribe(node, (v) => seen[node].push(v)));
  const counts = () => Object.values(seen).map((list) => list.length);
  await t.step("a node with no pods has an empty view with a version", () => {
    assert.deepEqual(views.view("node-a"), nodePodsView("node-a", [], []));
  });
  await t.step("a build reaches the nodes whose pods it names", () => {
    const changed = views.update({ nodePods: new Map([["node-a", [pod("web")]]]), ambientNamespaces: [] });
    assert.deepEqual(changed, ["node-a"]);
    assert.deepEqual(counts(), [1, 0, 0]);
    assert.deepEqual(seen["node-a"][0], views.view("node-a"));
    assert.deepEqual(seen["node-a"][0].pods, [pod("web")]);
  });
  await t.step("the same build again sends nothing", () => {
    assert.deepEqual(views.update({ nodePods: new Map([["node-a", [pod("web")]]]), ambientNamespaces: [] }), []);
    assert.deepEqual(counts(), [1, 0, 0]);
  });
  await t.step("a new ambient namespace reaches every subscribed node, pods or not", () => {
    views.update({ nodePods: new Map([["node-a", [pod("web")]]]), ambientNamespaces: ["shop"] });
    assert.deepEqual(counts(), [2, 1, 1]);
    assert.deepEqual(seen["node-b"][0], nodePodsView("node-b", [], ["shop"]));
  });
  await t.step("a node that loses its last pod is sent its empty view; an unsubscribed one nothing", () => {
    stops[1]();
    assert.equal(views.subscribers, 2);
    views.update({ nodePods: new Map([["node-c", [pod("db")]]]), ambientNamespaces: ["shop"] });
    assert.deepEqual(counts(), [3, 1, 2]);
    assert.deepEqual(seen["node-a"][2].pods, []);
    assert.deepEqual(seen["node-c"][1].pods, [pod("db")]);
  });
  for (const stop of stops) stop();
  assert.equal(views.subscribers, 0);
});

Deno.test("NodeViews serializes no pod of a build that hands back the same pods", () => {
  let serialized = 0;
  const counted = (name: string): NodePod => ({
    ...pod(name),
    toJSON() {
      serialized++;
      return pod(name);
    },
  } as NodePod);
  const pods = [counted("web"), counted("db")];
  const views = new NodeViews();
  views.update({ nodePods: new Map([["node-a", pods]]), ambientNamespaces: ["shop"] });
  const first = views.view("node-a");
  serialized = 0;
  assert.deepEqual(views.update({ nodePods: new Map([["node-a", [...pods]]]), ambientNamespaces: ["shop"] }), []);
  assert.equal(serialized, 0);
  assert.equal(views.view("node-a"), first);
  // Equal pods that are new objects (a rebuilt namespace) are compared, and the view and its version stay.
  assert.deepEqual(
    views.update({ nodePods: new Map([["node-a", [pod("web"), pod("db")]]]), ambientNamespaces: ["shop"] }),
    [],
  );
  assert.equal(views.view("node-a").version, first.version);
});
