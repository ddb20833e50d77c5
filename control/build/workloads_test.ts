import assert from "node:assert/strict";
import { ValidationError } from "../../mesh/validate.ts";
import { parseManifestFile, readObject } from "../sources/manifests.ts";
import { DEFAULT_SETTINGS, type Origin } from "./common.ts";
import { buildMesh } from "./mod.ts";
import { podReady, type ReadinessFacts, readPod } from "./workloads.ts";

Deno.test("podReady() follows the Ready condition, never while Pending or terminating", async (t) => {
  const cases: [string, ReadinessFacts, Origin, boolean][] = [
    ["Running, Ready True", { phase: "Running", readyCondition: "True", terminating: false }, "kubernetes", true],
    ["Running, Ready False", { phase: "Running", readyCondition: "False", terminating: false }, "kubernetes", false],
    ["Running, Ready Unknown", { phase: "Running", readyCondition: "Unknown", terminating: false }, "manifests", false],
    ["Pending", { phase: "Pending", terminating: false }, "manifests", false],
    [
      "Pending even with Ready True",
      { phase: "Pending", readyCondition: "True", terminating: false },
      "kubernetes",
      false,
    ],
    ["terminating, Ready True", { phase: "Running", readyCondition: "True", terminating: true }, "kubernetes", false],
    ["terminating manifest pod", { phase: "Running", terminating: true }, "manifests", false],
    ["API pod without a Ready condition", { phase: "Running", terminating: false }, "kubernetes", false],
    ["manifest pod, Running, no condition", { phase: "Running", terminating: false }, "manifests", true],
    ["manifest pod without any status", { phase: "", terminating: false }, "manifests", true],
    ["manifest pod in phase Unknown", { phase: "Unknown", terminating: false }, "manifests", false],
    [
      "Ready False wins over a manifest's default",
      { phase: "", readyCondition: "False", terminating: false },
      "manifests",
      false,
    ],
  ];
  for (const [name, facts, origin, want] of cases) {
    await t.step(`${name} (${origin}) → ${want ? "ready" : "not ready"}`, () => {
      assert.equal(podReady(facts, origin), want);
    });
  }
});

const pod = (status: unknown, metadata: Record<string, unknown> = {}) => ({
  apiVersion: "v1",
  kind: "Pod",
  metadata: { name: "web-1", namespace: "shop", ...metadata },
  spec: { nodeName: "node-a" },
  status,
});

Deno.test("readPod() reads phase, the Ready condition and deletionTimestamp into `ready`", async (t) => {
  const ready = (type: string, status: string) => ({ type, status });
  const cases: [string, unknown, Record<string, unknown>, Origin, boolean][] = [
    ["phase Pending", { podIP: "10.0.1.2", phase: "Pending" }, {}, "manifests", false],
    [
      "Running, Ready False",
      { phase: "Running", conditions: [ready("PodScheduled", "True"), ready("Ready", "False")] },
      {},
      "manifests",
      false,
    ],
    ["Running, Ready True", { phase: "Running", conditions: [ready("Ready", "True")] }, {}, "kubernetes", true],
    [
      "the first Ready condition counts",
      { conditions: [ready("Ready", "False"), ready("Ready", "True")] },
      {},
      "manifests",
      false,
    ],
    ["a manifest pod without conditions", { podIP: "10.0.1.2", phase: "Running" }, {}, "manifests", true],
    ["a manifest pod without status", undefined, {}, "manifests", true],
    [
      "an API pod without a Ready condition",
      { phase: "Running", conditions: [ready("PodScheduled", "True")] },
      {},
      "kubernetes",
      false,
    ],
    [
      "an API pod being deleted",
      { phase: "Running", conditions: [ready("Ready", "True")] },
      { deletionTimestamp: "2026-12-03T17:00:00Z" },
      "kubernetes",
      false,
    ],
  ];
  for (const [name, status, metadata, origin, want] of cases) {
    await t.step(`${name} (${origin}) → ready: ${want}`, () => {
      assert.equal(readPod(pod(status, metadata), origin).ready, want);
    });
  }
  await t.step("a Ready status that is not a quoted string is refused, naming the field", () => {
    for (const bad of [false, true, "false", "Yes"]) {
      assert.throws(
        () => readPod(pod({ conditions: [ready("PodScheduled", "True"), { type: "Ready", status: bad }] })),
        (e: unknown) =>
          e instanceof ValidationError && e.field === "status.conditions[1].status" &&
          /expected "True", "False" or "Unknown" \(quoted/.test(e.problem),
      );
    }
  });
  await t.step("conditions that are not a list are refused", () => {
    assert.throws(() => readPod(pod({ conditions: { type: "Ready" } })), /status.conditions/);
  });
});

Deno.test("readObject() reads a pod from the Kubernetes source as the API means it", () => {
  const doc = pod({ podIP: "10.0.1.2", phase: "Running" });
  const spec = (origin: Origin) => {
    const read = readObject(doc, "x", 0, undefined, origin);
    assert.ok("object" in read);
    return read.object.spec as ReturnType<typeof readPod>;
  };
  assert.equal(spec("manifests").ready, true);
  assert.equal(spec("kubernetes").ready, false);
});

const SHOP = `apiVersion: v1
kind: Namespace
metadata: { name: shop, labels: { istio.io/dataplane-mode: ambient } }
---
`;

const POD = (name: string, ip: string, status: string) =>
  `apiVersion: v1
kind: Pod
metadata: { name: ${name}, namespace: shop, labels: { app: web } }
spec: { nodeName: node-a }
status: { podIP: ${ip}${status} }
---
`;

const SERVICE = (publish = "") =>
  `apiVersion: v1
kind: Service
metadata: { name: web, namespace: shop }
spec: { clusterIP: 10.96.0.1, selector: { app: web }, ports: [{ port: 80, targetPort: 8080 }]${
    publish && `, publishNotReadyAddresses: ${publish}`
  } }
`;

function build(yaml: string) {
  const parsed = parseManifestFile(yaml, "test.yaml");
  assert.deepEqual(parsed.problems, []);
  return buildMesh({ objects: parsed.objects, registrations: [], vips: new Map(), settings: DEFAULT_SETTINGS });
}

Deno.test("buildMesh() marks a pod that is not Ready UNHEALTHY, keeps it as a workload, and HEALTHY once Ready", async (t) => {
  const pods = (web2: string) =>
    SHOP + POD("web-1", "10.0.1.2", ", phase: Running") + POD("pending", "10.0.1.3", ", phase: Pending") +
    POD("web-2", "10.0.1.4", web2) + POD("bare", "10.0.1.5", "") + SERVICE();
  const statuses = (yaml: string) => build(yaml).workloads.map((w) => [w.name, w.status]).sort();
  await t.step("Pending and Ready False are UNHEALTHY; a Running pod without conditions is HEALTHY", () => {
    assert.deepEqual(
      statuses(pods(`, phase: Running, conditions: [{ type: Ready, status: "False" }]`)),
      [["bare", "HEALTHY"], ["pending", "UNHEALTHY"], ["web-1", "HEALTHY"], ["web-2", "UNHEALTHY"]],
    );
  });
  await t.step("the unready pod is still an endpoint of its service in the model (its port map is kept)", () => {
    const m = build(pods(`, phase: Running, conditions: [{ type: Ready, status: "False" }]`));
    const web2 = m.workloads.find((w) => w.name === "web-2")!;
    assert.deepEqual(web2.services["shop/web.shop.svc.cluster.local"], [{ servicePort: 80, targetPort: 8080 }]);
  });
  await t.step("Ready again: HEALTHY again", () => {
    const m = statuses(pods(`, phase: Running, conditions: [{ type: Ready, status: "True" }]`));
    assert.deepEqual(m.find(([n]) => n === "web-2"), ["web-2", "HEALTHY"]);
  });
  await t.step("a service with publishNotReadyAddresses allows all endpoints, as upstream's", () => {
    const plain = build(SHOP + SERVICE()).services[0];
    assert.equal(plain.loadBalancing, undefined);
    const publish = build(SHOP + SERVICE("true")).services[0];
    assert.deepEqual(publish.loadBalancing, {
      routingPreference: [],
      mode: "UNSPECIFIED_MODE",
      healthPolicy: "ALLOW_ALL",
    });
  });
  await t.step("publishNotReadyAddresses that is not a boolean is refused", () => {
    const parsed = parseManifestFile(SERVICE('"yes"'), "s.yaml");
    assert.deepEqual(parsed.problems.map((p) => [p.field, p.message]), [
      ["spec.publishNotReadyAddresses", 'expected true or false, got "yes"'],
    ]);
  });
});
