import assert from "node:assert/strict";
import {
  type Authorization,
  CIDR_FIELDS,
  decodeAuthorization,
  decodeMatch,
  decodeStringMatch,
  emptyMatch,
  encodeAuthorization,
  isEmptyMatch,
  type Match,
  policyKey,
  PORT_FIELDS,
  SERVICE_ACCOUNT_FIELDS,
  STRING_FIELDS,
} from "./authorization.ts";
import { assertInvalid } from "../tests/harness/assert.ts";

/** A match document with every field and its negation populated. */
function fullMatch(): Record<string, unknown> {
  return {
    namespaces: [{ exact: "shop" }, { prefix: "team-" }],
    notNamespaces: [{ suffix: "-test" }],
    principals: [{ exact: "cluster.local/ns/shop/sa/cart" }, { presence: true }],
    notPrincipals: [{ prefix: "cluster.local/ns/dev/" }],
    sourceIps: ["10.0.0.0/8", "FD00::1"],
    notSourceIps: ["10.1.0.0/16"],
    destinationIps: ["192.168.0.0/24"],
    notDestinationIps: ["192.168.0.1"],
    destinationPorts: [80, 443],
    notDestinationPorts: [8080],
    serviceAccounts: [{ namespace: "shop", serviceAccount: "cart" }],
    notServiceAccounts: [{ namespace: "dev", serviceAccount: "*" }],
  };
}

const FULL_MATCH: Match = {
  namespaces: [{ exact: "shop" }, { prefix: "team-" }],
  notNamespaces: [{ suffix: "-test" }],
  principals: [{ exact: "cluster.local/ns/shop/sa/cart" }, { presence: true }],
  notPrincipals: [{ prefix: "cluster.local/ns/dev/" }],
  sourceIps: [{ address: "10.0.0.0", length: 8 }, { address: "fd00::1", length: 128 }],
  notSourceIps: [{ address: "10.1.0.0", length: 16 }],
  destinationIps: [{ address: "192.168.0.0", length: 24 }],
  notDestinationIps: [{ address: "192.168.0.1", length: 32 }],
  destinationPorts: [80, 443],
  notDestinationPorts: [8080],
  serviceAccounts: [{ namespace: "shop", serviceAccount: "cart" }],
  // A service account is compared literally: '*' is a name here, never a pattern.
  notServiceAccounts: [{ namespace: "dev", serviceAccount: "*" }],
};

Deno.test("decodeAuthorization() reads a full policy with rules, clauses and every match field", () => {
  const doc = {
    name: "allow-shop",
    namespace: "shop",
    scope: "NAMESPACE",
    action: "DENY",
    dryRun: true,
    rules: [
      { clauses: [{ matches: [fullMatch(), {}] }, { matches: [] }] },
      { clauses: [] },
      {},
    ],
  };
  const want: Authorization = {
    name: "allow-shop",
    namespace: "shop",
    scope: "NAMESPACE",
    action: "DENY",
    dryRun: true,
    rules: [
      { clauses: [{ matches: [FULL_MATCH, emptyMatch()] }, { matches: [] }] },
      { clauses: [] },
      { clauses: [] },
    ],
  };
  assert.deepEqual(decodeAuthorization(doc), want);
});

Deno.test("decodeAuthorization() defaults to a GLOBAL ALLOW policy with no rules, not a dry run", () => {
  assert.deepEqual(decodeAuthorization({ name: "p" }), {
    name: "p",
    namespace: "",
    scope: "GLOBAL",
    action: "ALLOW",
    rules: [],
    dryRun: false,
  });
});

Deno.test("the match field lists cover every field of a Match", () => {
  const all = [...STRING_FIELDS, ...CIDR_FIELDS, ...PORT_FIELDS, ...SERVICE_ACCOUNT_FIELDS].sort();
  assert.deepEqual(all, Object.keys(FULL_MATCH).sort());
  assert.deepEqual(Object.keys(decodeMatch({}, "m")).sort(), all);
});

Deno.test("decodeMatch() reads each field and its not* twin on its own", async (t) => {
  const full = fullMatch();
  for (const key of Object.keys(full) as (keyof Match)[]) {
    await t.step(key, () => {
      const m = decodeMatch({ [key]: full[key] }, "m");
      assert.deepEqual(m[key], FULL_MATCH[key]);
      for (const other of Object.keys(m) as (keyof Match)[]) {
        if (other !== key) assert.deepEqual(m[other], [], `${other} stays empty`);
      }
      assert.ok(!isEmptyMatch(m));
    });
  }
});

Deno.test("isEmptyMatch() is true only for a match with no field at all", () => {
  assert.ok(isEmptyMatch(decodeMatch({}, "m")));
  assert.ok(isEmptyMatch(decodeMatch({ namespaces: [], notDestinationPorts: null }, "m")));
  assert.ok(!isEmptyMatch(decodeMatch({ notDestinationPorts: [22] }, "m")));
  assert.ok(!isEmptyMatch(decodeMatch({ notServiceAccounts: [{ namespace: "a", serviceAccount: "b" }] }, "m")));
  assert.ok(!isEmptyMatch(FULL_MATCH));
});

Deno.test("decodeStringMatch() reads exact, prefix, suffix and presence", async (t) => {
  const cases: [unknown, unknown][] = [
    [{ exact: "shop" }, { exact: "shop" }],
    [{ exact: "" }, { exact: "" }],
    [{ prefix: "team-" }, { prefix: "team-" }],
    [{ suffix: "-test" }, { suffix: "-test" }],
    [{ presence: true }, { presence: true }],
    [{ exact: "a", prefix: null }, { exact: "a" }],
  ];
  for (const [doc, want] of cases) {
    await t.step(JSON.stringify(doc), () => assert.deepEqual(decodeStringMatch(doc, "s"), want));
  }
});

Deno.test("decodeStringMatch() rejects two kinds, none, or a bad value, naming the path", async (t) => {
  const cases: [string, unknown, string, RegExp][] = [
    ["exact and prefix", { exact: "a", prefix: "b" }, "s", /exactly one of exact, prefix, suffix or presence/],
    ["prefix and presence", { prefix: "a", presence: true }, "s", /exactly one of/],
    ["none", {}, "s", /exactly one of/],
    ["only nulls", { exact: null }, "s", /exactly one of/],
    ["a bare string", "shop", "s", /expected an object/],
    ["NUL in exact", { exact: "sh\0op" }, "s.exact", /NUL/],
    ["NUL in prefix", { prefix: "\0" }, "s.prefix", /NUL/],
    ["NUL in suffix", { suffix: "a\0" }, "s.suffix", /NUL/],
    ["presence false", { presence: false }, "s.presence", /expected true/],
    ["presence as a string", { presence: "true" }, "s.presence", /expected true/],
    ["exact of the wrong type", { exact: 5 }, "s.exact", /expected a string, got 5/],
    ["exact too long", { exact: "x".repeat(1025) }, "s.exact", /at most 1024/],
    ["unknown kind", { regex: ".*" }, "s", /exactly one of/],
    ["unknown field beside a kind", { exact: "a", regex: ".*" }, "s.regex", /not a known field/],
  ];
  for (const [name, doc, field, message] of cases) {
    await t.step(name, () => void assertInvalid(() => decodeStringMatch(doc, "s"), field, message));
  }
});

Deno.test("decodeAuthorization() names the exact path of every kind of bad value", async (t) => {
  const match = "authorization.rules[0].clauses[0].matches[0]";
  const inMatch = (m: Record<string, unknown>) => ({ name: "p", rules: [{ clauses: [{ matches: [m] }] }] });
  const cases: [string, Record<string, unknown>, string, RegExp][] = [
    ["missing name", {}, "authorization.name", /is required/],
    ["empty name", { name: "" }, "authorization.name", /must not be empty/],
    ["namespace not a DNS label", { name: "p", namespace: "Shop" }, "authorization.namespace", /DNS label/],
    [
      "scope NAMESPACE without a namespace",
      { name: "p", scope: "NAMESPACE" },
      "authorization.namespace",
      /required for scope NAMESPACE/,
    ],
    [
      "scope WORKLOAD_SELECTOR without a namespace",
      {
        name: "p",
        scope: "WORKLOAD_SELECTOR",
      },
      "authorization.namespace",
      /required for scope WORKLOAD_SELECTOR/,
    ],
    [
      "unknown scope",
      { name: "p", scope: "CLUSTER" },
      "authorization.scope",
      /one of GLOBAL, NAMESPACE, WORKLOAD_SELECTOR/,
    ],
    ["unknown action", { name: "p", action: "AUDIT" }, "authorization.action", /one of ALLOW, DENY/],
    ["dryRun not a boolean", { name: "p", dryRun: "yes" }, "authorization.dryRun", /true or false/],
    ["rules not a list", { name: "p", rules: {} }, "authorization.rules", /expected a list/],
    ["rule not an object", { name: "p", rules: [[]] }, "authorization.rules[0]", /expected an object/],
    [
      "unknown field in a rule",
      { name: "p", rules: [{ from: [] }] },
      "authorization.rules[0].from",
      /not a known field/,
    ],
    [
      "clause not an object",
      { name: "p", rules: [{ clauses: [1] }] },
      "authorization.rules[0].clauses[0]",
      /expected an object/,
    ],
    [
      "unknown field in a clause",
      {
        name: "p",
        rules: [{ clauses: [{ match: [] }] }],
      },
      "authorization.rules[0].clauses[0].match",
      /not a known field/,
    ],
    ["match not an object", { name: "p", rules: [{ clauses: [{ matches: [null] }] }] }, match, /expected an object/],
    ["unknown field in a match", inMatch({ paths: ["/"] }), `${match}.paths`, /not a known field/],
    ["port 0", inMatch({ destinationPorts: [0] }), `${match}.destinationPorts[0]`, /integer from 1 to 65535, got 0/],
    ["port 70000", inMatch({ destinationPorts: [80, 70000] }), `${match}.destinationPorts[1]`, /got 70000/],
    ["negated port 70000", inMatch({ notDestinationPorts: [70000] }), `${match}.notDestinationPorts[0]`, /got 70000/],
    ["port as a string", inMatch({ destinationPorts: ["80"] }), `${match}.destinationPorts[0]`, /got "80"/],
    ["bad source range", inMatch({ sourceIps: ["10.0.0.1/8"] }), `${match}.sourceIps[0]`, /host bits/],
    ["bad negated source range", inMatch({ notSourceIps: ["nope"] }), `${match}.notSourceIps[0]`, /CIDR/],
    [
      "bad destination range",
      inMatch({ destinationIps: ["10.0.0.0/40"] }),
      `${match}.destinationIps[0]`,
      /prefix length/,
    ],
    [
      "bad negated destination range",
      inMatch({ notDestinationIps: [1] }),
      `${match}.notDestinationIps[0]`,
      /expected a string/,
    ],
    [
      "string match with two kinds",
      inMatch({
        principals: [{ exact: "a", suffix: "b" }],
      }),
      `${match}.principals[0]`,
      /exactly one of/,
    ],
    ["string match with none", inMatch({ notPrincipals: [{}] }), `${match}.notPrincipals[0]`, /exactly one of/],
    [
      "NUL in a namespace match",
      inMatch({
        namespaces: [{ exact: "ok" }, { prefix: "a\0" }],
      }),
      `${match}.namespaces[1].prefix`,
      /NUL/,
    ],
    [
      "NUL in a negated namespace match",
      inMatch({ notNamespaces: [{ exact: "\0" }] }),
      `${match}.notNamespaces[0].exact`,
      /NUL/,
    ],
    [
      "service account namespace bad",
      inMatch({
        serviceAccounts: [{ namespace: "A", serviceAccount: "b" }],
      }),
      `${match}.serviceAccounts[0].namespace`,
      /DNS label/,
    ],
    [
      "service account empty",
      inMatch({
        notServiceAccounts: [{ namespace: "a", serviceAccount: "" }],
      }),
      `${match}.notServiceAccounts[0].serviceAccount`,
      /must not be empty/,
    ],
    [
      "service account with an unknown field",
      inMatch({
        serviceAccounts: [{ namespace: "a", serviceAccount: "b", name: "c" }],
      }),
      `${match}.serviceAccounts[0].name`,
      /not a known field/,
    ],
    ["match field not a list", inMatch({ namespaces: { exact: "a" } }), `${match}.namespaces`, /expected a list/],
    [
      "too many items",
      inMatch({
        destinationPorts: new Array(4097).fill(80),
      }),
      `${match}.destinationPorts`,
      /4097 items, at most 4096/,
    ],
    ["misspelt top-level field", { name: "p", dry_run: true }, "authorization.dry_run", /not a known field/],
  ];
  for (const [name, doc, field, message] of cases) {
    await t.step(name, () => void assertInvalid(() => decodeAuthorization(doc), field, message));
  }
});

Deno.test("decodeAuthorization() reports the second rule's path, not the first's", () => {
  const doc = {
    name: "p",
    rules: [
      { clauses: [{ matches: [{ destinationPorts: [80] }] }] },
      { clauses: [{ matches: [{}] }, { matches: [{ destinationPorts: [1], sourceIps: ["x"] }] }] },
    ],
  };
  assertInvalid(() => decodeAuthorization(doc), "authorization.rules[1].clauses[1].matches[0].sourceIps[0]");
});

Deno.test("decodeAuthorization() rejects a document that is not an object", async (t) => {
  for (const value of [null, "p", 1, []]) {
    await t.step(JSON.stringify(value), () => {
      assertInvalid(() => decodeAuthorization(value, "policies[4]"), "policies[4]", /expected an object/);
    });
  }
});

Deno.test("policyKey() is namespace/name", () => {
  assert.equal(policyKey({ namespace: "shop", name: "allow" }), "shop/allow");
  assert.equal(
    policyKey(decodeAuthorization({ name: "global-deny", namespace: "istio-system" })),
    "istio-system/global-deny",
  );
});

Deno.test("encodeAuthorization() gives the form decodeAuthorization() reads: the round trip is the identity", () => {
  const a: Authorization = {
    name: "p",
    namespace: "shop",
    scope: "WORKLOAD_SELECTOR",
    action: "DENY",
    rules: [{ clauses: [{ matches: [FULL_MATCH, emptyMatch()] }, { matches: [] }] }, { clauses: [] }],
    dryRun: true,
  };
  const wire = JSON.parse(JSON.stringify(encodeAuthorization(a)));
  assert.deepEqual(wire.rules[0].clauses[0].matches[0].sourceIps, ["10.0.0.0/8", "fd00::1/128"]);
  assert.deepEqual(decodeAuthorization(wire), a);
  // The model itself, serialized as it is, is refused: the bug this encoding fixed.
  assertInvalid(
    () => decodeAuthorization(JSON.parse(JSON.stringify(a))),
    "authorization.rules[0].clauses[0].matches[0].sourceIps[0]",
  );
});
