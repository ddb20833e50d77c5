import assert from "node:assert/strict";
import client from "prom-client";
import pino from "pino";
import { ClientConfig } from "./control_client.ts";
import type { StreamMessage } from "./protocol/config_stream.ts";
import { failClosedAuthorization, failClosedL7Policy } from "./refused_policy.ts";

Deno.test("failClosedAuthorization() denies all over the scope the body states plainly, else over everything", async (t) => {
  const cases: { name: string; key: string; body: unknown; scope: string; namespace: string }[] = [
    {
      name: "NAMESPACE",
      key: "shop/p",
      body: { namespace: "shop", scope: "NAMESPACE" },
      scope: "NAMESPACE",
      namespace: "shop",
    },
    {
      name: "WORKLOAD_SELECTOR",
      key: "shop/p",
      body: { namespace: "shop", scope: "WORKLOAD_SELECTOR", rules: "?" },
      scope: "WORKLOAD_SELECTOR",
      namespace: "shop",
    },
    {
      name: "GLOBAL",
      key: "istio-system/p",
      body: { namespace: "istio-system", scope: "GLOBAL" },
      scope: "GLOBAL",
      namespace: "istio-system",
    },
    {
      name: "scope absent (GLOBAL on the wire)",
      key: "shop/p",
      body: { namespace: "shop" },
      scope: "GLOBAL",
      namespace: "shop",
    },
    {
      name: "a scope this proxy does not know",
      key: "shop/p",
      body: { namespace: "shop", scope: "SERVICE" },
      scope: "GLOBAL",
      namespace: "shop",
    },
    {
      name: "a namespace other than the key's",
      key: "shop/p",
      body: { namespace: "bank", scope: "NAMESPACE" },
      scope: "GLOBAL",
      namespace: "shop",
    },
    {
      name: "a namespace that is not a DNS label",
      key: "Shop/p",
      body: { namespace: "Shop", scope: "NAMESPACE" },
      scope: "GLOBAL",
      namespace: "Shop",
    },
    { name: "a body that is not an object", key: "shop/p", body: "garbage", scope: "GLOBAL", namespace: "shop" },
    {
      name: "a key without a namespace",
      key: "p",
      body: { namespace: "", scope: "NAMESPACE" },
      scope: "GLOBAL",
      namespace: "",
    },
  ];
  for (const c of cases) {
    await t.step(`${c.name} → ${c.scope}`, () => {
      const a = failClosedAuthorization(c.key, c.body, "why");
      assert.deepEqual([a.scope, a.namespace, a.action, a.rules, a.dryRun, a.refused], [
        c.scope,
        c.namespace,
        "DENY",
        [{ clauses: [] }],
        false,
        "why",
      ]);
    });
  }
});

Deno.test("failClosedL7Policy() keeps targets only when each decodes and lies in the key's namespace", async (t) => {
  const gw = { kind: "Gateway", namespace: "shop", name: "waypoint" };
  const cases: { name: string; body: unknown; everywhere: boolean }[] = [
    {
      name: "targets that decode",
      body: { targets: [gw, { kind: "Service", namespace: "shop", name: "web" }] },
      everywhere: false,
    },
    { name: "no targets", body: { targets: [] }, everywhere: true },
    {
      name: "a target of a kind this proxy does not know",
      body: { targets: [gw, { ...gw, kind: "Mesh" }] },
      everywhere: true,
    },
    {
      name: "a target with a field this proxy does not know",
      body: { targets: [{ ...gw, sectionName: "http" }] },
      everywhere: true,
    },
    { name: "a target in another namespace", body: { targets: [{ ...gw, namespace: "bank" }] }, everywhere: true },
    { name: "too many targets", body: { targets: Array(17).fill(gw) }, everywhere: true },
    { name: "no body", body: null, everywhere: true },
  ];
  for (const c of cases) {
    await t.step(`${c.name} → ${c.everywhere ? "every request" : "its targets"}`, () => {
      const r = failClosedL7Policy("shop/p", c.body);
      assert.equal(r.everywhere, c.everywhere);
      assert.deepEqual([r.policy.action, r.policy.rules, r.policy.dryRun], [
        "DENY",
        [{ from: [], to: [], when: [] }],
        false,
      ]);
      if (!c.everywhere) assert.equal(r.policy.targets.length, 2);
    });
  }
});

const workload = (name: string, ns: string, ip: string, policies: string[] = []) => ({
  uid: `Kubernetes//Pod/${ns}/${name}`,
  name,
  namespace: ns,
  addresses: [ip],
  authorizationPolicies: policies,
});
const WORKLOADS = [
  workload("web", "shop", "10.0.0.1", ["shop/sel"]),
  workload("db", "shop", "10.0.0.2"),
  workload("api", "bank", "10.0.0.3"),
];
const snapshot = (resources: unknown[]): Exclude<StreamMessage, { type: "ping" }> => ({
  type: "snapshot",
  version: 1,
  unchanged: 0,
  removed: [],
  resources: [
    ...WORKLOADS.map((w) => ({ kind: "Workload" as const, name: w.uid, version: "w", body: w })),
    ...resources as StreamMessage extends { resources: infer R } ? R : never,
  ],
});
const delta = (resources: unknown[], removed: unknown[] = []) =>
  ({ type: "delta", version: 2, resources, removed }) as Exclude<StreamMessage, { type: "ping" }>;
const authz = (name: string, scope: string, extra: Record<string, unknown> = {}) => ({
  kind: "Authorization" as const,
  name: `shop/${name}`,
  version: "v",
  body: { name, namespace: "shop", scope, action: "ALLOW", rules: [{}], ...extra },
});

/** Which workloads hold a refused policy's deny-all among their candidates, by name. */
function denyingAll(config: ClientConfig): string[] {
  return WORKLOADS.filter((w) =>
    config.state.policies.forWorkload(config.state.workloads.byUid(w.uid)!).some((a) => a.refused !== undefined)
  ).map((w) => w.name);
}

function capture() {
  const lines: Record<string, unknown>[] = [];
  return {
    lines,
    config: new ClientConfig(pino({ level: "debug" }, { write: (s: string) => lines.push(JSON.parse(s)) })),
  };
}

Deno.test("ClientConfig holds a refused Authorization as a deny-all over its scope, logged and counted", async (t) => {
  const cases = [
    { scope: "NAMESPACE", denies: ["web", "db"], log: "the workloads of namespace shop" },
    { scope: "WORKLOAD_SELECTOR", name: "sel", denies: ["web"], log: "the workloads the policy selects" },
    { scope: "GLOBAL", denies: ["web", "db", "api"], log: "every workload" },
  ];
  for (const c of cases) {
    await t.step(`${c.scope}: ${c.denies.join(", ")}`, () => {
      const { config, lines } = capture();
      const applied = config.apply(snapshot([authz(c.name ?? "p", c.scope, { extensions: [] })]));
      assert.equal(applied.refused, 1);
      assert.deepEqual(denyingAll(config), c.denies);
      const line = lines.find((l) => l.resource === `Authorization/shop/${c.name ?? "p"}`)!;
      assert.equal(line.level, 50);
      assert.equal(
        line.msg,
        "policy refused; it fails closed: its scope denies all until a version that decodes arrives",
      );
      assert.equal(line.denies, c.log);
      assert.match(String(line.error), /extensions: is not a known field/);
    });
  }
});

Deno.test("ClientConfig ends a refusal on a version that decodes, a removal, or a snapshot without it", async (t) => {
  await t.step("a version that decodes", () => {
    const { config } = capture();
    config.apply(snapshot([authz("p", "NAMESPACE", { extensions: [] })]));
    config.apply(delta([authz("p", "NAMESPACE")]));
    assert.deepEqual(denyingAll(config), []);
    assert.equal(config.state.policies.byKey("shop/p")?.action, "ALLOW");
  });
  await t.step("a removal", () => {
    const { config } = capture();
    config.apply(snapshot([authz("p", "NAMESPACE", { extensions: [] })]));
    config.apply(delta([], [{ kind: "Authorization", name: "shop/p" }]));
    assert.deepEqual(denyingAll(config), []);
  });
  await t.step("a snapshot that does not resend it (gone, or back to the version held)", () => {
    const { config } = capture();
    config.apply(snapshot([authz("p", "NAMESPACE")]));
    config.apply(delta([authz("p", "NAMESPACE", { extensions: [] })]));
    assert.deepEqual(denyingAll(config), ["web", "db"], "refused, with the previous version held beside it");
    config.apply(snapshot([]));
    assert.deepEqual(denyingAll(config), []);
    assert.equal(config.state.policies.byKey("shop/p")?.action, "ALLOW", "the version held stays");
  });
  await t.step("a snapshot that resends it still undecodable keeps it", () => {
    const { config } = capture();
    config.apply(snapshot([authz("p", "NAMESPACE", { extensions: [] })]));
    config.apply(snapshot([authz("p", "NAMESPACE", { extensions: [] })]));
    assert.deepEqual(denyingAll(config), ["web", "db"]);
  });
  await t.step("a body filed under another name is refused, and fails closed under the name it came by", () => {
    const { config } = capture();
    const misfiled = { ...authz("p", "NAMESPACE"), name: "shop/q" };
    assert.equal(config.apply(snapshot([misfiled])).refused, 1);
    assert.deepEqual(config.state.policies.refusedKeys(), ["shop/q"]);
  });
});

Deno.test("ClientConfig holds a refused L7Policy as a deny-all of its targets, or of everything", async (t) => {
  const l7 = (targets: unknown[]) => ({
    kind: "L7Policy" as const,
    name: "shop/p",
    version: "v",
    body: { name: "p", namespace: "shop", targets, action: "ALLOW", rules: [], future: true },
  });
  const gw = { kind: "Gateway", namespace: "shop", name: "waypoint" };
  await t.step("targets that read: those", () => {
    const { config, lines } = capture();
    config.apply(snapshot([l7([gw])]));
    assert.deepEqual(config.state.l7Policies.forTarget("Gateway", "shop", "waypoint").map((p) => p.action), ["DENY"]);
    assert.deepEqual(config.state.l7Policies.forTarget("Gateway", "shop", "other"), []);
    assert.equal(lines.find((l) => l.resource === "L7Policy/shop/p")!.denies, "requests to Gateway shop/waypoint");
  });
  await t.step("targets that do not read: everything", () => {
    const { config } = capture();
    config.apply(snapshot([l7([{ ...gw, kind: "Mesh" }])]));
    assert.equal(config.state.l7Policies.forTarget("Service", "bank", "api").length, 1);
    config.apply(delta([], [{ kind: "L7Policy", name: "shop/p" }]));
    assert.equal(config.state.l7Policies.forTarget("Service", "bank", "api").length, 0);
  });
});

Deno.test("ClientConfig.registerMetrics() reports refusals and the policies failing closed now", async () => {
  const { config } = capture();
  const registry = new client.Registry();
  config.registerMetrics(registry);
  config.apply(snapshot([authz("p", "NAMESPACE", { extensions: [] }), authz("q", "NAMESPACE", { extensions: [] })]));
  config.apply(delta([authz("p", "NAMESPACE")]));
  const text = await registry.metrics();
  assert.match(text, /^skiff_config_refused_total\{kind="Authorization"\} 2$/m);
  assert.match(text, /^skiff_policies_failing_closed\{kind="Authorization"\} 1$/m);
  assert.match(text, /^skiff_policies_failing_closed\{kind="L7Policy"\} 0$/m);
});

Deno.test("ClientConfig denies all to a workload whose update did not decode, until one does", async (t) => {
  // The attack: db's new version names a selector DENY (shop/deny-db) and carries a field this proxy does not
  // know. Refused, db kept its old list, without the DENY, so everything it was meant to deny went through.
  const denyDb = {
    kind: "Authorization" as const,
    name: "shop/deny-db",
    version: "v",
    body: { name: "deny-db", namespace: "shop", scope: "WORKLOAD_SELECTOR", action: "DENY", rules: [{}] },
  };
  const db = WORKLOADS[1];
  const dbUpdate = (extra: Record<string, unknown>) => ({
    kind: "Workload" as const,
    name: db.uid,
    version: "w2",
    body: { ...db, authorizationPolicies: ["shop/deny-db"], ...extra },
  });
  await t.step("refused: db denies all, the others do not", () => {
    const { config, lines } = capture();
    config.apply(snapshot([denyDb]));
    assert.equal(config.apply(delta([dbUpdate({ future: true })])).refused, 1);
    assert.deepEqual(denyingAll(config), ["db"]);
    const standIn = config.state.policies.forWorkload(config.state.workloads.byUid(db.uid)!)[0];
    assert.deepEqual([standIn.action, standIn.rules], ["DENY", [{ clauses: [] }]]);
    assert.match(
      standIn.refused!,
      /workload Kubernetes\/\/Pod\/shop\/db did not decode: .*future: is not a known field/,
    );
    const line = lines.find((l) => l.resource === `Workload/${db.uid}`)!;
    assert.equal(line.denies, `workload ${db.uid}`);
  });
  await t.step("a version that decodes ends it, and the DENY it names applies", () => {
    const { config } = capture();
    config.apply(snapshot([denyDb]));
    config.apply(delta([dbUpdate({ future: true })]));
    config.apply(delta([dbUpdate({})]));
    assert.deepEqual(denyingAll(config), []);
    const names = config.state.policies.forWorkload(config.state.workloads.byUid(db.uid)!).map((a) => a.name);
    assert.deepEqual(names, ["deny-db"]);
  });
  await t.step("a removal ends it", () => {
    const { config } = capture();
    config.apply(snapshot([denyDb]));
    config.apply(delta([dbUpdate({ future: true })]));
    config.apply(delta([], [{ kind: "Workload", name: db.uid }]));
    assert.deepEqual(config.state.policies.refusedWorkloads(), []);
  });
  await t.step("a snapshot that does not resend it ends it; one that resends it undecodable keeps it", () => {
    const { config } = capture();
    config.apply(snapshot([denyDb]));
    config.apply(delta([dbUpdate({ future: true })]));
    const resent = snapshot([denyDb]);
    resent.resources = resent.resources.map((r) => r.name === db.uid ? dbUpdate({ future: true }) : r);
    config.apply(resent);
    assert.deepEqual(denyingAll(config), ["db"]);
    config.apply(snapshot([denyDb]));
    assert.deepEqual(denyingAll(config), []);
  });
  await t.step("a removal of another resource leaves it", () => {
    const { config } = capture();
    config.apply(snapshot([denyDb]));
    config.apply(delta([dbUpdate({ future: true })]));
    config.apply(delta([], [{ kind: "Authorization", name: db.uid }, { kind: "Workload", name: WORKLOADS[0].uid }]));
    assert.deepEqual(config.state.policies.refusedWorkloads(), [db.uid]);
  });
});
