import assert from "node:assert/strict";
import pino from "pino";
import { authorize, type ConnectionAttributes } from "../dataplane/ztunnel/rbac.ts";
import { ClientConfig } from "../mesh/control_client.ts";
import { SpiffeId } from "../mesh/identity.ts";
import { decodeStreamMessage } from "../mesh/protocol/config_stream.ts";
import { Publisher } from "../control/push.ts";
import { parseManifestFile } from "../control/sources/manifests.ts";
import { DEFAULT_SETTINGS } from "../control/build/common.ts";
import { buildMesh } from "../control/build/mod.ts";

const SERVER_IP = "10.0.1.2";

const MESH = `apiVersion: v1
kind: Namespace
metadata: { name: shop, labels: { istio.io/dataplane-mode: ambient } }
---
apiVersion: v1
kind: Pod
metadata: { name: web-1, namespace: shop, labels: { app: web } }
spec: { nodeName: node-a, serviceAccountName: web }
status: { podIP: ${SERVER_IP}, phase: Running }
---
`;

/** The connections each case is decided for: who, to which port. */
const CONNECTIONS = {
  "shop/client→8080": { identity: "spiffe://cluster.local/ns/shop/sa/client", port: 8080 },
  "other/stranger→8080": { identity: "spiffe://cluster.local/ns/other/sa/stranger", port: 8080 },
  "shop/client→9090": { identity: "spiffe://cluster.local/ns/shop/sa/client", port: 9090 },
  "plaintext→9090": { identity: undefined, port: 9090 },
} as const;
type Conn = keyof typeof CONNECTIONS;
const ALL = Object.keys(CONNECTIONS) as Conn[];

/**
 * Manifest → buildMesh → the stream's snapshot line → a proxy's ClientConfig → ztunnel's decision, for each
 * connection: the list of those denied, and the warnings the control plane wrote for the policy.
 */
function denied(
  spec: string,
  { selector = "selector: { matchLabels: { app: web } }", namespace = "shop" } = {},
): { denied: Conn[]; notes: string[]; scope: string[] } {
  const yaml = `${MESH}apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: p, namespace: ${namespace} }
spec:
  ${selector}
${spec}
`;
  const parsed = parseManifestFile(yaml, "test.yaml");
  assert.deepEqual(parsed.problems, []);
  const model = buildMesh({ objects: parsed.objects, registrations: [], vips: new Map(), settings: DEFAULT_SETTINGS });
  const publisher = new Publisher();
  publisher.publish(model);
  const line = new TextDecoder().decode(publisher.snapshot({}).lines[0]);
  const message = decodeStreamMessage(line.trim());
  if (message.type !== "snapshot") throw new Error(`expected a snapshot, got ${message.type}`);
  const config = new ClientConfig(pino({ level: "silent" }));
  assert.equal(config.apply(message).refused, 0, "the proxy decodes every resource");
  const server = config.state.workloads.byUid("Kubernetes//Pod/shop/web-1");
  assert.ok(server, "the server's workload reached the proxy");
  const policies = config.state.policies.forWorkload(server);
  return {
    denied: ALL.filter((name) => {
      const c = CONNECTIONS[name];
      const attrs: ConnectionAttributes = { srcIp: "10.0.2.9", dstIp: SERVER_IP, dstPort: c.port };
      if (c.identity) attrs.identity = SpiffeId.parse(c.identity);
      return !authorize(policies, attrs).allowed;
    }),
    notes: model.notes.filter((n) => n.key === `AuthorizationPolicy/${namespace}/p`).map((n) => n.message),
    scope: policies.map((p) => p.scope),
  };
}

/** Each field ztunnel cannot see, as the YAML of a `from` source, a `to` operation or a `when` condition. */
const L7_FIELDS: { name: string; where: "source" | "operation" | "when"; yaml: string }[] = [
  { name: "methods", where: "operation", yaml: "methods: [GET]" },
  { name: "notMethods", where: "operation", yaml: "notMethods: [POST]" },
  { name: "paths", where: "operation", yaml: "paths: [/admin]" },
  { name: "notPaths", where: "operation", yaml: "notPaths: [/public]" },
  { name: "hosts", where: "operation", yaml: "hosts: [web.example.com]" },
  { name: "notHosts", where: "operation", yaml: "notHosts: [public.example.com]" },
  { name: "requestPrincipals", where: "source", yaml: "requestPrincipals: [issuer.example.com/alice]" },
  { name: "notRequestPrincipals", where: "source", yaml: 'notRequestPrincipals: ["*"]' },
  { name: "remoteIpBlocks", where: "source", yaml: "remoteIpBlocks: [203.0.113.0/24]" },
  { name: "notRemoteIpBlocks", where: "source", yaml: "notRemoteIpBlocks: [198.51.100.0/24]" },
  { name: "request.headers", where: "when", yaml: "{ key: 'request.headers[x-token]', values: [secret] }" },
  { name: "request.auth.claims", where: "when", yaml: "{ key: 'request.auth.claims[iss]', values: [issuer] }" },
  { name: "remote.ip", where: "when", yaml: "{ key: remote.ip, values: [203.0.113.0/24] }" },
];

/** The L4 field each L7 field is combined with, as YAML of the same kind, and the connections it covers. */
const L4_FIELDS: { name: string; where: "source" | "operation"; yaml: string; covers: Conn[] }[] = [
  { name: "none", where: "source", yaml: "", covers: ALL },
  {
    name: "principals",
    where: "source",
    yaml: "principals: [cluster.local/ns/shop/sa/client]",
    covers: ["shop/client→8080", "shop/client→9090"],
  },
  {
    name: "namespaces",
    where: "source",
    yaml: "namespaces: [shop]",
    covers: ["shop/client→8080", "shop/client→9090"],
  },
  { name: "ports", where: "operation", yaml: 'ports: ["8080"]', covers: ["shop/client→8080", "other/stranger→8080"] },
];

/** One rule holding the L7 field and the L4 one: in one entry when they are of the same kind, else apart. */
function rule(l7: typeof L7_FIELDS[number], l4: typeof L4_FIELDS[number]): string {
  const from: string[] = [];
  const to: string[] = [];
  const when: string[] = [];
  const entry = (where: string, yaml: string) =>
    (where === "source" ? from : where === "operation" ? to : when).push(yaml);
  if (l4.yaml === "") entry(l7.where, l7.yaml);
  else if (l4.where === l7.where) entry(l4.where, `${l4.yaml}, ${l7.yaml}`);
  else {
    entry(l4.where, l4.yaml);
    entry(l7.where, l7.yaml);
  }
  const parts = [
    from.length ? `from: [${from.map((s) => `{ source: { ${s} } }`).join(", ")}]` : "",
    to.length ? `to: [${to.map((s) => `{ operation: { ${s} } }`).join(", ")}]` : "",
    when.length ? `when: [${when.join(", ")}]` : "",
  ].filter((p) => p !== "");
  return `  rules: [{ ${parts.join(", ")} }]`;
}

Deno.test("a DENY enforced by ztunnel denies every connection its L4 fields cover, whatever L7 fields it holds", async (t) => {
  for (const l7 of L7_FIELDS) {
    for (const l4 of L4_FIELDS) {
      const label = l4.name === "none" ? `${l7.name} alone` : `${l7.name} with ${l4.name}`;
      await t.step(`${label}: denies ${l4.covers.length === ALL.length ? "everything" : l4.covers.join(", ")}`, () => {
        const out = denied(`  action: DENY\n${rule(l7, l4)}`);
        assert.deepEqual(out.denied, l4.covers);
        assert.equal(out.notes.length, 1);
        assert.match(out.notes[0], /which ztunnel cannot check; .*denies all the traffic it could cover/);
      });
    }
  }
});

Deno.test("a DENY entry that held only L7 fields matches everything; the rule's other clauses still narrow it", async (t) => {
  const cases: { name: string; rules: string; denied: Conn[] }[] = [
    {
      name: "an L4 source beside an L7-only source: any source",
      rules: `  rules:
    - from: [{ source: { principals: [cluster.local/ns/shop/sa/client] } }, { source: { requestPrincipals: ["*"] } }]`,
      denied: ALL,
    },
    {
      name: "an L4 operation beside an L7-only operation: any port",
      rules: `  rules: [{ to: [{ operation: { ports: ["8080"] } }, { operation: { paths: [/admin] } }] }]`,
      denied: ALL,
    },
    {
      name: "an L7-only source with an L4 operation: the operation's port",
      rules:
        `  rules: [{ from: [{ source: { remoteIpBlocks: [203.0.113.0/24] } }], to: [{ operation: { ports: ["9090"] } }] }]`,
      denied: ["shop/client→9090", "plaintext→9090"],
    },
    {
      name: "an L7-only rule beside an L4 rule: everything",
      rules: `  rules:
    - from: [{ source: { namespaces: [other] } }]
    - to: [{ operation: { methods: [DELETE] } }]`,
      denied: ALL,
    },
    {
      name: "an L4 when beside an L7-only operation: the when's port",
      rules:
        `  rules: [{ to: [{ operation: { methods: [GET] } }], when: [{ key: destination.port, values: ["8080"] }] }]`,
      denied: ["shop/client→8080", "other/stranger→8080"],
    },
  ];
  for (const c of cases) {
    await t.step(c.name, () => assert.deepEqual(denied(`  action: DENY\n${c.rules}`).denied, c.denied));
  }
});

Deno.test("a DENY with L7 fields is read the same way at every scope ztunnel enforces", async (t) => {
  const scopes = [
    { scope: "WORKLOAD_SELECTOR", selector: undefined, namespace: "shop" },
    { scope: "NAMESPACE", selector: "", namespace: "shop" },
    { scope: "GLOBAL", selector: "", namespace: DEFAULT_SETTINGS.rootNamespace },
  ];
  for (const s of scopes) {
    await t.step(s.scope, () => {
      const out = denied(`  action: DENY\n  rules: [{ to: [{ operation: { methods: [GET] } }] }]`, s);
      assert.deepEqual(out.scope, [s.scope]);
      assert.deepEqual(out.denied, ALL);
    });
  }
});

Deno.test("an ALLOW enforced by ztunnel keeps today's reading: a rule with L7 fields is dropped", async (t) => {
  await t.step("its only rule dropped, the policy allows nothing", () => {
    const out = denied(
      `  rules: [{ from: [{ source: { principals: ["*"] } }], to: [{ operation: { methods: [GET] } }] }]`,
    );
    assert.deepEqual(out.denied, ALL);
    assert.match(out.notes[0], /the rule is dropped and allows nothing/);
  });
  await t.step("an L4 rule beside it still allows what it names", () => {
    const out = denied(`  rules:
    - to: [{ operation: { paths: [/admin] } }]
    - to: [{ operation: { ports: ["9090"] } }]`);
    assert.deepEqual(out.denied, ["shop/client→8080", "other/stranger→8080"]);
  });
});

Deno.test("a policy with IP ranges reaches ztunnel in a form it decodes, and is enforced as written", async (t) => {
  // The client connects from 10.0.2.9 to the server at 10.0.1.2 (denied()). The model holds ranges as Cidr
  // objects; the stream must carry them as `address/length`, the form decodeAuthorization reads, or every proxy
  // refuses the policy (and now fails closed on it).
  const cases: { name: string; spec: string; denied: Conn[] }[] = [
    {
      name: "ALLOW ipBlocks holding the client",
      spec: `  rules: [{ from: [{ source: { ipBlocks: [10.0.2.0/24] } }] }]`,
      denied: [],
    },
    {
      name: "ALLOW ipBlocks elsewhere",
      spec: `  rules: [{ from: [{ source: { ipBlocks: [192.0.2.0/24] } }] }]`,
      denied: ALL,
    },
    {
      name: "DENY notIpBlocks holding the client",
      spec: `  action: DENY\n  rules: [{ from: [{ source: { notIpBlocks: [10.0.2.0/24] } }] }]`,
      denied: [],
    },
    {
      name: "DENY when source.ip is the client",
      spec: `  action: DENY\n  rules: [{ when: [{ key: source.ip, values: [10.0.2.9] }] }]`,
      denied: ALL,
    },
    {
      name: "DENY when destination.ip is the server, on 8080",
      spec:
        `  action: DENY\n  rules: [{ to: [{ operation: { ports: ["8080"] } }], when: [{ key: destination.ip, values: [10.0.1.2/32] }] }]`,
      denied: ["shop/client→8080", "other/stranger→8080"],
    },
    {
      name: "DENY when destination.ip is not the server",
      spec: `  action: DENY\n  rules: [{ when: [{ key: destination.ip, notValues: [10.0.1.0/24] }] }]`,
      denied: [],
    },
  ];
  for (const c of cases) await t.step(c.name, () => assert.deepEqual(denied(c.spec).denied, c.denied));
});

Deno.test("readAuthorizationPolicy() refuses the empty parts Istio's validation refuses, which a DENY would skip", async (t) => {
  // Before, each was read: an empty source, operation or condition became an empty match, which never matches,
  // so a DENY holding one denied nothing and no one was told; `from: []` read as "any source".
  const cases: { name: string; rule: string; field: string; message: RegExp }[] = [
    {
      name: "a source with no field",
      rule: "from: [{ source: {} }]",
      field: "spec.rules[0].from[0].source",
      message: /must not be empty/,
    },
    {
      name: "a from entry with no source",
      rule: "from: [{}]",
      field: "spec.rules[0].from[0].source",
      message: /is required/,
    },
    {
      name: "an operation with no field",
      rule: "to: [{ operation: {} }]",
      field: "spec.rules[0].to[0].operation",
      message: /must not be empty/,
    },
    {
      name: "a to entry with no operation",
      rule: "to: [{}]",
      field: "spec.rules[0].to[0].operation",
      message: /is required/,
    },
    { name: "an empty from list", rule: "from: []", field: "spec.rules[0].from", message: /must not be empty/ },
    { name: "an empty to list", rule: "to: []", field: "spec.rules[0].to", message: /must not be empty/ },
    {
      name: "a condition with neither values nor notValues",
      rule: "when: [{ key: source.namespace }]",
      field: "spec.rules[0].when[0]",
      message: /values or notValues/,
    },
    {
      name: "a condition with empty values",
      rule: "when: [{ key: destination.port, values: [] }]",
      field: "spec.rules[0].when[0]",
      message: /values or notValues/,
    },
  ];
  for (const c of cases) {
    await t.step(c.name, () => {
      const yaml = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: p, namespace: shop }
spec:
  action: DENY
  rules: [{ ${c.rule} }]
`;
      const problems = parseManifestFile(yaml, "test.yaml").problems;
      assert.equal(problems.length, 1, `expected one problem, got ${JSON.stringify(problems)}`);
      assert.equal(problems[0].field, c.field);
      assert.match(problems[0].message, c.message);
    });
  }
});

Deno.test("a serviceAccounts pattern ztunnel cannot match is read the safe way, and one Istio refuses is refused", async (t) => {
  await t.step("DENY serviceAccounts [shop/*]: a name, never a pattern; the rule denies all it could cover", () => {
    // Before: compared literally, `*` never matched a real service account, so the DENY denied nothing.
    const out = denied(`  action: DENY\n  rules: [{ from: [{ source: { serviceAccounts: ["shop/*"] } }] }]`);
    assert.deepEqual(out.denied, ALL);
    assert.match(out.notes.join("\n"), /serviceAccounts \(with '\*'\), which ztunnel cannot check/);
  });
  await t.step("ALLOW serviceAccounts [shop/*]: the rule is dropped and allows nothing", () => {
    const out = denied(`  rules: [{ from: [{ source: { serviceAccounts: ["shop/*"] } }] }]`);
    assert.deepEqual(out.denied, ALL);
    assert.equal(out.notes.length, 1);
  });
  await t.step("serviceAccounts with principals or namespaces is refused, as Istio's validation does", () => {
    for (const other of ["principals: [cluster.local/ns/shop/sa/client]", "notNamespaces: [dev]"]) {
      const yaml = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: p, namespace: shop }
spec:
  action: DENY
  rules: [{ from: [{ source: { serviceAccounts: [shop/client], ${other} } }] }]
`;
      const problems = parseManifestFile(yaml, "test.yaml").problems;
      assert.equal(problems.length, 1, `${other}: expected one problem, got ${JSON.stringify(problems)}`);
      assert.equal(problems[0].field, "spec.rules[0].from[0].source.serviceAccounts");
      assert.match(problems[0].message, /cannot be set with principals or namespaces/);
    }
  });
});
