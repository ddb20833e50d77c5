import assert from "node:assert/strict";
import { decodeHttpRoute, decodeL7Policy, type HttpRoute, type L7Policy } from "../mesh/l7.ts";
import { decodeStreamMessage, joinSnapshotParts } from "../mesh/protocol/config_stream.ts";
import { decodeWorkload, type Workload } from "../mesh/workload.ts";
import { Publisher } from "./push.ts";

const wl = (name: string, ip: string): Workload =>
  decodeWorkload({ uid: `Kubernetes//Pod/shop/${name}`, name, namespace: "shop", addresses: [ip] });
const model = (...workloads: Workload[]) => ({ workloads, services: [], policies: [], routes: [], l7Policies: [] });

Deno.test("Publisher sends only what changed, with versions that depend on content alone", async (t) => {
  const p = new Publisher();
  const seen: string[] = [];
  p.subscribe((d) =>
    seen.push(`${d.version}: +${d.resources.map((r) => r.name).join(",")} -${d.removed.map((r) => r.name).join(",")}`)
  );
  const first = p.publish(model(wl("a", "10.0.0.1"), wl("b", "10.0.0.2")))!;
  await t.step("a first build sends everything", () => {
    assert.equal(first.resources.length, 2);
    assert.deepEqual(seen, ["1: +Kubernetes//Pod/shop/a,Kubernetes//Pod/shop/b -"]);
  });
  await t.step("an identical build sends nothing; a change sends that resource; a removal names it", () => {
    assert.equal(p.publish(model(wl("a", "10.0.0.1"), wl("b", "10.0.0.2"))), undefined);
    p.publish(model(wl("a", "10.0.0.9"), wl("b", "10.0.0.2")));
    p.publish(model(wl("a", "10.0.0.9")));
    assert.deepEqual(seen.slice(1), ["2: +Kubernetes//Pod/shop/a -", "3: + -Kubernetes//Pod/shop/b"]);
  });
  await t.step("another publisher (a restarted control plane) gives the same versions", () => {
    const again = new Publisher();
    const d = again.publish(model(wl("a", "10.0.0.9")))!;
    const snap = decodeStreamMessage(new TextDecoder().decode(p.snapshot({}).lines[0]));
    assert.equal(snap.type, "snapshot");
    assert.equal(d.resources[0].version, snap.type === "snapshot" ? snap.resources[0].version : "");
  });
  await t.step("a snapshot for a client that knows versions resends only the differences and the removals", () => {
    const known = {
      "Workload/Kubernetes//Pod/shop/a": first.resources[0].version,
      "Workload/Kubernetes//Pod/shop/b": "x",
    };
    const snap = p.snapshot(known);
    const m = decodeStreamMessage(new TextDecoder().decode(snap.lines[0]));
    assert.equal(m.type, "snapshot");
    if (m.type !== "snapshot") return;
    assert.deepEqual(m.resources.map((r) => (r.body as Workload).addresses), [["10.0.0.9"]]);
    assert.deepEqual(m.removed, [{ kind: "Workload", name: "Kubernetes//Pod/shop/b" }]);
    const current = Object.fromEntries(m.resources.map((r) => [`${r.kind}/${r.name}`, r.version]));
    const resumed = decodeStreamMessage(new TextDecoder().decode(p.snapshot(current).lines[0]));
    assert.deepEqual(resumed.type === "snapshot" && [resumed.resources.length, resumed.unchanged], [0, 1]);
  });
});

Deno.test("Publisher publishes HTTP routes and L7 policies by namespace/name, and removes them by that name", () => {
  const route: HttpRoute = decodeHttpRoute({
    name: "web",
    namespace: "shop",
    parents: [{ service: "shop/web.shop.svc.cluster.local" }],
    rules: [{ matches: [], backends: [{ service: "shop/web.shop.svc.cluster.local", port: 80 }] }],
  });
  const policy: L7Policy = decodeL7Policy({
    name: "get-only",
    namespace: "shop",
    targets: [{ kind: "Service", namespace: "shop", name: "web" }],
    rules: [{ to: [{ methods: ["GET"] }] }],
  });
  const p = new Publisher();
  const d = p.publish({ ...model(), routes: [route], l7Policies: [policy] })!;
  assert.deepEqual(d.resources.map((r) => [r.kind, r.name, r.body]), [
    ["HttpRoute", "shop/web", route],
    ["L7Policy", "shop/get-only", policy],
  ]);
  const gone = p.publish(model())!;
  assert.deepEqual(gone.removed, [{ kind: "HttpRoute", name: "shop/web" }, {
    kind: "L7Policy",
    name: "shop/get-only",
  }]);
  const snap = decodeStreamMessage(new TextDecoder().decode(p.snapshot({ "HttpRoute/shop/old": "x" }).lines[0]));
  assert.deepEqual(snap.type === "snapshot" && snap.removed, [{ kind: "HttpRoute", name: "shop/old" }]);
});

Deno.test("a snapshot in parts: lines of at most 1,000 resources that join into the one-line snapshot", () => {
  const p = new Publisher();
  const ip = (i: number) => `10.1.${Math.floor(i / 256)}.${i % 256}`;
  p.publish(model(...Array.from({ length: 2_500 }, (_, i) => wl(`w${i}`, ip(i)))));
  const text = (b: Uint8Array) => new TextDecoder().decode(b);
  const whole = p.snapshot({ "Workload/Kubernetes//Pod/shop/gone": "x" });
  const parted = p.snapshot({ "Workload/Kubernetes//Pod/shop/gone": "x" }, true);
  assert.equal(whole.lines.length, 1);
  assert.equal(parted.lines.length, 3);
  const parts = parted.lines.map((l) => {
    assert.equal(text(l).indexOf("\n"), l.length - 1, "each part is one line");
    const m = decodeStreamMessage(text(l));
    if (m.type !== "snapshot") throw new Error(`a ${m.type} among the parts`);
    return m;
  });
  assert.deepEqual(parts.map((m) => [m.resources.length, m.more ?? false, m.removed.length]), [
    [1_000, true, 1],
    [1_000, true, 0],
    [500, false, 0],
  ]);
  assert.deepEqual(joinSnapshotParts(parts), decodeStreamMessage(text(whole.lines[0])));
  assert.equal(p.snapshot({}, true).lines, p.snapshot({}, true).lines, "a first sync's parts are encoded once");
  assert.equal(p.snapshot({}).lines.length, 1, "and the one-line form is kept apart");
});

Deno.test("joinSnapshotParts refuses parts that are not one whole snapshot", () => {
  type Snapshot = Parameters<typeof joinSnapshotParts>[0][number];
  const part = (version: number, more: boolean): Snapshot => {
    const p: Snapshot = { type: "snapshot", version, resources: [], removed: [], unchanged: 0 };
    return more ? { ...p, more: true } : p;
  };
  assert.throws(() => joinSnapshotParts([part(1, true)]), /last part is missing/);
  assert.throws(
    () => joinSnapshotParts([part(1, true), part(2, false)]),
    /part of version 1 inside a snapshot of version 2/,
  );
  assert.deepEqual(joinSnapshotParts([part(3, true), part(3, false)]).version, 3);
});

Deno.test("a rebuild that hands back the same objects makes no key and no JSON for them", async (t) => {
  let reads = 0;
  // A workload whose uid (its key) and JSON are counted as they are read.
  const counted = (name: string, ip: string): Workload => {
    const w = wl(name, ip);
    const uid = w.uid;
    Object.defineProperty(w, "uid", {
      enumerable: true,
      get: () => {
        reads++;
        return uid;
      },
    });
    return w;
  };
  const a = counted("a", "10.0.0.1"), b = counted("b", "10.0.0.2"), c = counted("c", "10.0.0.3");
  const p = new Publisher();
  p.publish(model(a, c));
  await t.step("the same objects again: nothing read, nothing sent", () => {
    reads = 0;
    assert.equal(p.publish(model(a, c)), undefined);
    assert.equal(reads, 0);
  });
  await t.step("one new object among them: only it is read, and the snapshot keeps the model's order", () => {
    reads = 0;
    const d = p.publish(model(a, b, c))!;
    assert.deepEqual(d.resources.map((r) => r.name), ["Kubernetes//Pod/shop/b"]);
    assert.ok(reads > 0 && reads <= 2, `read ${reads} times`);
    const snap = decodeStreamMessage(new TextDecoder().decode(p.snapshot({}).lines[0]));
    assert.deepEqual(snap.type === "snapshot" && snap.resources.map((r) => r.name), [
      "Kubernetes//Pod/shop/a",
      "Kubernetes//Pod/shop/b",
      "Kubernetes//Pod/shop/c",
    ]);
  });
  await t.step("an object published before, whose key has changed since, is compared and sent again", () => {
    const a2 = wl("a", "10.0.0.9");
    assert.equal(p.publish(model(a2, b, c))!.resources.length, 1);
    const back = p.publish(model(a, b, c))!;
    assert.deepEqual(back.resources.map((r) => (r.body as Workload).addresses), [["10.0.0.1"]]);
    assert.deepEqual(p.publish(model(b, c))!.removed, [{ kind: "Workload", name: "Kubernetes//Pod/shop/a" }]);
  });
});
