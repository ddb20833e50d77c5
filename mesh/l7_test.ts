import assert from "node:assert/strict";
import { assertInvalid } from "../tests/harness/assert.ts";
import {
  decodeHttpRoute,
  decodeL7Policy,
  type HttpRoute,
  httpRouteKey,
  type L7Policy,
  l7PolicyKey,
  pathValueProblem,
} from "./l7.ts";

const WEB = "shop/web.shop.svc.cluster.local";

/** A route document with one rule of every kind of field. */
function routeDoc(): Record<string, unknown> {
  return {
    name: "web",
    namespace: "shop",
    parents: [{ service: WEB, port: 80 }, { service: WEB }],
    rules: [{
      matches: [
        { path: { type: "Exact", value: "/login" }, method: "POST" },
        {
          path: { type: "RegularExpression", value: "^/api/v[0-9]+/" },
          headers: [{ name: "X-Canary", value: "yes" }, { name: "x-user", type: "RegularExpression", value: "^a.*" }],
          queryParams: [{ name: "Debug", value: "1" }],
        },
        {},
      ],
      requestHeaders: { set: [{ name: "X-Route", value: "web" }], add: [], remove: ["X-Internal"] },
      responseHeaders: { set: [], add: [{ name: "cache-control", value: "no-store" }], remove: [] },
      backends: [
        { service: WEB, port: 8080, weight: 90 },
        { service: "shop/web-v2.shop.svc.cluster.local", port: 8080, problem: "Service shop/web-v2 is not declared" },
      ],
      timeoutMs: 10_000,
      backendTimeoutMs: 2_000,
      retry: { attempts: 2, codes: [502, 503], backoffMs: 25 },
    }],
  };
}

/** A policy document with every field. */
function policyDoc(): Record<string, unknown> {
  return {
    name: "get-only",
    namespace: "shop",
    targets: [{ kind: "Gateway", namespace: "shop", name: "waypoint" }, {
      kind: "Service",
      namespace: "shop",
      name: "web",
    }],
    action: "DENY",
    dryRun: true,
    rules: [{
      from: [{
        principals: ["cluster.local/ns/shop/sa/*"],
        notPrincipals: ["*"],
        namespaces: ["shop"],
        notNamespaces: ["dev-*"],
        ipBlocks: ["10.0.0.0/8"],
        notIpBlocks: ["10.1.2.3"],
        remoteIpBlocks: ["fd00::/8"],
        notRemoteIpBlocks: ["192.168.0.0/16"],
      }],
      to: [{
        hosts: ["web.shop.svc.cluster.local"],
        notHosts: ["*.internal"],
        ports: [8080],
        notPorts: [9090],
        methods: ["GET"],
        notMethods: ["DELETE"],
        paths: ["/api/*"],
        notPaths: ["/admin/{**}"],
      }],
      when: [
        { key: "request.headers[x-token]", values: ["secret"] },
        { key: "source.ip", notValues: ["10.9.0.0/16"] },
        { key: "destination.port", values: ["8080"] },
        { key: "source.principal", values: ["cluster.local/ns/shop/sa/web"] },
      ],
    }, {}],
  };
}

type Key = string | number;

/** `doc` with the value at `path` replaced, or removed when `value` is undefined. */
function patched(doc: Record<string, unknown>, path: Key[], value: unknown): Record<string, unknown> {
  let node = doc as Record<Key, unknown>;
  for (const k of path.slice(0, -1)) node = node[k] as Record<Key, unknown>;
  const last = path[path.length - 1];
  if (value === undefined) delete node[last];
  else node[last] = value;
  return doc;
}

Deno.test("decodeHttpRoute() reads every field, lowercases header names and fills Gateway API's defaults", () => {
  const r: HttpRoute = decodeHttpRoute(routeDoc());
  assert.equal(httpRouteKey(r), "shop/web");
  assert.deepEqual(r.parents, [{ service: WEB, port: 80 }, { service: WEB }]);
  const [rule] = r.rules;
  assert.deepEqual(rule.matches[0], {
    path: { type: "Exact", value: "/login" },
    headers: [],
    queryParams: [],
    method: "POST",
  });
  assert.deepEqual(rule.matches[1].headers, [
    { name: "x-canary", type: "Exact", value: "yes" },
    { name: "x-user", type: "RegularExpression", value: "^a.*" },
  ]);
  assert.deepEqual(
    rule.matches[1].queryParams,
    [{ name: "Debug", type: "Exact", value: "1" }],
    "query names keep case",
  );
  assert.deepEqual(rule.matches[2], { headers: [], queryParams: [] }, "an absent path stays absent");
  assert.deepEqual(rule.requestHeaders, { set: [{ name: "x-route", value: "web" }], add: [], remove: ["x-internal"] });
  assert.deepEqual(rule.backends.map((b) => [b.weight, b.problem]), [[90, undefined], [
    1,
    "Service shop/web-v2 is not declared",
  ]]);
  assert.deepEqual([rule.timeoutMs, rule.backendTimeoutMs, rule.retry], [10_000, 2_000, {
    attempts: 2,
    codes: [502, 503],
    backoffMs: 25,
  }]);
  assert.deepEqual(decodeHttpRoute(JSON.parse(JSON.stringify(r))), r, "what it decodes, it decodes again unchanged");
});

Deno.test("decodeHttpRoute() refuses a bad field and names it", async (t) => {
  const R = ["rules", 0];
  const cases: [string, Key[], unknown, string, RegExp][] = [
    ["an unknown field", [...R, "matches", 0, "host"], "x", "httpRoute.rules[0].matches[0].host", /not a known field/],
    [
      "a regular expression that does not compile",
      [...R, "matches", 1, "path", "value"],
      "^/(api",
      "httpRoute.rules[0].matches[1].path.value",
      /not a valid regular expression/,
    ],
    [
      "a header regular expression that does not compile",
      [...R, "matches", 1, "headers", 1, "value"],
      "[a-",
      "httpRoute.rules[0].matches[1].headers[1].value",
      /not a valid regular expression/,
    ],
    [
      "a prefix that is not an absolute path",
      [...R, "matches", 0, "path"],
      { type: "PathPrefix", value: "api" },
      "httpRoute.rules[0].matches[0].path.value",
      /start with '\/'/,
    ],
    [
      "an unknown path type",
      [...R, "matches", 0, "path", "type"],
      "Prefix",
      "httpRoute.rules[0].matches[0].path.type",
      /Exact, PathPrefix, RegularExpression/,
    ],
    ["an unknown method", [...R, "matches", 0, "method"], "get", "httpRoute.rules[0].matches[0].method", /GET/],
    [
      "a header listed twice, in another case",
      [...R, "matches", 1, "headers", 1, "name"],
      "x-CANARY",
      "httpRoute.rules[0].matches[1].headers[1].name",
      /listed twice/,
    ],
    [
      "a header name that is no token",
      [...R, "matches", 1, "headers", 0, "name"],
      "x canary",
      "httpRoute.rules[0].matches[1].headers[0].name",
      /header name/,
    ],
    [
      "a header value that would split the header",
      [...R, "requestHeaders", "set", 0, "value"],
      "a\r\nx-admin: 1",
      "httpRoute.rules[0].requestHeaders.set[0].value",
      /CR, LF or NUL/,
    ],
    [
      "a header removed twice",
      [...R, "requestHeaders", "remove"],
      ["a", "A"],
      "httpRoute.rules[0].requestHeaders.remove[1]",
      /twice/,
    ],
    [
      "a backend that is no service key",
      [...R, "backends", 0, "service"],
      "web",
      "httpRoute.rules[0].backends[0].service",
      /NAMESPACE\/HOSTNAME/,
    ],
    [
      "a backend without a port",
      [...R, "backends", 0, "port"],
      undefined,
      "httpRoute.rules[0].backends[0].port",
      /required/,
    ],
    [
      "a weight above Gateway API's",
      [...R, "backends", 0, "weight"],
      1_000_001,
      "httpRoute.rules[0].backends[0].weight",
      /0 to 1000000/,
    ],
    ["a retried 4xx code", [...R, "retry", "codes"], [404], "httpRoute.rules[0].retry.codes[0]", /500 to 599/],
    [
      "an attempt timeout longer than the request's",
      [...R, "backendTimeoutMs"],
      20_000,
      "httpRoute.rules[0].backendTimeoutMs",
      /cannot be longer/,
    ],
    ["a zero timeout (none is written as absent)", [...R, "timeoutMs"], 0, "httpRoute.rules[0].timeoutMs", /1 to/],
    ["17 rules", ["rules"], Array(17).fill({ backends: [] }), "httpRoute.rules", /at most 16/],
    ["65 matches in a rule", [...R, "matches"], Array(65).fill({}), "httpRoute.rules[0].matches", /at most 64/],
    [
      "129 matches in the route",
      ["rules"],
      [0, 1, 2].map(() => ({ matches: Array(43).fill({}), backends: [] })),
      "httpRoute.rules",
      /at most 128/,
    ],
    [
      "17 backends",
      [...R, "backends"],
      Array(17).fill({ service: WEB, port: 80 }),
      "httpRoute.rules[0].backends",
      /at most 16/,
    ],
    ["no parent", ["parents"], [], "httpRoute.parents", /needs a parent/],
    ["a parent that is no service key", ["parents", 0, "service"], "web", "httpRoute.parents[0].service", /NAMESPACE/],
    ["a name with a slash", ["name"], "a/b", "httpRoute.name", /no '\/'/],
  ];
  for (const [name, path, value, field, message] of cases) {
    await t.step(name, () => {
      assertInvalid(() => decodeHttpRoute(patched(routeDoc(), path, value)), field, message);
    });
  }
});

Deno.test("pathValueProblem() holds prefixes and exact paths to Gateway API's rules", async (t) => {
  const cases: [string, "Exact" | "PathPrefix" | "RegularExpression", string, RegExp | undefined][] = [
    ["the root", "PathPrefix", "/", undefined],
    ["a plain path with an escape", "Exact", "/a/b%20c/d.txt", undefined],
    ["a relative path", "Exact", "a/b", /absolute/],
    ["an empty segment", "PathPrefix", "/a//b", /'\/\/'/],
    ["a dot segment", "PathPrefix", "/a/./b", /'\.' segment/],
    ["a trailing dot-dot", "Exact", "/a/..", /'\.\.' segment/],
    ["an encoded slash", "PathPrefix", "/a%2Fb", /%2F/],
    ["a fragment", "Exact", "/a#b", /'#'/],
    ["a space", "Exact", "/a b", /valid in a URL path/],
    ["a regular expression that compiles", "RegularExpression", "^/a(/.*)?$", undefined],
    ["one that does not", "RegularExpression", "*a", /not a valid regular expression/],
  ];
  for (const [name, type, value, problem] of cases) {
    await t.step(name, () => {
      const got = pathValueProblem(type, value);
      if (problem) assert.match(got ?? "", problem);
      else assert.equal(got, undefined);
    });
  }
});

Deno.test("decodeL7Policy() reads every field and decodes its own output unchanged", () => {
  const p: L7Policy = decodeL7Policy(policyDoc());
  assert.equal(l7PolicyKey(p), "shop/get-only");
  assert.deepEqual(p.targets.map((x) => x.kind), ["Gateway", "Service"]);
  assert.deepEqual([p.action, p.dryRun], ["DENY", true]);
  assert.deepEqual(p.rules[1], { from: [], to: [], when: [] }, "an empty rule matches every request");
  assert.deepEqual(p.rules[0].from[0].notIpBlocks, ["10.1.2.3"]);
  assert.deepEqual(p.rules[0].to[0].ports, [8080]);
  assert.deepEqual(p.rules[0].when[1], { key: "source.ip", values: [], notValues: ["10.9.0.0/16"] });
  assert.deepEqual(decodeL7Policy(JSON.parse(JSON.stringify(p))), p);
  const defaults = decodeL7Policy({
    name: "a",
    namespace: "shop",
    targets: [{ kind: "Service", namespace: "shop", name: "web" }],
  });
  assert.deepEqual([defaults.action, defaults.rules, defaults.dryRun], ["ALLOW", [], false]);
});

Deno.test("decodeL7Policy() refuses a bad field and names it", async (t) => {
  const R = ["rules", 0];
  const cases: [string, Key[], unknown, string, RegExp][] = [
    ["no target", ["targets"], [], "l7Policy.targets", /needs a target/],
    ["a target of another kind", ["targets", 0, "kind"], "Pod", "l7Policy.targets[0].kind", /Gateway, Service/],
    ["a target without a kind", ["targets", 0, "kind"], undefined, "l7Policy.targets[0].kind", /Gateway, Service/],
    ["an action waypoints do not take", ["action"], "CUSTOM", "l7Policy.action", /ALLOW, DENY/],
    [
      "a source field the waypoint cannot check",
      [...R, "from", 0, "requestPrincipals"],
      ["*"],
      "l7Policy.rules[0].from[0].requestPrincipals",
      /not a known field/,
    ],
    [
      "an IP block that does not parse",
      [...R, "from", 0, "ipBlocks"],
      ["10.0.0.0/33"],
      "l7Policy.rules[0].from[0].ipBlocks[0]",
      /prefix length/,
    ],
    ["port 0", [...R, "to", 0, "ports"], [0], "l7Policy.rules[0].to[0].ports[0]", /1 to 65535/],
    ["a NUL in a pattern", [...R, "from", 0, "principals"], ["a\0b"], "l7Policy.rules[0].from[0].principals[0]", /NUL/],
    ["an empty pattern", [...R, "to", 0, "paths"], [""], "l7Policy.rules[0].to[0].paths[0]", /must not be empty/],
    [
      "a when key the waypoint cannot check",
      [...R, "when", 0, "key"],
      "request.auth.claims[iss]",
      "l7Policy.rules[0].when[0].key",
      /request\.headers\[NAME\]/,
    ],
    [
      "request.method, which is no key upstream",
      [...R, "when", 0, "key"],
      "request.method",
      "l7Policy.rules[0].when[0].key",
      /one of/,
    ],
    [
      "a header key not in lowercase",
      [...R, "when", 0, "key"],
      "request.headers[X-Token]",
      "l7Policy.rules[0].when[0].key",
      /lowercase/,
    ],
    [
      "an IP value that does not parse",
      [...R, "when", 1, "notValues"],
      ["nope"],
      "l7Policy.rules[0].when[1].notValues[0]",
      /IP address/,
    ],
    [
      "a port value that is no number",
      [...R, "when", 2, "values"],
      ["http"],
      "l7Policy.rules[0].when[2].values[0]",
      /port/,
    ],
    ["a condition without values", [...R, "when", 0, "values"], [], "l7Policy.rules[0].when[0]", /values or notValues/],
  ];
  for (const [name, path, value, field, message] of cases) {
    await t.step(name, () => {
      assertInvalid(() => decodeL7Policy(patched(policyDoc(), path, value)), field, message);
    });
  }
});
