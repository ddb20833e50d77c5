import assert from "node:assert/strict";
import { join } from "node:path";
import { DatabaseSync } from "node:sqlite";
import { decodeCidr } from "../mesh/net.ts";
import { ControlStore, DB_FILE } from "./store.ts";

Deno.test("ControlStore keeps registrations, addresses and objects across a reopen", async () => {
  const dir = await Deno.makeTempDir({ prefix: "skiff-store-" });
  try {
    let store = ControlStore.open(dir);
    const range = decodeCidr("10.96.0.0/30", "range");
    store.setRegistrations("node-a", [{
      namespace: "shop",
      name: "web",
      node: "node-a",
      ips: ["10.0.0.2"],
      redirected: true,
    }]);
    store.setRegistrations("node-b", [{ namespace: "shop", name: "db", node: "node-b", ips: [], redirected: false }]);
    store.setRegistrations("node-a", []); // a node's report replaces its earlier one, and only its own
    const got = store.allocateAddresses(["Service/shop/web"], range, new Set(["10.96.0.1"]));
    assert.deepEqual([...got], [["Service/shop/web", "10.96.0.2"]], "explicit addresses are skipped");
    assert.throws(
      () => store.allocateAddresses(["Service/shop/a", "Service/shop/b"], range, new Set()),
      /no free address left in 10.96.0.0\/30/,
    );
    store.saveObjects([{ key: "Pod/shop/web", file: "/m/a.yaml", line: 3, json: '{"kind":"Pod"}' }], []);
    store.close();
    store = ControlStore.open(dir);
    assert.deepEqual(store.registrations().map((r) => r.name), ["db"]);
    assert.deepEqual(
      [...store.addresses()],
      [["Service/shop/web", "10.96.0.2"]],
      "a failed allocation left nothing half done",
    );
    assert.deepEqual(store.allocateAddresses([], range, new Set(), new Set()).size, 0, "released when no longer kept");
    assert.deepEqual(store.objects(), [{ key: "Pod/shop/web", file: "/m/a.yaml", line: 3, json: '{"kind":"Pod"}' }]);
    store.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("ControlStore keeps each node's report of a pod apart: one node's never replaces another's", async () => {
  const dir = await Deno.makeTempDir({ prefix: "skiff-store-" });
  try {
    const store = ControlStore.open(dir);
    const web = { namespace: "shop", name: "web", ips: ["10.0.1.2"], redirected: true };
    store.setRegistrations("node-a", [{ ...web, node: "node-a" }]);
    // The body's node is the caller's claim; the store records the node whose report it is.
    store.setRegistrations("node-b", [{ ...web, node: "node-a", redirected: false }]);
    assert.deepEqual(store.registrations().map((r) => [r.node, r.name, r.redirected]), [
      ["node-a", "web", true],
      ["node-b", "web", false],
    ]);
    store.setRegistrations("node-b", []);
    assert.deepEqual(store.registrations().map((r) => [r.node, r.redirected]), [["node-a", true]]);
    store.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("ControlStore.open() rebuilds a store that keyed reports by pod alone, keeping its rows", async () => {
  const dir = await Deno.makeTempDir({ prefix: "skiff-store-" });
  try {
    const old = new DatabaseSync(join(dir, DB_FILE));
    old.exec(`CREATE TABLE registrations (node TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
      body TEXT NOT NULL, PRIMARY KEY (namespace, name));`);
    old.prepare("INSERT INTO registrations VALUES (?, ?, ?, ?)").run(
      "node-a",
      "shop",
      "web",
      JSON.stringify({ namespace: "shop", name: "web", node: "node-a", ips: ["10.0.1.2"], redirected: true }),
    );
    old.close();
    const store = ControlStore.open(dir);
    assert.deepEqual(store.registrations().map((r) => [r.node, r.name]), [["node-a", "web"]]);
    store.setRegistrations("node-b", [{ namespace: "shop", name: "web", node: "node-b", ips: [], redirected: false }]);
    assert.equal(store.registrations().length, 2, "the key now has the node");
    store.close();
    ControlStore.open(dir).close(); // a second open finds it migrated
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("ControlStore.changedElsewhere() tells another process's commits (skiff control node) from its own", async () => {
  const dir = await Deno.makeTempDir({ prefix: "skiff-store-" });
  try {
    const plane = ControlStore.open(dir);
    const cli = ControlStore.open(dir);
    assert.equal(plane.changedElsewhere(), false, "nothing yet");
    plane.setRegistrations("node-b", [{ namespace: "shop", name: "api", node: "node-b", ips: [], redirected: true }]);
    assert.equal(plane.changedElsewhere(), false, "its own commit");
    cli.removeNode("node-b");
    assert.equal(plane.changedElsewhere(), true, "node remove in another process");
    assert.equal(plane.changedElsewhere(), false, "told once");
    assert.deepEqual(plane.registrations(), [], "and the node's reports are gone");
    cli.close();
    plane.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
