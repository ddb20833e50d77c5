import assert from "node:assert/strict";
import pino from "pino";
import { ClientConfig } from "../../mesh/control_client.ts";
import {
  authorizeRequest,
  ipInBlock,
  matchHost,
  matchPath,
  matchPolicyString,
  policyMatches,
  type RequestAttributes,
} from "./authz.ts";
import { normalizeHost, normalizePath } from "./normalize.ts";
import { op, policy, rule, src, when } from "./test_util.ts";
import type { L7Policy, L7Rule } from "../../mesh/l7.ts";

const BOB = "cluster.local/ns/shop/sa/bob";

const REQ: RequestAttributes = {
  method: "GET",
  path: "/",
  host: "web.shop.svc.cluster.local",
  port: 8080,
  headers: [],
  sourcePrincipal: BOB,
  sourceNamespace: "shop",
  sourceIp: "10.0.1.2",
  destinationIp: "10.96.0.10",
};
const PLAIN: RequestAttributes = { ...REQ, sourcePrincipal: undefined, sourceNamespace: undefined };

/** Decides a raw request target and authority as the waypoint would: normalize, then authorize. */
function decideRaw(policies: L7Policy[], target: string, authority = REQ.host): "allowed" | "denied" | "refused" {
  const t = normalizePath(target);
  const h = normalizeHost(authority);
  if ("error" in t || "error" in h) return "refused";
  return authorizeRequest(policies, { ...REQ, path: t.path, host: h.host }).allowed ? "allowed" : "denied";
}

Deno.test("authorizeRequest() denies every spelling of a denied path (CVE-2021-31920, CVE-2021-39156)", async (t) => {
  const deny = [policy("DENY", [rule({ to: [op({ paths: ["/admin", "/admin/*"] })] })])];
  const cases: [target: string, want: "allowed" | "denied" | "refused"][] = [
    ["/admin", "denied"],
    ["//admin", "denied"],
    ["/admin%2F", "denied"],
    ["/admin%2f", "denied"],
    ["/admin%2Fsecret", "denied"],
    ["/./admin", "denied"],
    ["/x/../admin", "denied"],
    ["/x/%2e%2e/admin", "denied"],
    ["/admin#x", "denied"],
    ["/admin?x=1", "denied"],
    ["/%61dmin", "denied"],
    ["/%61%64%6D%69%6E", "denied"],
    ["/admin/", "denied"],
    ["/admin/users", "denied"],
    ["/admin/./users/..", "denied"],
    ["/%5Cadmin", "denied"],
    ["/\\admin", "denied"],
    ["/admin%5Cx", "denied"],
    ["http://web/admin", "denied"],
    ["%5Cadmin", "refused"],
    ["\\admin", "refused"],
    ["/admin%00", "refused"],
    ["/admin\0", "refused"],
    ["/administrator", "allowed"],
    ["/Admin", "allowed"],
    ["/ADMIN/x", "allowed"],
    ["/x/admin", "allowed"],
    ["/%252Fadmin", "allowed"],
    ["/", "allowed"],
  ];
  for (const [target, want] of cases) {
    await t.step(`${JSON.stringify(target)} is ${want}`, () => assert.equal(decideRaw(deny, target), want));
  }
});

Deno.test("authorizeRequest() matches hosts case-insensitively and without ports or a trailing dot (CVE-2021-39155)", async (t) => {
  const deny = policy("DENY", [rule({ to: [op({ hosts: ["admin.example.com"] })] })]);
  for (const authority of ["admin.example.com", "Admin.Example.com", "admin.example.com:80", "admin.example.com."]) {
    await t.step(`DENY on admin.example.com denies ${authority}`, () => {
      assert.equal(decideRaw([deny], "/", authority), "denied");
    });
  }
  await t.step("a DENY on other.example.com lets admin.example.com through", () => {
    assert.equal(decideRaw([policy("DENY", [rule({ to: [op({ hosts: ["other.example.com"] })] })])], "/"), "allowed");
  });
  const cases: [pattern: string, host: string, want: boolean][] = [
    ["Admin.Example.COM", "admin.example.com", true],
    ["admin.example.com:8080", "admin.example.com", true],
    ["admin.example.com.", "admin.example.com", true],
    ["*.Example.com", "admin.example.com", true],
    ["*.example.com:80", "admin.example.com", true],
    ["admin.*", "admin.example.com", true],
    ["*", "admin.example.com", true],
    ["[::1]:80", "[::1]", true],
    ["admin.example.com", "admin.example.co", false],
    ["*.example.com", "example.com", false],
    ["admin.example.com:80", "admin.example.com.evil", false],
  ];
  for (const [pattern, host, want] of cases) {
    await t.step(`matchHost(${pattern}, ${host}) → ${want}`, () => assert.equal(matchHost(pattern, host), want));
  }
  await t.step("an ALLOW on a host admits its other spellings and nothing else", () => {
    const allow = [policy("ALLOW", [rule({ to: [op({ hosts: ["Admin.Example.com:443"] })] })])];
    assert.equal(decideRaw(allow, "/", "ADMIN.example.com:9000"), "allowed");
    assert.equal(decideRaw(allow, "/", "admin.example.com."), "allowed");
    assert.equal(decideRaw(allow, "/", "web.example.com"), "denied");
  });
});

Deno.test("matchPolicyString() reads *, *suffix, prefix* and exact; an absent or empty value matches nothing", async (t) => {
  const cases: [string, string | undefined, boolean][] = [
    ["*", "x", true],
    ["*", "", false],
    ["*", undefined, false],
    ["/api/*", "/api/x", true],
    ["/api/*", "/api", false],
    ["*.png", "/a/b.png", true],
    ["*.png", "/a/b.png/x", false],
    ["GET", "GET", true],
    ["GET", "get", false],
    ["*mid*", "amid*", true],
    ["*mid*", "amidb", false],
    ["", "", false],
  ];
  for (const [p, v, want] of cases) {
    await t.step(`${p} on ${JSON.stringify(v)} → ${want}`, () => assert.equal(matchPolicyString(p, v), want));
  }
});

Deno.test("matchPath() reads {*} as one segment and {**} as any rest; an invalid template is undefined", async (t) => {
  const cases: [string, string, boolean | undefined][] = [
    ["/foo/{*}", "/foo/bar", true],
    ["/foo/{*}", "/foo/bar/baz", false],
    ["/foo/{*}", "/foo/", false],
    ["/foo/{**}", "/foo/", true],
    ["/foo/{**}", "/foo/a/b/c", true],
    ["/foo/{**}", "/foo", false],
    ["/foo/{**}/", "/foo/bar/", true],
    ["/foo/{**}/", "/foo/bar/baz/", true],
    ["/foo/{**}/", "/foo/bar", false],
    ["/foo/{*}/bar/{**}", "/foo/buzz/bar/", true],
    ["/foo/{*}/bar/{**}", "/foo/buzz/bar/baz", true],
    ["/foo/{*}/bar/{**}", "/foo/a/b/bar/baz", false],
    ["/a.b/{*}", "/aXb/c", false],
    ["/a.b/{*}", "/a.b/c", true],
    ["/*/baz/{*}", "/x/baz/y", undefined],
    ["/**/baz/{*}", "/x/baz/y", undefined],
    ["/{**}/foo/{*}", "/x/foo/y", undefined],
    ["/foo/{*}.txt", "/foo/a.txt", undefined],
    ["foo/{*}", "/foo/a", undefined],
  ];
  for (const [p, path, want] of cases) {
    await t.step(`${p} on ${path} → ${want}`, () => assert.equal(matchPath(p, path), want));
  }
});

Deno.test("authorizeRequest() matches repeated headers value by value, never concatenated (CVE-2026-26308)", async (t) => {
  const denyAdmin = policy("DENY", [rule({ when: [when("request.headers[x-user]", ["admin"])] })]);
  const denyPrefix = policy("DENY", [rule({ when: [when("request.headers[X-User]", ["adm*"])] })]);
  const denyNotTrusted = policy("DENY", [rule({ when: [when("request.headers[x-client]", [], ["trusted"])] })]);
  const allowPresent = policy("ALLOW", [rule({ when: [when("request.headers[x-token]", ["*"])] })]);
  const cases: { name: string; p: L7Policy; headers: [string, string][]; allowed: boolean }[] = [
    {
      name: "admin as the second value is denied",
      p: denyAdmin,
      headers: [["x-user", "guest"], ["x-user", "admin"]],
      allowed: false,
    },
    {
      name: "admin as the first value is denied",
      p: denyAdmin,
      headers: [["x-user", "admin"], ["x-user", "guest"]],
      allowed: false,
    },
    { name: "a comma-joined value is one value", p: denyAdmin, headers: [["x-user", "guest,admin"]], allowed: true },
    {
      name: "a prefix matches a later value",
      p: denyPrefix,
      headers: [["x-user", "guest"], ["x-user", "admin"]],
      allowed: false,
    },
    {
      name: "another header of the same value does not count",
      p: denyAdmin,
      headers: [["x-other", "admin"]],
      allowed: true,
    },
    { name: "no header: the DENY does not match", p: denyAdmin, headers: [], allowed: true },
    {
      name: "notValues: a trusted value among others",
      p: denyNotTrusted,
      headers: [["x-client", "evil"], ["x-client", "trusted"]],
      allowed: true,
    },
    { name: "notValues: only untrusted values", p: denyNotTrusted, headers: [["x-client", "evil"]], allowed: false },
    { name: "notValues: the header absent satisfies notValues", p: denyNotTrusted, headers: [], allowed: false },
    { name: "* is presence: an empty value counts", p: allowPresent, headers: [["x-token", ""]], allowed: true },
    { name: "* is presence: absent does not", p: allowPresent, headers: [], allowed: false },
  ];
  for (const c of cases) {
    await t.step(
      c.name,
      () => assert.equal(authorizeRequest([c.p], { ...REQ, headers: c.headers }).allowed, c.allowed),
    );
  }
});

Deno.test("authorizeRequest() follows Istio's precedence and reports the policy that decided", async (t) => {
  const allowBob = policy("ALLOW", [rule({ from: [src({ principals: [BOB] })] })], "allow-bob");
  const allowOther = policy(
    "ALLOW",
    [rule({ from: [src({ principals: ["cluster.local/ns/x/sa/y"] })] })],
    "allow-other",
  );
  const denyGet = policy("DENY", [rule({ to: [op({ methods: ["GET"] })] })], "deny-get");
  const denyPost = policy("DENY", [rule({ to: [op({ methods: ["POST"] })] })], "deny-post");
  const allowNothing = policy("ALLOW", [], "allow-nothing");
  const allowAll = policy("ALLOW", [rule({})], "allow-all");
  const denyNothing = policy("DENY", [], "deny-nothing");
  const cases: { name: string; policies: L7Policy[]; allowed: boolean; policy?: string }[] = [
    { name: "no policies: allowed", policies: [], allowed: true },
    { name: "a DENY that does not match: allowed", policies: [denyPost], allowed: true },
    { name: "a matching DENY: denied", policies: [denyGet], allowed: false, policy: "shop/deny-get" },
    {
      name: "a matching DENY beats a matching ALLOW",
      policies: [allowBob, denyGet],
      allowed: false,
      policy: "shop/deny-get",
    },
    {
      name: "a matching ALLOW: allowed",
      policies: [allowOther, allowBob, denyPost],
      allowed: true,
      policy: "shop/allow-bob",
    },
    { name: "ALLOW policies, none matches: denied", policies: [allowOther], allowed: false },
    { name: "an ALLOW with no rules allows nothing", policies: [allowNothing], allowed: false },
    { name: "a DENY with no rules denies nothing", policies: [denyNothing], allowed: true },
    { name: "an empty rule matches everything", policies: [allowAll], allowed: true, policy: "shop/allow-all" },
    {
      name: "allow-nothing beside allow-bob: bob is allowed",
      policies: [allowNothing, allowBob],
      allowed: true,
      policy: "shop/allow-bob",
    },
  ];
  for (const c of cases) {
    await t.step(c.name, () => {
      const r = authorizeRequest(c.policies, REQ);
      assert.equal(r.allowed, c.allowed);
      assert.equal(r.policy, c.policy);
      assert.deepEqual(r.dryRun, []);
    });
  }
});

Deno.test("authorizeRequest() evaluates dry-run policies without enforcing them", () => {
  const denyGet = policy("DENY", [rule({ to: [op({ methods: ["GET"] })] })], "deny-get", true);
  const denyPost = policy("DENY", [rule({ to: [op({ methods: ["POST"] })] })], "deny-post", true);
  const allowOther = policy("ALLOW", [rule({ from: [src({ namespaces: ["other"] })] })], "allow-other", true);
  const allowShop = policy("ALLOW", [rule({ from: [src({ namespaces: ["shop"] })] })], "allow-shop", true);
  const r = authorizeRequest([denyGet, denyPost, allowOther, allowShop], REQ);
  assert.equal(r.allowed, true, "dry-run policies neither deny nor make an ALLOW required");
  assert.equal(r.policy, undefined);
  assert.deepEqual(r.dryRun, [
    { policy: "shop/deny-get", wouldAllow: false },
    { policy: "shop/deny-post", wouldAllow: true },
    { policy: "shop/allow-other", wouldAllow: false },
    { policy: "shop/allow-shop", wouldAllow: true },
  ]);
  const enforced = authorizeRequest([denyGet, policy("DENY", [rule({})], "deny-all")], REQ);
  assert.equal(enforced.allowed, false);
  assert.equal(enforced.policy, "shop/deny-all", "the dry-run DENY that matched first is not the decider");
});

Deno.test("authorizeRequest() combines fields with AND, lists with OR, and when with AND", async (t) => {
  const cases: { name: string; r: L7Rule; a?: Partial<RequestAttributes>; match: boolean }[] = [
    {
      name: "every set field of an operation must match",
      r: rule({ to: [op({ methods: ["GET"], paths: ["/x"] })] }),
      match: false,
    },
    {
      name: "fields of an operation all matching",
      r: rule({ to: [op({ methods: ["GET"], paths: ["/"] })] }),
      match: true,
    },
    { name: "values in a field are alternatives", r: rule({ to: [op({ methods: ["POST", "GET"] })] }), match: true },
    {
      name: "to entries are alternatives",
      r: rule({ to: [op({ methods: ["POST"] }), op({ ports: [8080] })] }),
      match: true,
    },
    {
      name: "from entries are alternatives",
      r: rule({ from: [src({ namespaces: ["x"] }), src({ namespaces: ["shop"] })] }),
      match: true,
    },
    {
      name: "from AND to",
      r: rule({ from: [src({ namespaces: ["shop"] })], to: [op({ ports: [9090] })] }),
      match: false,
    },
    {
      name: "when is AND",
      r: rule({ when: [when("source.namespace", ["shop"]), when("destination.port", ["9090"])] }),
      match: false,
    },
    {
      name: "when all holding",
      r: rule({ when: [when("source.namespace", ["shop"]), when("destination.port", ["9090", "8080"])] }),
      match: true,
    },
    { name: "not* must not match", r: rule({ to: [op({ notMethods: ["GET"] })] }), match: false },
    { name: "not* not matching", r: rule({ to: [op({ notMethods: ["POST"] })] }), match: true },
    { name: "methods are case-sensitive", r: rule({ to: [op({ methods: ["get"] })] }), match: false },
    { name: "ports", r: rule({ to: [op({ ports: [8080], notPorts: [9090] })] }), match: true },
    { name: "notPorts", r: rule({ to: [op({ notPorts: [8080] })] }), match: false },
    {
      name: "notPaths on a prefix",
      r: rule({ to: [op({ notPaths: ["/public/*"] })] }),
      a: { path: "/public/x" },
      match: false,
    },
    {
      name: "paths with a template",
      r: rule({ to: [op({ paths: ["/api/{*}/items"] })] }),
      a: { path: "/api/v1/items" },
      match: true,
    },
    { name: "principals exact", r: rule({ from: [src({ principals: [BOB] })] }), match: true },
    {
      name: "principals with spiffe:// never match",
      r: rule({ from: [src({ principals: [`spiffe://${BOB}`] })] }),
      match: false,
    },
    { name: "principals by suffix", r: rule({ from: [src({ principals: ["*/sa/bob"] })] }), match: true },
    { name: "notNamespaces", r: rule({ from: [src({ notNamespaces: ["shop"] })] }), match: false },
    { name: "when source.principal", r: rule({ when: [when("source.principal", [BOB])] }), match: true },
    {
      name: "when source.principal notValues",
      r: rule({ when: [when("source.principal", [], ["cluster.local/*"])] }),
      match: false,
    },
  ];
  for (const c of cases) {
    await t.step(c.name, () => {
      const a = { ...REQ, ...c.a };
      assert.equal(policyMatches(policy("DENY", [c.r]), a), c.match);
      assert.equal(
        policyMatches(policy("ALLOW", [c.r]), a),
        c.match,
        "fully evaluable rules do not depend on the action",
      );
    });
  }
});

Deno.test("authorizeRequest() on plaintext: absent identity never matches a positive field and satisfies not*", async (t) => {
  const strict = policy("DENY", [rule({ from: [src({ notPrincipals: ["*"] })] })], "strict");
  await t.step("a DENY with notPrincipals: [*] denies plaintext", () => {
    assert.deepEqual(authorizeRequest([strict], PLAIN), { allowed: false, policy: "shop/strict", dryRun: [] });
  });
  await t.step("and lets mTLS through", () => assert.equal(authorizeRequest([strict], REQ).allowed, true));
  await t.step("an ALLOW on principals does not admit plaintext", () => {
    const allowAny = policy("ALLOW", [rule({ from: [src({ principals: ["*"] })] })]);
    assert.equal(authorizeRequest([allowAny], PLAIN).allowed, false);
    assert.equal(authorizeRequest([allowAny], REQ).allowed, true);
  });
  await t.step("an ALLOW on notNamespaces admits plaintext, as Istio does", () => {
    const allow = policy("ALLOW", [rule({ from: [src({ notNamespaces: ["evil"] })] })]);
    assert.equal(authorizeRequest([allow], PLAIN).allowed, true);
  });
  await t.step("a when on source.namespace does not match plaintext; its notValues does", () => {
    assert.equal(policyMatches(policy("DENY", [rule({ when: [when("source.namespace", ["*"])] })]), PLAIN), false);
    assert.equal(
      policyMatches(policy("DENY", [rule({ when: [when("source.namespace", [], ["shop"])] })]), PLAIN),
      true,
    );
  });
});

Deno.test("authorizeRequest() resolves what it cannot evaluate in the safe direction", async (t) => {
  const cases: { name: string; r: L7Rule }[] = [
    { name: "an unknown when key", r: rule({ when: [when("request.auth.claims[iss]", ["https://idp"])] }) },
    { name: "an unknown when key with notValues", r: rule({ when: [when("connection.sni", [], ["x"])] }) },
    { name: "an unknown when key with no values", r: rule({ when: [when("experimental.foo", [])] }) },
    { name: "an ipBlock that does not parse", r: rule({ from: [src({ ipBlocks: ["10.0.0.0/33"] })] }) },
    { name: "a notIpBlock that does not parse", r: rule({ from: [src({ notIpBlocks: ["not-an-ip"] })] }) },
    { name: "a remoteIpBlock with host bits", r: rule({ from: [src({ remoteIpBlocks: ["10.0.0.1/8"] })] }) },
    { name: "an invalid path template", r: rule({ to: [op({ paths: ["/{**}/x/{*}"] })] }) },
    { name: "an invalid notPaths template", r: rule({ to: [op({ notPaths: ["/x/{*}.txt"] })] }) },
    { name: "a destination.port that is not a number", r: rule({ when: [when("destination.port", ["http"])] }) },
    { name: "a source.ip when that does not parse", r: rule({ when: [when("source.ip", ["10.0.0.300"])] }) },
  ];
  for (const c of cases) {
    await t.step(`${c.name}: a DENY denies, an ALLOW does not allow`, () => {
      assert.equal(authorizeRequest([policy("DENY", [c.r])], REQ).allowed, false);
      assert.equal(authorizeRequest([policy("ALLOW", [c.r])], REQ).allowed, false);
    });
  }
  await t.step("a parsable entry that matches still decides in an ALLOW", () => {
    const r = rule({ from: [src({ ipBlocks: ["bad", "10.0.0.0/8"] })] });
    assert.equal(authorizeRequest([policy("ALLOW", [r])], REQ).allowed, true);
  });
  await t.step("a parsable notIpBlock that matches spares the request in a DENY", () => {
    const r = rule({ from: [src({ notIpBlocks: ["bad", "10.0.1.0/24"] })] });
    assert.equal(authorizeRequest([policy("DENY", [r])], REQ).allowed, true);
  });
  await t.step("an unknown key in one rule does not stop another rule of an ALLOW", () => {
    const p = policy("ALLOW", [
      rule({ when: [when("request.auth.principal", ["x"])] }),
      rule({ to: [op({ ports: [8080] })] }),
    ]);
    assert.equal(authorizeRequest([p], REQ).allowed, true);
  });
});

Deno.test("ipInBlock() and the IP fields match IPv4 and IPv6 addresses and ranges", async (t) => {
  const cases: [block: string, ip: string | undefined, want: boolean | undefined][] = [
    ["10.0.0.0/8", "10.1.2.3", true],
    ["10.0.0.0/8", "11.1.2.3", false],
    ["10.0.1.2", "10.0.1.2", true],
    ["10.0.1.2/32", "10.0.1.3", false],
    ["0.0.0.0/0", "192.168.1.1", true],
    ["10.0.0.0/8", "::ffff:10.1.2.3", true],
    ["fd00::/8", "fd00::1", true],
    ["fd00::/8", "FD00:0::2", true],
    ["fd00::/8", "fe00::1", false],
    ["fd00::/8", "10.0.0.1", false],
    ["10.0.0.0/8", "fd00::1", false],
    ["10.0.0.0/8", undefined, false],
    ["10.0.0.0/8", "", false],
    ["10.0.0.0/33", "10.0.0.1", undefined],
    ["10.0.0.0/8", "garbage", undefined],
  ];
  for (const [block, ip, want] of cases) {
    await t.step(`${block} ∋ ${ip} → ${want}`, () => assert.equal(ipInBlock(block, ip), want));
  }
  const at = (r: L7Rule, a: Partial<RequestAttributes>) => policyMatches(policy("ALLOW", [r]), { ...REQ, ...a });
  await t.step("remoteIpBlocks read remoteIp, and sourceIp when it is absent", () => {
    const r = rule({ from: [src({ remoteIpBlocks: ["192.0.2.0/24"] })] });
    assert.equal(at(r, { remoteIp: "192.0.2.7" }), true);
    assert.equal(at(r, { sourceIp: "192.0.2.7" }), true);
    assert.equal(at(r, { sourceIp: "192.0.2.7", remoteIp: "198.51.100.1" }), false);
  });
  await t.step("ipBlocks read sourceIp, not remoteIp", () => {
    const r = rule({ from: [src({ ipBlocks: ["192.0.2.0/24"] })] });
    assert.equal(at(r, { remoteIp: "192.0.2.7" }), false);
    assert.equal(at(r, { sourceIp: "192.0.2.7" }), true);
  });
  await t.step("when source.ip, remote.ip and destination.ip", () => {
    assert.equal(at(rule({ when: [when("source.ip", ["10.0.1.0/24"])] }), {}), true);
    assert.equal(at(rule({ when: [when("remote.ip", ["10.0.1.0/24"])] }), { remoteIp: "203.0.113.9" }), false);
    assert.equal(at(rule({ when: [when("destination.ip", ["10.96.0.0/12"])] }), {}), true);
    assert.equal(at(rule({ when: [when("destination.ip", [], ["10.96.0.0/12"])] }), {}), false);
    assert.equal(at(rule({ when: [when("destination.ip", ["10.96.0.0/12"])] }), { destinationIp: undefined }), false);
  });
});

Deno.test("authorizeRequest() denies every request an L7 policy the waypoint could not decode covers", async (t) => {
  const config = new ClientConfig(pino({ level: "silent" }));
  const web = { kind: "Service", namespace: "shop", name: "web" };
  const allowGet = (extra: Record<string, unknown> = {}) => ({
    kind: "L7Policy" as const,
    name: "shop/get-only",
    version: "v",
    body: {
      name: "get-only",
      namespace: "shop",
      targets: [web],
      action: "ALLOW",
      rules: [{ to: [{ methods: ["GET"] }] }],
      ...extra,
    },
  });
  const decide = (service: string, method = "GET") =>
    authorizeRequest(config.state.l7Policies.forTarget("Service", "shop", service), { ...REQ, method }).allowed;
  await t.step("a sole ALLOW it cannot decode denies its targets rather than allowing everything", () => {
    config.apply({ type: "snapshot", version: 1, unchanged: 0, removed: [], resources: [allowGet({ future: 1 })] });
    assert.deepEqual([decide("web"), decide("web", "POST"), decide("api")], [false, false, true]);
  });
  await t.step("a version that decodes applies as written", () => {
    config.apply({ type: "delta", version: 2, removed: [], resources: [allowGet()] });
    assert.deepEqual([decide("web"), decide("web", "POST"), decide("api")], [true, false, true]);
  });
  await t.step("one whose targets cannot be read denies every request the waypoint serves", () => {
    const body = { ...allowGet().body, name: "deny", action: "DENY", targets: [{ kind: "Mesh", name: "x" }] };
    config.apply({ type: "delta", version: 3, removed: [], resources: [{ ...allowGet(), name: "shop/deny", body }] });
    assert.deepEqual([decide("web"), decide("api")], [false, false]);
  });
});
