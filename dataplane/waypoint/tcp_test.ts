import assert from "node:assert/strict";
import { authorizeRequest, type RequestAttributes } from "./authz.ts";
import { tcpPolicies } from "./tcp.ts";
import { op, policy, rule, src, when } from "./test_util.ts";
import type { L7Policy, L7Rule } from "../../mesh/l7.ts";

const X = "cluster.local/ns/shop/sa/x";
const Y = "cluster.local/ns/shop/sa/y";

/** A TCP connection as passTcp authorizes it: no method, path, host or headers. */
function connection(principal: string, port = 5432, sourceIp = "10.0.0.1"): RequestAttributes {
  return {
    method: "",
    path: "",
    host: "",
    port,
    headers: [],
    sourcePrincipal: principal,
    sourceNamespace: "shop",
    sourceIp,
    remoteIp: sourceIp,
    destinationIp: "10.96.0.1",
  };
}

const allowedOverTcp = (policies: L7Policy[], a: RequestAttributes) =>
  authorizeRequest(tcpPolicies(policies), a).allowed;

Deno.test("tcpPolicies() drops the HTTP-only conditions of a DENY rule and keeps the rest", () => {
  const deny = policy("DENY", [
    rule({
      from: [src({ principals: [X] })],
      to: [op({
        hosts: ["web"],
        notHosts: ["api"],
        methods: ["GET"],
        notMethods: ["POST"],
        paths: ["/admin"],
        notPaths: ["/health"],
        ports: [5432],
        notPorts: [22],
      })],
      when: [when("request.headers[x-user]", ["admin"]), when("source.ip", ["10.0.0.0/8"])],
    }),
  ]);
  const [got] = tcpPolicies([deny]);
  assert.deepEqual(got.rules, [
    rule({
      from: [src({ principals: [X] })],
      to: [op({ ports: [5432], notPorts: [22] })],
      when: [when("source.ip", ["10.0.0.0/8"])],
    }),
  ]);
  assert.deepEqual(deny.rules[0].to[0].methods, ["GET"], "the input policy was changed");
});

Deno.test("tcpPolicies() leaves out the ALLOW rules with an HTTP-only condition", async (t) => {
  const cases: [name: string, r: L7Rule, kept: boolean][] = [
    ["hosts", rule({ to: [op({ hosts: ["web"] })] }), false],
    ["notHosts", rule({ to: [op({ notHosts: ["web"] })] }), false],
    ["methods", rule({ to: [op({ methods: ["GET"] })] }), false],
    ["notMethods", rule({ to: [op({ notMethods: ["GET"] })] }), false],
    ["paths", rule({ to: [op({ paths: ["/"] })] }), false],
    ["notPaths", rule({ to: [op({ notPaths: ["/admin"] })] }), false],
    ["methods in the second of two operations", rule({ to: [op({ ports: [80] }), op({ methods: ["GET"] })] }), false],
    ["a request header condition", rule({ when: [when("request.headers[x-user]", ["admin"])] }), false],
    ["ports only", rule({ to: [op({ ports: [5432] })] }), true],
    [
      "a source and a source.ip condition",
      rule({ from: [src({ principals: [X] })], when: [when("source.ip", ["10.0.0.0/8"])] }),
      true,
    ],
  ];
  for (const [name, r, kept] of cases) {
    await t.step(`${name} → ${kept ? "kept" : "left out"}`, () => {
      const [got] = tcpPolicies([policy("ALLOW", [r])]);
      assert.equal(got.action, "ALLOW");
      assert.deepEqual(got.rules, kept ? [r] : []);
    });
  }
});

Deno.test("a DENY on methods [GET] from X denies X's TCP connections, and only X's", () => {
  const deny = [policy("DENY", [rule({ from: [src({ principals: [X] })], to: [op({ methods: ["GET"] })] })])];
  assert.equal(authorizeRequest(deny, connection(X)).allowed, true, "as written, the rule cannot match TCP");
  assert.equal(allowedOverTcp(deny, connection(X)), false);
  assert.equal(allowedOverTcp(deny, connection(Y)), true);
});

Deno.test("a DENY on a request header alone denies every TCP connection", () => {
  const deny = [policy("DENY", [rule({ when: [when("request.headers[x-debug]", ["1"])] })])];
  assert.equal(allowedOverTcp(deny, connection(X)), false);
  assert.equal(allowedOverTcp(deny, connection(Y)), false);
});

Deno.test("a DENY keeps its port condition over TCP", () => {
  const deny = [policy("DENY", [rule({ to: [op({ methods: ["DELETE"], ports: [5432] })] })])];
  assert.equal(allowedOverTcp(deny, connection(X, 5432)), false);
  assert.equal(allowedOverTcp(deny, connection(X, 6379)), true);
});

Deno.test("an ALLOW on paths only leaves nothing allowed over TCP", () => {
  const allow = [policy("ALLOW", [rule({ to: [op({ paths: ["/public/*"] })] })])];
  assert.equal(allowedOverTcp(allow, connection(X)), false);
  assert.equal(allowedOverTcp(allow, connection(Y)), false);
});

Deno.test("an ALLOW keeps its rules without HTTP conditions over TCP", () => {
  const allow = [
    policy("ALLOW", [
      rule({ from: [src({ principals: [X] })], to: [op({ methods: ["GET"] })] }),
      rule({ from: [src({ principals: [Y] })], to: [op({ ports: [5432] })] }),
    ]),
  ];
  assert.equal(allowedOverTcp(allow, connection(X)), false, "X is allowed only by an HTTP-only rule");
  assert.equal(allowedOverTcp(allow, connection(Y)), true);
  assert.equal(allowedOverTcp(allow, connection(Y, 6379)), false);
});

Deno.test("tcpPolicies() keeps each policy's name, targets and dry-run flag", () => {
  const dry = { ...policy("DENY", [rule({ to: [op({ methods: ["GET"] })] })], "audit"), dryRun: true };
  const [got] = tcpPolicies([dry]);
  assert.equal(got.name, "audit");
  assert.deepEqual(got.targets, dry.targets);
  assert.equal(got.dryRun, true);
  const d = authorizeRequest([got], connection(X));
  assert.equal(d.allowed, true, "a dry-run policy is not enforced");
  assert.deepEqual(d.dryRun, [{ policy: "shop/audit", wouldAllow: false }]);
});
