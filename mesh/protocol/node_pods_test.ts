import assert from "node:assert/strict";
import { decodeNodePodsMessage } from "./node_pods.ts";

const line = (units: unknown) =>
  JSON.stringify({ type: "pods", version: "v1", node: "node-b", pods: [], ambientNamespaces: [], units });
const billing = {
  namespace: "shop",
  name: "billing",
  serviceAccount: "billing",
  unit: "billing.service",
  cgroup: "system.slice/billing.service",
  address: "10.0.0.12",
  ports: [8080],
};

Deno.test("decodeNodePodsMessage() reads a view's units strictly", async (t) => {
  const cases: { name: string; units: unknown; want?: unknown; error?: RegExp }[] = [
    { name: "a unit", units: [billing], want: [billing] },
    { name: "none: left out", units: [], want: undefined },
    { name: "a cgroup path out of the hierarchy", units: [{ ...billing, cgroup: "../x.service" }], error: /cgroup/ },
    { name: "an IPv6 address", units: [{ ...billing, address: "fd00::1" }], error: /expected an IPv4 address/ },
    { name: "a port out of range", units: [{ ...billing, ports: [0] }], error: /ports/ },
    { name: "an unknown field", units: [{ ...billing, extra: 1 }], error: /extra/ },
  ];
  for (const c of cases) {
    await t.step(c.name, () => {
      if (c.error) {
        assert.throws(() => decodeNodePodsMessage(line(c.units)), c.error);
        return;
      }
      const msg = decodeNodePodsMessage(line(c.units));
      assert.equal(msg.type, "pods");
      assert.deepEqual(msg.type === "pods" ? msg.units : "ping", c.want);
    });
  }
});
