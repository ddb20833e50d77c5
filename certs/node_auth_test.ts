/** The node-scoped decision: a node may obtain an identity only while a workload with it runs on that node. */
import assert from "node:assert/strict";
import { SpiffeId } from "../mesh/identity.ts";
import { authorizeNodeIdentity, type NodeRegistryView } from "./node_auth.ts";

const TD = "cluster.local";

interface Placed {
  node: string;
  namespace: string;
  serviceAccount: string;
  trustDomain: string;
}

/** A registry that places each workload on its `node`, and records which nodes were asked about. */
function registry(workloads: Placed[]): NodeRegistryView & { asked: string[] } {
  const asked: string[] = [];
  return {
    asked,
    onNode(node: string) {
      asked.push(node);
      return workloads.filter((w) => w.node === node);
    },
  };
}

const cart = (over: Partial<Placed> = {}): Placed => ({
  node: "node-a",
  namespace: "shop",
  serviceAccount: "cart",
  trustDomain: TD,
  ...over,
});

const CART_ID = SpiffeId.of(TD, "shop", "cart");

Deno.test("authorizeNodeIdentity() allows only an identity a workload on the caller's node runs as", async (t) => {
  const cases: {
    name: string;
    caller: string;
    requested: SpiffeId;
    workloads: Placed[];
    allowed: boolean;
    reason?: RegExp;
  }[] = [
    {
      name: "the workload runs on the caller's node",
      caller: "node-a",
      requested: CART_ID,
      workloads: [cart()],
      allowed: true,
    },
    {
      name: "one of several workloads on the node matches",
      caller: "node-a",
      requested: CART_ID,
      workloads: [
        cart({ serviceAccount: "checkout" }),
        cart({ namespace: "billing" }),
        cart(),
        cart({ node: "node-b", namespace: "other" }),
      ],
      allowed: true,
    },
    {
      name: "the workload runs on another node",
      caller: "node-b",
      requested: CART_ID,
      workloads: [cart({ node: "node-a" })],
      allowed: false,
      reason: /node-b/,
    },
    {
      name: "same service account in another namespace",
      caller: "node-a",
      requested: CART_ID,
      workloads: [cart({ namespace: "billing" })],
      allowed: false,
      reason: /namespace shop/,
    },
    {
      name: "same namespace with another service account",
      caller: "node-a",
      requested: CART_ID,
      workloads: [cart({ serviceAccount: "checkout" })],
      allowed: false,
      reason: /service account cart/,
    },
    {
      name: "requested identity in a foreign trust domain, namespace and SA matching a local workload",
      caller: "node-a",
      requested: SpiffeId.of("evil.example", "shop", "cart"),
      workloads: [cart()],
      allowed: false,
      reason: /trust domain/,
    },
    {
      name: "requested identity in a foreign trust domain that a workload on the node claims",
      caller: "node-a",
      requested: SpiffeId.of("evil.example", "shop", "cart"),
      workloads: [cart({ trustDomain: "evil.example" })],
      allowed: false,
      reason: /trust domain/,
    },
    {
      name: "the only matching workload is in another trust domain",
      caller: "node-a",
      requested: CART_ID,
      workloads: [cart({ trustDomain: "other.example" })],
      allowed: false,
    },
    {
      name: "empty caller node, even with a matching workload placed on no node",
      caller: "",
      requested: CART_ID,
      workloads: [cart({ node: "" })],
      allowed: false,
      reason: /node/,
    },
    { name: "no workload on the node", caller: "node-a", requested: CART_ID, workloads: [], allowed: false },
  ];
  for (const c of cases) {
    await t.step(`${c.allowed ? "allow" : "deny"}: ${c.name}`, () => {
      const reg = registry(c.workloads);
      const decision = authorizeNodeIdentity(c.caller, c.requested, TD, reg);
      if (c.allowed) {
        assert.deepEqual(decision, { allowed: true });
        assert.deepEqual(reg.asked, [c.caller], "the registry is asked about the caller's node only");
        return;
      }
      assert.equal(decision.allowed, false);
      assert.ok(!decision.allowed && typeof decision.reason === "string" && decision.reason.length > 0, "a reason");
      if (c.reason && !decision.allowed) assert.match(decision.reason, c.reason);
    });
  }
});
