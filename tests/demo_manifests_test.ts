import assert from "node:assert/strict";
import { formatCidr } from "../mesh/net.ts";
import { podRangesOf } from "../control/build/nodes.ts";
import { parseManifestFile } from "../control/sources/manifests.ts";
import { NODES } from "../demo/cluster.ts";
import { manifests, PODS, type Stage } from "../demo/manifests.ts";

Deno.test("manifests() declares each demo node with the pod range its IPAM gives, at every stage", async (t) => {
  for (const stage of ["plain", "enrolled", "deny", "waypoint"] as Stage[]) {
    await t.step(stage, () => {
      const parsed = parseManifestFile(manifests(stage), "demo.yaml");
      assert.deepEqual(parsed.problems, []);
      const ranges = podRangesOf(parsed.objects);
      assert.deepEqual(
        [...ranges].map(([node, cidrs]) => [node, cidrs.map(formatCidr)]),
        NODES.map((n) => [n.name, [n.podCidr]]),
      );
      for (const p of PODS) assert.ok(ranges.has(p.node), `pod ${p.name} runs on a declared node`);
    });
  }
});
