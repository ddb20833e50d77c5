import assert from "node:assert/strict";
import { namespacesWithPrefix, NetnsCluster, netnsTest } from "./harness/netns.ts";
import { exchange } from "./harness/tcp.ts";

netnsTest("a pod reaches a pod on another node through the nodes' routes", async () => {
  await using cluster = await NetnsCluster.create("cross-node", { nodes: 2 });
  const a = await cluster.addPod(cluster.nodes[0], "client");
  const b = await cluster.addPod(cluster.nodes[1], "server");
  assert.notEqual(a.node.podCidr, b.node.podCidr);
  const { received, peer } = await exchange(a, b, 8080, "hello across nodes");
  assert.equal(received, "hello across nodes");
  // Routed, not NATed: the server sees the client pod's own address.
  assert.equal(peer.hostname, a.address);
});

netnsTest("a pod reaches a pod on the same node", async () => {
  await using cluster = await NetnsCluster.create("same-node");
  const node = cluster.nodes[0];
  const a = await cluster.addPod(node);
  const b = await cluster.addPod(node);
  const { received, peer } = await exchange(a, b, 9090, "hello neighbour");
  assert.equal(received, "hello neighbour");
  assert.equal(peer.hostname, a.address);
});

netnsTest("a node added later is routed to and from the existing nodes", async () => {
  await using cluster = await NetnsCluster.create("late-node", { nodes: 1 });
  const a = await cluster.addPod(cluster.nodes[0]);
  const late = await cluster.addNode();
  const b = await cluster.addPod(late);
  assert.equal((await exchange(b, a, 7070, "from the new node")).received, "from the new node");
  assert.equal((await exchange(a, b, 7071, "to the new node")).received, "to the new node");
});

netnsTest("the fixture removes every namespace it made, even when the test body throws", async () => {
  let prefix = "";
  await assert.rejects(async () => {
    await using cluster = await NetnsCluster.create("cleanup", { nodes: 2 });
    prefix = cluster.prefix;
    await cluster.addPod(cluster.nodes[0]);
    await cluster.addPod(cluster.nodes[1]);
    assert.equal((await namespacesWithPrefix(prefix)).length, 5);
    throw new Error("the test failed");
  }, /the test failed/);
  assert.deepEqual(await namespacesWithPrefix(prefix), []);
});

netnsTest("pods are isolated from the host: the fabric has no link to the host namespace", async () => {
  await using cluster = await NetnsCluster.create("isolated", { nodes: 1 });
  const pod = await cluster.addPod(cluster.nodes[0]);
  // The pod's only route out is its node, and the node's only uplink is the fabric bridge.
  const routes = (await cluster.exec(pod.netns, ["ip", "-j", "route"])).stdout;
  assert.deepEqual(JSON.parse(routes).map((r: { dst: string }) => r.dst).sort(), ["10.0.1.1", "default"]);
  const fabricLinks = JSON.parse((await cluster.exec(cluster.fabric, ["ip", "-j", "link"])).stdout) as {
    ifname: string;
  }[];
  assert.deepEqual(fabricLinks.map((l) => l.ifname).sort(), ["br0", "lo", "n1"]);
});
