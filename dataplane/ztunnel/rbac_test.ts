import assert from "node:assert/strict";
import { type Authorization, decodeAuthorization } from "../../mesh/authorization.ts";
import { SpiffeId } from "../../mesh/identity.ts";
import { failClosedAuthorization } from "../../mesh/refused_policy.ts";
import { authorize, type ConnectionAttributes, policyMatches, stringMatches } from "./rbac.ts";

const BOB = SpiffeId.parse("spiffe://cluster.local/ns/shop/sa/bob");
const WAYPOINT = SpiffeId.parse("spiffe://cluster.local/ns/shop/sa/waypoint");
const MTLS: ConnectionAttributes = { srcIp: "10.0.1.2", dstIp: "10.0.2.2", dstPort: 8080, identity: BOB };
const PLAIN: ConnectionAttributes = { srcIp: "10.0.1.2", dstIp: "10.0.2.2", dstPort: 8080 };

function policy(doc: Record<string, unknown>): Authorization {
  return decodeAuthorization({ name: "p", namespace: "shop", scope: "NAMESPACE", ...doc });
}
/** A policy with one rule, one clause, one match. */
function onMatch(action: "ALLOW" | "DENY", match: Record<string, unknown>, name = "p"): Authorization {
  return policy({ name, action, rules: [{ clauses: [{ matches: [match] }] }] });
}

Deno.test("stringMatches() follows exact, prefix, suffix and presence; an absent value matches nothing", async (t) => {
  const cases: [Parameters<typeof stringMatches>[0], string | undefined, boolean][] = [
    [{ exact: "a/b" }, "a/b", true],
    [{ exact: "a/b" }, "a/bc", false],
    [{ prefix: "cluster.local/ns/shop/" }, "cluster.local/ns/shop/sa/bob", true],
    [{ prefix: "cluster.local/ns/shop/" }, "cluster.local/ns/shopx/sa/bob", false],
    [{ suffix: "/sa/bob" }, "cluster.local/ns/shop/sa/bob", true],
    [{ suffix: "/sa/bob" }, "cluster.local/ns/shop/sa/bobby", false],
    [{ presence: true }, "anything", true],
    [{ presence: true }, undefined, false],
    [{ presence: true }, "", false],
    [{ exact: "" }, undefined, false],
  ];
  for (const [m, v, want] of cases) {
    await t.step(
      `${JSON.stringify(m)} on ${JSON.stringify(v)} → ${want}`,
      () => assert.equal(stringMatches(m, v), want),
    );
  }
});

Deno.test("authorize() orders DENY before ALLOW, allows without ALLOW policies, and denies when no ALLOW matches", async (t) => {
  const allowBob = onMatch("ALLOW", { principals: [{ exact: BOB.principal }] }, "allow-bob");
  const allowWaypoint = onMatch("ALLOW", { principals: [{ exact: WAYPOINT.principal }] }, "allow-waypoint");
  const denyBob = onMatch("DENY", { principals: [{ exact: BOB.principal }] }, "deny-bob");
  const denyOther = onMatch("DENY", { namespaces: [{ exact: "other" }] }, "deny-other");
  const cases: { name: string; policies: Authorization[]; allowed: boolean; policy?: string }[] = [
    { name: "no policies: allow", policies: [], allowed: true },
    { name: "only a DENY that does not match: allow", policies: [denyOther], allowed: true },
    { name: "a matching DENY: deny", policies: [denyBob], allowed: false, policy: "shop/deny-bob" },
    {
      name: "a matching DENY beats a matching ALLOW",
      policies: [allowBob, denyBob],
      allowed: false,
      policy: "shop/deny-bob",
    },
    { name: "a matching ALLOW: allow", policies: [allowWaypoint, allowBob], allowed: true, policy: "shop/allow-bob" },
    { name: "ALLOW policies exist but none matches: deny", policies: [allowWaypoint], allowed: false },
  ];
  for (const c of cases) {
    await t.step(c.name, () => {
      const d = authorize(c.policies, MTLS);
      assert.equal(d.allowed, c.allowed);
      assert.equal(d.policy, c.policy);
    });
  }
});

Deno.test("policyMatches() follows ztunnel's rule, clause and match structure", async (t) => {
  const bob = { principals: [{ exact: BOB.principal }] };
  const port9 = { destinationPorts: [9] };
  const cases: { name: string; rules: unknown[]; want: boolean }[] = [
    { name: "no rules never match (ALLOW with no rules denies all)", rules: [], want: false },
    { name: "rules: [{}] matches everything", rules: [{}], want: true },
    { name: "a clause with no matches is true", rules: [{ clauses: [{}] }], want: true },
    {
      name: "a clause holding only an empty match never matches",
      rules: [{ clauses: [{ matches: [{}] }] }],
      want: false,
    },
    {
      name: "empty matches are skipped beside a matching one",
      rules: [{ clauses: [{ matches: [{}, bob] }] }],
      want: true,
    },
    {
      name: "rules are OR",
      rules: [{ clauses: [{ matches: [port9] }] }, { clauses: [{ matches: [bob] }] }],
      want: true,
    },
    { name: "clauses are AND", rules: [{ clauses: [{ matches: [bob] }, { matches: [port9] }] }], want: false },
    { name: "matches are OR", rules: [{ clauses: [{ matches: [port9, bob] }] }], want: true },
    { name: "fields within a match are AND", rules: [{ clauses: [{ matches: [{ ...bob, ...port9 }] }] }], want: false },
  ];
  for (const c of cases) {
    await t.step(c.name, () => assert.equal(policyMatches(policy({ action: "ALLOW", rules: c.rules }), MTLS), c.want));
  }
});

Deno.test("every match field and its not* twin decides as Istio's does", async (t) => {
  const cases: { name: string; match: Record<string, unknown>; conn?: ConnectionAttributes; want: boolean }[] = [
    {
      name: "principals without spiffe:// match",
      match: { principals: [{ exact: "cluster.local/ns/shop/sa/bob" }] },
      want: true,
    },
    {
      name: "principals written with spiffe:// never match",
      match: { principals: [{ exact: "spiffe://cluster.local/ns/shop/sa/bob" }] },
      want: false,
    },
    { name: "principals suffix", match: { principals: [{ suffix: "/sa/bob" }] }, want: true },
    { name: "notPrincipals excludes", match: { notPrincipals: [{ exact: BOB.principal }] }, want: false },
    { name: "namespaces from the peer identity", match: { namespaces: [{ exact: "shop" }] }, want: true },
    { name: "notNamespaces", match: { notNamespaces: [{ exact: "shop" }] }, want: false },
    { name: "namespaces never match plaintext", match: { namespaces: [{ presence: true }] }, conn: PLAIN, want: false },
    { name: "principals never match plaintext", match: { principals: [{ presence: true }] }, conn: PLAIN, want: false },
    {
      name: "notPrincipals presence matches plaintext (STRICT)",
      match: { notPrincipals: [{ presence: true }] },
      conn: PLAIN,
      want: true,
    },
    { name: "notPrincipals presence does not match mTLS", match: { notPrincipals: [{ presence: true }] }, want: false },
    { name: "sourceIps CIDR", match: { sourceIps: ["10.0.1.0/24"] }, want: true },
    { name: "sourceIps outside", match: { sourceIps: ["10.0.9.0/24"] }, want: false },
    { name: "notSourceIps", match: { notSourceIps: ["10.0.1.2"] }, want: false },
    { name: "destinationIps", match: { destinationIps: ["10.0.2.2/32"] }, want: true },
    { name: "notDestinationIps", match: { notDestinationIps: ["10.0.0.0/8"] }, want: false },
    { name: "destinationPorts", match: { destinationPorts: [8080, 9090] }, want: true },
    { name: "notDestinationPorts", match: { notDestinationPorts: [8080] }, want: false },
    { name: "serviceAccounts", match: { serviceAccounts: [{ namespace: "shop", serviceAccount: "bob" }] }, want: true },
    {
      name: "serviceAccounts compare namespace too",
      match: { serviceAccounts: [{ namespace: "other", serviceAccount: "bob" }] },
      want: false,
    },
    {
      name: "a serviceAccount with dots is literal, not a regex",
      match: { serviceAccounts: [{ namespace: "shop", serviceAccount: "b.b" }] },
      want: false,
    },
    {
      name: "notServiceAccounts",
      match: { notServiceAccounts: [{ namespace: "shop", serviceAccount: "bob" }] },
      want: false,
    },
    {
      name: "notServiceAccounts matches plaintext",
      match: { notServiceAccounts: [{ namespace: "shop", serviceAccount: "bob" }] },
      conn: PLAIN,
      want: true,
    },
  ];
  for (const c of cases) {
    await t.step(c.name, () => assert.equal(policyMatches(onMatch("ALLOW", c.match), c.conn ?? MTLS), c.want));
  }
  await t.step("an IPv4 range never matches an IPv6 source", () => {
    const v6 = { ...MTLS, srcIp: "fd00::1" };
    assert.equal(policyMatches(onMatch("ALLOW", { sourceIps: ["0.0.0.0/0"] }), v6), false);
  });
});

Deno.test("STRICT peer authentication, as a DENY on notPrincipals presence, denies plaintext and admits mTLS", () => {
  const strict = onMatch("DENY", { notPrincipals: [{ presence: true }] }, "istio_converted_static_strict");
  assert.equal(authorize([strict], PLAIN).allowed, false);
  assert.equal(authorize([strict], MTLS).allowed, true);
});

Deno.test("dry-run policies are reported, never enforced", () => {
  const dry = policy({ name: "dry-deny", action: "DENY", dryRun: true, rules: [{}] });
  const dryAllow = policy({
    name: "dry-allow",
    action: "ALLOW",
    dryRun: true,
    rules: [{ clauses: [{ matches: [{ destinationPorts: [1] }] }] }],
  });
  const d = authorize([dry, dryAllow], MTLS);
  assert.equal(d.allowed, true, "a dry-run DENY does not deny, a dry-run ALLOW does not make ALLOW policies exist");
  assert.deepEqual(d.dryRunMatches, ["shop/dry-deny"]);
});

Deno.test("authorize() denies through a refused policy's stand-in, before any ALLOW, and says why", () => {
  const standIn = failClosedAuthorization(
    "shop/p",
    { namespace: "shop", scope: "NAMESPACE" },
    "extensions: is not a known field",
  );
  const allowBob = onMatch("ALLOW", { principals: [{ exact: BOB.principal }] }, "allow-bob");
  for (const c of [MTLS, PLAIN]) {
    const d = authorize([standIn, allowBob], c);
    assert.equal(d.allowed, false);
    assert.equal(d.policy, "shop/p");
    assert.equal(
      !d.allowed && d.reason,
      "policy shop/p could not be decoded (extensions: is not a known field); its scope denies all until a version " +
        "that decodes arrives",
    );
  }
});
