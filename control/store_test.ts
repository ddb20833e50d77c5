import assert from "node:assert/strict";
import { decodeCidr } from "../mesh/net.ts";
import { ControlStore } from "./store.ts";

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
