import assert from "node:assert/strict";
import pino from "pino";
import { authorize, type ConnectionAttributes } from "../../dataplane/ztunnel/rbac.ts";
import { ClientConfig } from "../../mesh/control_client.ts";
import { SpiffeId } from "../../mesh/identity.ts";
import { decodeStreamMessage } from "../../mesh/protocol/config_stream.ts";
import { Publisher } from "../push.ts";
import { parseManifestFile } from "../sources/manifests.ts";
import { DEFAULT_SETTINGS } from "./common.ts";
import { buildMesh } from "./mod.ts";

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
  const line = new TextDecoder().decode(publisher.snapshot({}).line);
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
