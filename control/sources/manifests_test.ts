import assert from "node:assert/strict";
import { join } from "node:path";
import type { AuthorizationPolicySpec } from "../build/authorization_policy.ts";
import { formatProblem, loadManifestDir, ManifestSet, parseManifestFile } from "./manifests.ts";

const SHOP = `apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels:
    istio.io/dataplane-mode: ambient
---
apiVersion: v1
kind: Pod
metadata:
  name: web-1
  namespace: shop
  labels: { app: web }
spec:
  serviceAccountName: web
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-web
spec: {}
`;

Deno.test("parseManifestFile() reads each document's envelope, with its line and Kubernetes' defaults", () => {
  const parsed = parseManifestFile(SHOP, "shop.yaml");
  assert.deepEqual(parsed.problems, []);
  assert.equal(parsed.complete, true);
  assert.deepEqual(
    parsed.objects.map((o) => [o.kind, o.namespace, o.name, o.line]),
    [["Namespace", "", "shop", 1], ["Pod", "shop", "web-1", 8], ["AuthorizationPolicy", "default", "allow-web", 17]],
  );
  assert.deepEqual(parsed.objects[0].labels, { "istio.io/dataplane-mode": "ambient" });
  assert.deepEqual(JSON.parse(parsed.objects[1].digest).spec, { serviceAccountName: "web" });
});

Deno.test("a bad document is reported with file, line and field, and costs the others nothing", async (t) => {
  const cases: [string, string, { line: number; field?: string; match: RegExp; key?: string }][] = [
    ["unknown kind", "apiVersion: apps/v1\nkind: Deployment\nmetadata: { name: x }\n", {
      line: 2,
      field: "kind",
      match: /apps\/v1\/Deployment is not a kind Skiff reads/,
    }],
    ["no name", "apiVersion: v1\nkind: Pod\nmetadata:\n  namespace: shop\n", {
      line: 4,
      field: "metadata.name",
      match: /is required/,
    }],
    ["a bad name", "apiVersion: v1\nkind: Service\nmetadata:\n  name: Web_1\n", {
      line: 4,
      field: "metadata.name",
      match: /DNS subdomain/,
    }],
    ["a number as a label value", "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  labels:\n    version: 2\n", {
      line: 6,
      field: "metadata.labels.version",
      match: /quote numbers/,
      key: "Pod/default/p",
    }],
    ["a namespace on a Namespace", "apiVersion: v1\nkind: Namespace\nmetadata: { name: a, namespace: b }\n", {
      line: 3,
      field: "metadata.namespace",
      match: /not namespaced/,
      key: undefined,
    }],
    ["broken YAML", "apiVersion: v1\nkind: Pod\nmetadata: { name: [\n", { line: 4, match: /not valid YAML/ }],
  ];
  for (const [name, doc, want] of cases) {
    await t.step(name, () => {
      const parsed = parseManifestFile(`${SHOP}---\n${doc}`, "m.yaml");
      assert.equal(parsed.objects.length, 3, "the good documents still count");
      assert.equal(parsed.problems.length, 1);
      const p = parsed.problems[0];
      assert.equal(p.file, "m.yaml");
      assert.equal(p.line, 22 + want.line, formatProblem(p)); // SHOP is 21 lines, then `---`
      assert.equal(p.field, want.field);
      assert.match(p.message, want.match);
      if ("key" in want) assert.equal(p.key, want.key);
    });
  }
});

Deno.test("ManifestSet keeps the last good version of a broken object, and everything of an unreadable file", () => {
  const set = new ManifestSet();
  const v1 = "apiVersion: v1\nkind: Pod\nmetadata: { name: p, labels: { v: one } }\n---\n" +
    "apiVersion: v1\nkind: Pod\nmetadata: { name: q }\n";
  assert.deepEqual([...set.update("a.yaml", parseManifestFile(v1, "a.yaml"))].sort(), [
    "Pod/default/p",
    "Pod/default/q",
  ]);

  // p broken (its identity still readable), q unchanged: p keeps version one, nothing changes.
  const broken = v1.replace("v: one", "v: 2");
  assert.deepEqual([...set.update("a.yaml", parseManifestFile(broken, "a.yaml"))], []);
  assert.equal(set.objects().get("Pod/default/p")?.labels.v, "one");
  assert.match(formatProblem(set.problems()[0]), /^a\.yaml:3: metadata\.labels\.v: expected a string/);

  // The file's YAML broken: nothing can be told apart from a removal, so both stay.
  assert.deepEqual([...set.update("a.yaml", parseManifestFile("kind: [\n", "a.yaml"))], []);
  assert.equal(set.objects().size, 2);

  // Fixed, with q removed on purpose: q goes, p changes.
  const fixed = "apiVersion: v1\nkind: Pod\nmetadata: { name: p, labels: { v: three } }\n";
  assert.deepEqual([...set.update("a.yaml", parseManifestFile(fixed, "a.yaml"))].sort(), [
    "Pod/default/p",
    "Pod/default/q",
  ]);
  assert.deepEqual([...set.objects().keys()], ["Pod/default/p"]);
  assert.deepEqual(set.problems(), []);
});

Deno.test("ManifestSet: an object declared in two files belongs to the first; removing a file removes its objects", () => {
  const set = new ManifestSet();
  const pod = (label: string) => `apiVersion: v1\nkind: Pod\nmetadata: { name: p, labels: { from: ${label} } }\n`;
  set.update("a.yaml", parseManifestFile(pod("a"), "a.yaml"));
  assert.deepEqual([...set.update("b.yaml", parseManifestFile(pod("b"), "b.yaml"))], []);
  assert.equal(set.objects().get("Pod/default/p")?.labels.from, "a");
  assert.match(formatProblem(set.problems()[0]), /^b\.yaml:1: Pod\/default\/p is already declared in a\.yaml:1/);
  assert.deepEqual([...set.remove("a.yaml")], ["Pod/default/p"]);
  assert.equal(set.objects().size, 0);
});

Deno.test("loadManifestDir() reads the directory like kubectl apply -f: yaml/yml/json, no hidden files, deletions", async () => {
  const dir = await Deno.makeTempDir({ prefix: "skiff-manifests-" });
  try {
    await Deno.writeTextFile(join(dir, "10-shop.yaml"), SHOP);
    await Deno.writeTextFile(
      join(dir, "20-sa.json"),
      JSON.stringify({ apiVersion: "v1", kind: "ServiceAccount", metadata: { name: "web", namespace: "shop" } }),
    );
    await Deno.writeTextFile(join(dir, ".10-shop.yaml.swp"), "not: [yaml");
    await Deno.writeTextFile(join(dir, "README.txt"), "notes");
    await Deno.mkdir(join(dir, "sub.yaml"));
    const set = new ManifestSet();
    const changed = await loadManifestDir(dir, set);
    assert.deepEqual([...changed].sort(), [
      "AuthorizationPolicy/default/allow-web",
      "Namespace//shop",
      "Pod/shop/web-1",
      "ServiceAccount/shop/web",
    ]);
    assert.deepEqual(set.problems(), []);
    assert.deepEqual([...(await loadManifestDir(dir, set))], [], "an unchanged directory changes nothing");
    await Deno.remove(join(dir, "20-sa.json"));
    assert.deepEqual([...(await loadManifestDir(dir, set))], ["ServiceAccount/shop/web"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a bad spec is reported at its field and line, and the object's last good version stays", () => {
  const good = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: allow-web, namespace: shop }
spec:
  rules:
    - from:
        - source: { principals: [cluster.local/ns/shop/sa/web] }
`;
  const set = new ManifestSet();
  set.update("p.yaml", parseManifestFile(good, "p.yaml"));
  const bad = good.replace("principals:", "principal:");
  const changed = set.update("p.yaml", parseManifestFile(bad, "p.yaml"));
  assert.deepEqual([...changed], []);
  assert.deepEqual(set.problems().map(formatProblem), [
    "p.yaml:7: spec.rules[0].from[0].source.principal: is not a known field",
  ]);
  const spec = set.objects().get("AuthorizationPolicy/shop/allow-web")!.spec as AuthorizationPolicySpec;
  assert.deepEqual(spec.rules[0].from[0].principals, ["cluster.local/ns/shop/sa/web"]);
});
