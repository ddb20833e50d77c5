import assert from "node:assert/strict";
import { decodeAuthorization } from "../../mesh/authorization.ts";
import { SpiffeId } from "../../mesh/identity.ts";
import { MeshState } from "../../mesh/store.ts";
import { decodeWorkload } from "../../mesh/workload.ts";
import { ConnectionManager } from "./connection_manager.ts";

const POD = decodeWorkload({ uid: "u-web", name: "web", namespace: "shop", addresses: ["10.0.1.2"] });
const BOB = SpiffeId.parse("spiffe://cluster.local/ns/shop/sa/bob");
const ALICE = SpiffeId.parse("spiffe://cluster.local/ns/shop/sa/alice");

function track(m: ConnectionManager, identity: SpiffeId, closed: string[], uid = POD.uid) {
  return m.track({
    attributes: { srcIp: "10.0.2.2", dstIp: "10.0.1.2", dstPort: 8080, identity },
    workloadUid: uid,
    close: (reason) => closed.push(`${identity.serviceAccount}: ${reason}`),
  });
}

Deno.test("reauthorize() closes exactly the connections a new policy denies", () => {
  const state = new MeshState();
  state.workloads.upsert(POD);
  const m = new ConnectionManager();
  const closed: string[] = [];
  track(m, BOB, closed);
  track(m, ALICE, closed);
  assert.equal(m.reauthorize(state), 0, "no policy: all still allowed");
  state.policies.upsert(decodeAuthorization({
    name: "deny-bob",
    namespace: "shop",
    scope: "NAMESPACE",
    action: "DENY",
    rules: [{ clauses: [{ matches: [{ principals: [{ exact: BOB.principal }] }] }] }],
  }));
  assert.equal(m.reauthorize(state), 1);
  assert.deepEqual(closed, ["bob: connection closed due to policy change: denied by policy shop/deny-bob"]);
  assert.equal(m.size, 1);
  assert.equal(m.reauthorize(state), 0, "a closed connection is not closed twice");
});

Deno.test("reauthorize() closes connections whose workload is gone; ended connections are not tracked", () => {
  const state = new MeshState();
  state.workloads.upsert(POD);
  const m = new ConnectionManager();
  const closed: string[] = [];
  const untrack = track(m, BOB, closed);
  untrack();
  track(m, ALICE, closed);
  state.workloads.remove(POD.uid);
  assert.equal(m.reauthorize(state), 1);
  assert.match(closed[0], /^alice: .*workload was removed/);
});

Deno.test("closeWorkload() ends only that workload's connections", () => {
  const m = new ConnectionManager();
  const closed: string[] = [];
  track(m, BOB, closed, "u-a");
  track(m, ALICE, closed, "u-b");
  assert.equal(m.closeWorkload("u-a", "pod removed"), 1);
  assert.deepEqual(closed, ["bob: pod removed"]);
  assert.equal(m.size, 1);
});
