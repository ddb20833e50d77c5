import assert from "node:assert/strict";
import { decodeAuthorization } from "../../mesh/authorization.ts";
import { SpiffeId } from "../../mesh/identity.ts";
import { MeshState } from "../../mesh/store.ts";
import { decodeWorkload } from "../../mesh/workload.ts";
import { ConnectionManager, decideAgain } from "./connection_manager.ts";

const POD = decodeWorkload({
  uid: "Kubernetes//Pod/shop/web",
  name: "web",
  namespace: "shop",
  serviceAccount: "web",
  addresses: ["10.0.1.2"],
});
const BOB = SpiffeId.parse("spiffe://cluster.local/ns/shop/sa/bob");
const ALICE = SpiffeId.parse("spiffe://cluster.local/ns/shop/sa/alice");

/**
 * Tracks a connection of `identity` to the pod POD, found as pod.ts finds it: by the uid it was handed over with,
 * else by namespace, name and service account.
 */
function track(m: ConnectionManager, state: MeshState, identity: SpiffeId, closed: string[], uid = POD.uid) {
  return m.track({
    attributes: { srcIp: "10.0.2.2", dstIp: "10.0.1.2", dstPort: 8080, identity },
    podUid: uid,
    workload: POD,
    current: () => state.workloads.byUid(uid) ?? state.workloads.byPod("shop", "web", "web"),
    close: (reason) => closed.push(`${identity.serviceAccount}: ${reason}`),
  });
}

const DENY_BOB = decodeAuthorization({
  name: "deny-bob",
  namespace: "shop",
  scope: "NAMESPACE",
  action: "DENY",
  rules: [{ clauses: [{ matches: [{ principals: [{ exact: BOB.principal }] }] }] }],
});

Deno.test("reauthorize() closes exactly the connections a new policy denies", () => {
  const state = new MeshState();
  state.workloads.upsert(POD);
  const m = new ConnectionManager();
  const closed: string[] = [];
  track(m, state, BOB, closed);
  track(m, state, ALICE, closed);
  assert.equal(m.reauthorize(state), 0, "no policy: all still allowed");
  state.policies.upsert(DENY_BOB);
  assert.equal(m.reauthorize(state), 1);
  assert.deepEqual(closed, ["bob: connection closed due to policy change: denied by policy shop/deny-bob"]);
  assert.equal(m.size, 1);
  assert.equal(m.reauthorize(state), 0, "a closed connection is not closed twice");
});

Deno.test("reauthorize() closes a connection only when its own decision becomes deny", async (t) => {
  const OTHER = decodeWorkload({
    uid: "Kubernetes//Pod/shop/other",
    name: "other",
    namespace: "shop",
    addresses: ["10.0.1.3"],
    authorizationPolicies: ["shop/deny-all-other"],
  });
  const cases: {
    name: string;
    /** The uid the pod was handed over with. */
    uid?: string;
    change: (s: MeshState) => void;
    closed: string[];
  }[] = [
    {
      // The real node agent hands pods over by Kubernetes' pod UID: the workload is found by pod, not by uid.
      name: "a change elsewhere, the pod handed over by Kubernetes' pod UID",
      uid: "3c1e2a7e-6f0d-4a53-9b1c-2f1d8e9a0b11",
      change: (s) =>
        s.workloads.upsert({
          ...OTHER,
          services: { "shop/extra.shop.svc.cluster.local": [{ servicePort: 80, targetPort: 8080 }] },
        }),
      closed: [],
    },
    {
      name: "a selector policy on another workload",
      change: (s) =>
        s.policies.upsert(decodeAuthorization({
          name: "deny-all-other",
          namespace: "shop",
          scope: "WORKLOAD_SELECTOR",
          action: "DENY",
          rules: [{ clauses: [] }],
        })),
      closed: [],
    },
    {
      name: "its workload replaced by an equal new object",
      change: (s) => s.workloads.upsert(structuredClone(POD)),
      closed: [],
    },
    {
      // Its pod is still served; the node agent's DEL ends its connections (closeWorkload), as upstream.
      name: "its workload gone from the state, nothing denies it",
      change: (s) => s.workloads.remove(POD.uid),
      closed: [],
    },
    {
      name: "its workload gone from the state, then a namespace DENY",
      change: (s) => {
        s.workloads.remove(POD.uid);
        s.policies.upsert(DENY_BOB);
      },
      closed: ["bob: connection closed due to policy change: denied by policy shop/deny-bob"],
    },
    {
      name: "a DENY, the pod handed over by Kubernetes' pod UID",
      uid: "3c1e2a7e-6f0d-4a53-9b1c-2f1d8e9a0b11",
      change: (s) => s.policies.upsert(DENY_BOB),
      closed: ["bob: connection closed due to policy change: denied by policy shop/deny-bob"],
    },
  ];
  for (const c of cases) {
    await t.step(c.name, () => {
      const state = new MeshState();
      state.workloads.upsert(POD);
      state.workloads.upsert(OTHER);
      const m = new ConnectionManager();
      const closed: string[] = [];
      track(m, state, BOB, closed, c.uid);
      track(m, state, ALICE, closed, c.uid);
      assert.equal(m.reauthorize(state), 0);
      c.change(state);
      assert.equal(m.reauthorize(state), c.closed.length);
      assert.deepEqual(closed, c.closed);
      assert.equal(m.reauthorize(state), 0, "a second pass changes nothing");
    });
  }
});

Deno.test("reauthorize() decides against the last workload seen, and forgets ended connections", () => {
  const state = new MeshState();
  state.workloads.upsert(POD);
  const m = new ConnectionManager();
  const closed: string[] = [];
  const untrack = track(m, state, BOB, closed);
  untrack();
  track(m, state, ALICE, closed);
  // The workload moves to a namespace a DENY covers, then leaves the state: the DENY still applies.
  state.workloads.upsert({ ...POD, namespace: "vault" });
  assert.equal(m.reauthorize(state), 0);
  state.workloads.remove(POD.uid);
  state.policies.upsert({ ...DENY_BOB, name: "deny-all", namespace: "vault", rules: [{ clauses: [] }] });
  assert.equal(m.reauthorize(state), 1);
  assert.deepEqual(closed, ["alice: connection closed due to policy change: denied by policy vault/deny-all"]);
  assert.equal(m.size, 0);
});

Deno.test("closeWorkload() ends only the connections of the pod handed over with that uid", () => {
  const state = new MeshState();
  const m = new ConnectionManager();
  const closed: string[] = [];
  track(m, state, BOB, closed, "u-a");
  track(m, state, ALICE, closed, "u-b");
  assert.equal(m.closeWorkload("u-a", "pod removed"), 1);
  assert.deepEqual(closed, ["bob: pod removed"]);
  assert.equal(m.size, 1);
});

Deno.test("decideAgain() prefers the workload now, falls back to the last one, and denies with neither", async (t) => {
  const state = new MeshState();
  state.policies.upsert({ ...DENY_BOB, name: "deny-all", namespace: "vault", rules: [{ clauses: [] }] });
  const attributes = { srcIp: "10.0.2.2", dstIp: "10.0.1.2", dstPort: 8080, identity: ALICE };
  const inVault = { ...POD, namespace: "vault" };
  const cases = [
    { name: "now wins over before", now: POD, before: inVault, allowed: true, workload: POD },
    { name: "before when the state has none", now: undefined, before: inVault, allowed: false, workload: inVault },
    { name: "neither: fail closed", now: undefined, before: undefined, allowed: false, workload: undefined },
  ];
  for (const c of cases) {
    await t.step(c.name, () => {
      const { workload, decision } = decideAgain(state, c.now, c.before, attributes);
      assert.equal(workload, c.workload);
      assert.equal(decision.allowed, c.allowed);
    });
  }
});
