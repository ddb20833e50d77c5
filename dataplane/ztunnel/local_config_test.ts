import assert from "node:assert/strict";
import { join } from "node:path";
import { LocalConfigError, parseLocalConfig, readLocalConfig, stateOf } from "./local_config.ts";

const GOOD = `# a two-pod mesh
workloads:
  - uid: Kubernetes//Pod/shop/web-1
    name: web-1
    namespace: shop
    serviceAccount: web
    addresses: [10.0.1.2]
    tunnelProtocol: HBONE
    services:
      shop/web.shop.svc.cluster.local:
        - { servicePort: 80, targetPort: 8080 }
  - uid: Kubernetes//Pod/shop/db-1
    name: db-1
    namespace: shop
    addresses: [10.0.2.2]
services:
  - name: web
    namespace: shop
    hostname: web.shop.svc.cluster.local
    addresses: [{ address: 10.96.0.10 }]
    ports: [{ port: 80, targetPort: 8080 }]
policies:
  - name: strict
    namespace: shop
    scope: NAMESPACE
    action: DENY
    dryRun: no
    rules: [{ clauses: [{ matches: [{ notPrincipals: [{ presence: true }] }] }] }]
`;

function rejects(text: string, want: { line?: number; field?: string; message: RegExp }) {
  let err: unknown;
  try {
    parseLocalConfig(text, "local.yaml");
  } catch (e) {
    err = e;
  }
  assert.ok(err instanceof LocalConfigError, `expected a LocalConfigError, got ${err}`);
  assert.equal(err.file, "local.yaml");
  assert.equal(err.line, want.line, err.message);
  assert.equal(err.field, want.field);
  assert.match(err.message, want.message);
  assert.ok(err.message.startsWith(`local.yaml${want.line ? `:${want.line}` : ""}: `), err.message);
}

Deno.test("parseLocalConfig() reads workloads, services and policies into a mesh state", () => {
  const c = parseLocalConfig(GOOD, "local.yaml");
  assert.equal(c.workloads.length, 2);
  assert.equal(c.workloads[1].serviceAccount, "default", "Istio's default filled in");
  assert.equal(c.policies[0].dryRun, false, "YAML 1.1: 'no' is false, as Kubernetes reads it");
  const state = stateOf(c);
  assert.equal(state.lookupAddress("", "10.96.0.10") && "service" in state.lookupAddress("", "10.96.0.10")!, true);
  assert.equal(state.workloads.endpointsOf("shop/web.shop.svc.cluster.local").length, 1);
  assert.equal(state.policies.forWorkload(c.workloads[0]).length, 1);
});

Deno.test("parseLocalConfig() accepts an empty file as an empty mesh", () => {
  assert.deepEqual(parseLocalConfig("", "local.yaml"), { workloads: [], services: [], policies: [] });
});

Deno.test("parseLocalConfig() names the file, line and field of a bad value", async (t) => {
  await t.step("a bad address", () =>
    rejects(GOOD.replace("addresses: [10.0.2.2]", "addresses: [10.0.2.300]"), {
      line: 15,
      field: "workloads[1].addresses[0]",
      message: /workloads\[1\]\.addresses\[0\]: expected an IPv4 or IPv6 address/,
    }));
  await t.step(
    "a bad port in a services map key with a slash",
    () =>
      rejects(GOOD.replace("{ servicePort: 80, targetPort: 8080 }", "{ servicePort: 0, targetPort: 8080 }"), {
        line: 11,
        field: 'workloads[0].services["shop/web.shop.svc.cluster.local"][0].servicePort',
        message: /servicePort: expected an integer from 1 to 65535, got 0/,
      }),
  );
  await t.step(
    "a missing field is reported at its parent",
    () =>
      rejects(GOOD.replace("    name: db-1\n", ""), { line: 12, field: "workloads[1].name", message: /is required/ }),
  );
  await t.step(
    "an unknown top-level key",
    () => rejects(GOOD + "extras: 1\n", { line: 29, field: "extras", message: /not a known field/ }),
  );
  await t.step(
    "a policy with a bad action",
    () =>
      rejects(GOOD.replace("action: DENY", "action: AUDIT"), {
        line: 26,
        field: "policies[0].action",
        message: /ALLOW, DENY/,
      }),
  );
  await t.step(
    "the same workload twice",
    () =>
      rejects(GOOD.replace("uid: Kubernetes//Pod/shop/db-1", "uid: Kubernetes//Pod/shop/web-1"), {
        line: 12,
        field: "workloads[1]",
        message: /"Kubernetes\/\/Pod\/shop\/web-1" is defined twice/,
      }),
  );
  await t.step("not YAML", () => rejects("workloads: [\n  - {", { line: 2, message: /not valid YAML/ }));
  await t.step("a list at the top", () => rejects("- a\n", { line: 1, field: "", message: /expected an object/ }));
});

Deno.test("readLocalConfig() names a file it cannot read", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await assert.rejects(
      readLocalConfig(join(dir, "missing.yaml")),
      (e: Error) => e instanceof LocalConfigError && /missing\.yaml: cannot read/.test(e.message),
    );
    await Deno.writeTextFile(join(dir, "ok.yaml"), GOOD);
    assert.equal((await readLocalConfig(join(dir, "ok.yaml"))).services.length, 1);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
