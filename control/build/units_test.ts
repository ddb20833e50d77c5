import assert from "node:assert/strict";
import { parseManifestFile } from "../sources/manifests.ts";
import { nodePodsView } from "../node_views.ts";
import { DEFAULT_SETTINGS } from "./common.ts";
import { buildMesh } from "./mod.ts";

const entry = (name: string, annotations: string, spec = "address: 10.0.0.12, ports: { http: 8080 }") =>
  `apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: { name: ${name}, namespace: shop, annotations: { ${annotations} } }
spec: { serviceAccount: ${name}, ${spec} }
---
`;

function build(yaml: string) {
  const parsed = parseManifestFile(yaml, "test.yaml");
  assert.deepEqual(parsed.problems, []);
  return buildMesh({ objects: parsed.objects, registrations: [], vips: new Map(), settings: DEFAULT_SETTINGS });
}

Deno.test("skiff.io/unit: a WorkloadEntry names a systemd unit its node meshes, or says why it cannot", async (t) => {
  const cases: { name: string; yaml: string; unit?: object; problem?: RegExp; tunnel: string }[] = [
    {
      name: "a unit in systemd's default slice",
      yaml: entry("billing", "skiff.io/node: node-b, skiff.io/unit: billing.service"),
      unit: { unit: "billing.service", cgroup: "system.slice/billing.service", address: "10.0.0.12", ports: [8080] },
      tunnel: "HBONE",
    },
    {
      name: "a unit in a slice of its own, several ports, sorted once each",
      yaml: entry(
        "billing",
        "skiff.io/node: node-b, skiff.io/unit: app.slice/billing.service",
        "address: 10.0.0.12, ports: { http: 8080, admin: 81, alt: 8080 }",
      ),
      unit: { unit: "billing.service", cgroup: "app.slice/billing.service", ports: [81, 8080] },
      tunnel: "HBONE",
    },
    {
      name: "no node",
      yaml: entry("billing", "skiff.io/unit: billing.service"),
      problem: /needs skiff\.io\/node/,
      tunnel: "NONE",
    },
    {
      name: "a path that climbs out of the hierarchy",
      yaml: entry("billing", "skiff.io/node: node-b, skiff.io/unit: ../billing.service"),
      problem: /expected a unit's cgroup path/,
      tunnel: "NONE",
    },
    {
      name: "not a service or scope",
      yaml: entry("billing", "skiff.io/node: node-b, skiff.io/unit: billing.socket"),
      problem: /expected a unit's cgroup path/,
      tunnel: "NONE",
    },
    {
      name: "no ports: inbound capture would cover nothing",
      yaml: entry("billing", "skiff.io/node: node-b, skiff.io/unit: billing.service", "address: 10.0.0.12"),
      problem: /needs spec\.ports/,
      tunnel: "NONE",
    },
    {
      name: "a port of ztunnel's",
      yaml: entry(
        "billing",
        "skiff.io/node: node-b, skiff.io/unit: billing.service",
        "address: 10.0.0.12, ports: { hbone: 15008 }",
      ),
      problem: /port 15008 is ztunnel's own/,
      tunnel: "NONE",
    },
    { name: "no annotation: an entry as before", yaml: entry("billing", "skiff.io/node: node-b"), tunnel: "NONE" },
  ];
  for (const c of cases) {
    await t.step(c.name, () => {
      const m = build(c.yaml);
      const units = m.nodeUnits.get("node-b") ?? [];
      if (c.unit) {
        assert.equal(units.length, 1);
        assert.deepEqual({ ...units[0], ...c.unit }, units[0]);
        assert.equal(units[0].serviceAccount, "billing");
      } else {
        assert.deepEqual(units, []);
      }
      const notes = m.notes.filter((n) => n.key === "WorkloadEntry/shop/billing").map((n) => n.message);
      if (c.problem) assert.match(notes.join("\n"), c.problem);
      else assert.deepEqual(notes, []);
      assert.equal(m.workloads[0].tunnelProtocol, c.tunnel);
      // Its node may obtain its identity whether it is meshed or not (the CA's node-scoped check).
      if (c.yaml.includes("skiff.io/node")) {
        assert.deepEqual(m.identities.get("node-b")?.map((i) => i.serviceAccount), ["billing"]);
      }
    });
  }
});

Deno.test("nodePodsView(): units are in the view and its version; a view without units keeps its old version", () => {
  const unit = {
    namespace: "shop",
    name: "billing",
    serviceAccount: "billing",
    unit: "billing.service",
    cgroup: "system.slice/billing.service",
    address: "10.0.0.12",
    ports: [8080],
  };
  const plain = nodePodsView("node-b", [], ["shop"]);
  assert.deepEqual(nodePodsView("node-b", [], ["shop"], []), plain);
  assert.equal(plain.units, undefined);
  const withUnit = nodePodsView("node-b", [], ["shop"], [unit]);
  assert.deepEqual(withUnit.units, [unit]);
  assert.notEqual(withUnit.version, plain.version);
});
