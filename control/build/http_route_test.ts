import assert from "node:assert/strict";
import { parse } from "yaml";
import { decodeHttpRoute } from "../../mesh/l7.ts";
import { assertInvalid } from "../../tests/harness/assert.ts";
import { DEFAULT_SETTINGS } from "./common.ts";
import {
  DEFAULT_RETRY,
  type HttpRouteSpec,
  parseGatewayDuration,
  readHttpRoute,
  resolveHttpRoute,
} from "./http_route.ts";
import { readService, type ServiceSpec } from "./services.ts";

/** An HTTPRoute document from the YAML of its spec. */
const route = (spec: string) => ({ kind: "HTTPRoute", spec: parse(spec) }) as Record<string, unknown>;

const FULL = `
parentRefs: [{ group: "", kind: Service, name: web, port: 80 }]
hostnames: [web.shop.svc.cluster.local, "*.example.com"]
rules:
  - name: api
    matches:
      - path: { type: PathPrefix, value: /api }
        headers: [{ name: X-Canary, value: "yes" }]
        queryParams: [{ type: RegularExpression, name: v, value: "^[0-9]+$" }]
        method: GET
      - headers: [{ name: x-user, value: alice }]
    filters:
      - type: RequestHeaderModifier
        requestHeaderModifier: { set: [{ name: X-Route, value: api }], remove: [X-Internal] }
      - type: ResponseHeaderModifier
        responseHeaderModifier: { add: [{ name: Cache-Control, value: no-store }] }
    backendRefs:
      - { name: web, port: 8080, weight: 90 }
      - { group: "", kind: Service, name: web-v2, port: 8080, weight: 10 }
    timeouts: { request: 10s, backendRequest: 500ms }
    retry: { attempts: 3, codes: [502, 503, 503], backoff: 100ms }
  - backendRefs: [{ name: web, port: 8080 }]
    timeouts: { request: 0s }
    retry: {}
`;

Deno.test("parseGatewayDuration() reads GEP-2257 durations into milliseconds", async (t) => {
  const good: [string, number][] = [
    ["10s", 10_000],
    ["500ms", 500],
    ["1h30m", 5_400_000],
    ["1h30m30s500ms", 5_430_500],
    ["01h", 3_600_000],
    ["0s", 0],
    ["1s1s", 2000],
    ["99999h", 99999 * 3_600_000],
  ];
  for (const [text, ms] of good) await t.step(text, () => assert.equal(parseGatewayDuration(text, "d"), ms));
  const bad: unknown[] = ["", "1.5s", "-1s", "1d", "1us", "100000s", "1h1m1s1ms1s", "1 s", "s", 10];
  for (const text of bad) {
    await t.step(`refuses ${JSON.stringify(text)}`, () => {
      assertInvalid(() => parseGatewayDuration(text, "spec.timeouts.request"), "spec.timeouts.request");
    });
  }
});

Deno.test("readHttpRoute() reads a route in full, with Gateway API's defaults", async (t) => {
  const spec = readHttpRoute(route(FULL));
  await t.step("parents, hostnames, and a rule's matches with header names lowercased and the default path", () => {
    assert.deepEqual(spec.parentRefs, [{ group: "", kind: "Service", name: "web", port: 80 }]);
    assert.deepEqual(spec.hostnames, ["web.shop.svc.cluster.local", "*.example.com"]);
    const [first, second] = spec.rules[0].matches;
    assert.deepEqual(first, {
      path: { type: "PathPrefix", value: "/api" },
      headers: [{ name: "x-canary", type: "Exact", value: "yes" }],
      queryParams: [{ name: "v", type: "RegularExpression", value: "^[0-9]+$" }],
      method: "GET",
    });
    assert.deepEqual(second.path, { type: "PathPrefix", value: "/" });
  });
  await t.step("filters become the rule's header modifiers", () => {
    assert.deepEqual(spec.rules[0].requestHeaders, {
      set: [{ name: "x-route", value: "api" }],
      add: [],
      remove: ["x-internal"],
    });
    assert.deepEqual(spec.rules[0].responseHeaders, {
      set: [],
      add: [{ name: "cache-control", value: "no-store" }],
      remove: [],
    });
  });
  await t.step("backends, timeouts in milliseconds (0s is none) and retries with their defaults", () => {
    assert.deepEqual(spec.rules[0].backendRefs, [
      { name: "web", port: 8080, weight: 90 },
      { name: "web-v2", port: 8080, weight: 10 },
    ]);
    assert.deepEqual([spec.rules[0].timeoutMs, spec.rules[0].backendTimeoutMs], [10_000, 500]);
    assert.deepEqual(spec.rules[0].retry, { attempts: 3, codes: [502, 503], backoffMs: 100 });
    assert.deepEqual(spec.rules[1].backendRefs[0].weight, 1);
    assert.equal("timeoutMs" in spec.rules[1], false);
    assert.deepEqual(spec.rules[1].retry, DEFAULT_RETRY);
  });
  await t.step("a parent without group and kind is a Gateway; a route without rules has the default rule", () => {
    const s = readHttpRoute(route("parentRefs: [{ name: waypoint }]"));
    assert.deepEqual(s.parentRefs, [{ group: "gateway.networking.k8s.io", kind: "Gateway", name: "waypoint" }]);
    assert.deepEqual(s.rules, [{
      matches: [{ path: { type: "PathPrefix", value: "/" }, headers: [], queryParams: [] }],
      backendRefs: [],
    }]);
  });
});

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

Deno.test("readHttpRoute() refuses what Skiff cannot honour, naming the field", async (t) => {
  const R = ["rules", 0];
  const M = [...R, "matches"];
  const F = [...R, "filters"];
  const B = [...R, "backendRefs", 0];
  const cases: [string, Key[], unknown, string, RegExp][] = [
    ["an unknown path type", [...M, 1, "path"], { type: "Regex" }, "spec.rules[0].matches[1].path.type", /one of/],
    [
      "a prefix that is no absolute path",
      [...M, 0, "path", "value"],
      "api",
      "spec.rules[0].matches[0].path.value",
      /absolute/,
    ],
    [
      "a regular expression that does not compile",
      [...M, 0, "path"],
      { type: "RegularExpression", value: "(" },
      "spec.rules[0].matches[0].path.value",
      /not a valid regular expression/,
    ],
    [
      "a filter Skiff does not have yet",
      F,
      [{ type: "RequestRedirect", requestRedirect: { statusCode: 301 } }],
      "spec.rules[0].filters[0].type",
      /RequestRedirect is not supported by Skiff yet/,
    ],
    [
      "a filter of another type's field",
      [...F, 0, "responseHeaderModifier"],
      { set: [] },
      "spec.rules[0].filters[0].responseHeaderModifier",
      /must not be set/,
    ],
    [
      "a filter without its field",
      [...F, 0, "requestHeaderModifier"],
      undefined,
      "spec.rules[0].filters[0].requestHeaderModifier",
      /is required/,
    ],
    [
      "a filter given twice",
      [...F, 1],
      { type: "RequestHeaderModifier", requestHeaderModifier: {} },
      "spec.rules[0].filters[1].type",
      /given twice/,
    ],
    [
      "a header value with a line break",
      [...F, 0, "requestHeaderModifier", "set", 0, "value"],
      "a\nb",
      "spec.rules[0].filters[0].requestHeaderModifier.set[0].value",
      /CR, LF or NUL/,
    ],
    ["a backend without a port", [...B, "port"], undefined, "spec.rules[0].backendRefs[0].port", /required/],
    [
      "a backend of another kind",
      [...B, "kind"],
      "ServiceImport",
      "spec.rules[0].backendRefs[0].kind",
      /not supported by Skiff yet/,
    ],
    [
      "a backend of another group",
      [...B, "group"],
      "networking.istio.io",
      "spec.rules[0].backendRefs[0].group",
      /not supported by Skiff yet/,
    ],
    [
      "filters on a backend",
      [...B, "filters"],
      [{ type: "RequestHeaderModifier" }],
      "spec.rules[0].backendRefs[0].filters",
      /not supported by Skiff yet/,
    ],
    ["a weight too large", [...B, "weight"], 1_000_001, "spec.rules[0].backendRefs[0].weight", /0 to/],
    ["a duration in days", [...R, "timeouts", "request"], "1d", "spec.rules[0].timeouts.request", /duration/],
    [
      "an attempt allowed longer than the request",
      [...R, "timeouts", "backendRequest"],
      "1m",
      "spec.rules[0].timeouts.backendRequest",
      /cannot be longer/,
    ],
    ["a retried 4xx", [...R, "retry", "codes"], [429], "spec.rules[0].retry.codes[0]", /5xx codes are/],
    ["session persistence", [...R, "sessionPersistence"], {}, "spec.rules[0].sessionPersistence", /not supported/],
    ["an unknown rule field", [...R, "mirror"], true, "spec.rules[0].mirror", /not a known field/],
    ["17 rules", ["rules"], Array(17).fill({}), "spec.rules", /at most 16/],
    ["65 matches in a rule", M, Array(65).fill({}), "spec.rules[0].matches", /at most 64/],
    [
      "129 matches in the route",
      ["rules"],
      [0, 1, 2].map(() => ({ matches: Array(43).fill({}) })),
      "spec.rules",
      /at most 128/,
    ],
    [
      "17 backends",
      [...R, "backendRefs"],
      Array(17).fill({ name: "web", port: 80 }),
      "spec.rules[0].backendRefs",
      /at most 16/,
    ],
    ["no parent", ["parentRefs"], [], "spec.parentRefs", /needs a parent/],
    ["a bad hostname", ["hostnames"], ["Web_1"], "spec.hostnames[0]", /hostname/],
  ];
  for (const [name, path, value, field, message] of cases) {
    await t.step(name, () => {
      assertInvalid(() => readHttpRoute({ spec: patched(parse(FULL), path, value) }), field, message);
    });
  }
});

const services = (yaml: string): Map<string, ServiceSpec> =>
  new Map(
    Object.entries(parse(yaml) as Record<string, unknown>).map(([name, spec]) => [name, readService({ spec })]),
  );

Deno.test("resolveHttpRoute() attaches a route to the Services of its namespace, and says what it left out", async (t) => {
  const declared = services(`
web: { ports: [{ name: http, port: 80, targetPort: 8080 }, { name: dns, port: 53, protocol: UDP }] }
web-v2: { ports: [{ port: 8080 }] }
`);
  const resolve = (spec: HttpRouteSpec) => resolveHttpRoute("shop", "r", spec, declared, DEFAULT_SETTINGS);
  await t.step("parents become service keys; a sectionName names a port", () => {
    const r = resolve(readHttpRoute(route(`
parentRefs:
  - { group: "", kind: Service, name: web }
  - { group: core, kind: Service, name: web, sectionName: http }
  - { group: "", kind: Service, name: web, port: 80 }
`)));
    assert.deepEqual(r.warnings, []);
    assert.deepEqual(r.route!.parents, [
      { service: "shop/web.shop.svc.cluster.local" },
      { service: "shop/web.shop.svc.cluster.local", port: 80 },
    ], "a parent named twice is attached once");
  });
  await t.step("parents Skiff cannot attach to are ignored, each with its reason", () => {
    const r = resolve(readHttpRoute(route(`
parentRefs:
  - { name: waypoint }
  - { group: "", kind: Service, name: web, namespace: other }
  - { group: "", kind: Service, name: api }
  - { group: "", kind: Service, name: web, sectionName: grpc }
  - { group: "", kind: Service, name: web, port: 53 }
  - { group: networking.istio.io, kind: ServiceEntry, name: ext }
  - { group: "", kind: Service, name: web, port: 80 }
`)));
    assert.deepEqual(r.route!.parents, [{ service: "shop/web.shop.svc.cluster.local", port: 80 }]);
    assert.equal(r.warnings.length, 6);
    const says = [
      /parentRefs\[0\]: Gateway shop\/waypoint: Skiff's waypoints take routes attached to Services; this parent is ignored/,
      /parentRefs\[1\]: Service other\/web is in another namespace/,
      /parentRefs\[2\]: Service shop\/api is not declared/,
      /parentRefs\[3\]: Service shop\/web has no TCP port named "grpc"/,
      /parentRefs\[4\]: Service shop\/web has no TCP port 53/,
      /parentRefs\[5\]: ServiceEntry of group "networking.istio.io" is not a parent Skiff supports/,
    ];
    says.forEach((re, i) => assert.match(r.warnings[i], re));
  });
  await t.step("a route with no parent left is not built", () => {
    const r = resolve(readHttpRoute(route("parentRefs: [{ name: waypoint }]")));
    assert.equal(r.route, undefined);
    assert.match(r.warnings.at(-1)!, /no parent Service is left/);
  });
  await t.step("backends become service keys; one that cannot be resolved keeps a problem and is reported", () => {
    const r = resolve(readHttpRoute(route(`
parentRefs: [{ group: "", kind: Service, name: web }]
rules:
  - backendRefs:
      - { name: web-v2, port: 8080, weight: 3 }
      - { name: gone, port: 80 }
      - { name: web-v2, port: 9090 }
      - { name: web, namespace: other, port: 80 }
`)));
    assert.deepEqual(r.route!.rules[0].backends, [
      { service: "shop/web-v2.shop.svc.cluster.local", port: 8080, weight: 3 },
      {
        service: "shop/gone.shop.svc.cluster.local",
        port: 80,
        weight: 1,
        problem: "Service shop/gone is not declared",
      },
      {
        service: "shop/web-v2.shop.svc.cluster.local",
        port: 9090,
        weight: 1,
        problem: "Service shop/web-v2 has no TCP port 9090",
      },
      {
        service: "other/web.other.svc.cluster.local",
        port: 80,
        weight: 1,
        problem: "Service other/web is in another namespace, which needs a ReferenceGrant that Skiff does not read",
      },
    ]);
    assert.deepEqual(r.warnings, [
      "spec.rules[0].backendRefs[1]: Service shop/gone is not declared; its share of requests is answered 500",
      "spec.rules[0].backendRefs[2]: Service shop/web-v2 has no TCP port 9090; its share of requests is answered 500",
      "spec.rules[0].backendRefs[3]: Service other/web is in another namespace, which needs a ReferenceGrant that " +
      "Skiff does not read; its share of requests is answered 500",
    ]);
  });
  await t.step("what it builds is what the waypoint decodes", () => {
    const spec = readHttpRoute(route(FULL));
    const r = resolve(spec).route!;
    assert.deepEqual(decodeHttpRoute(JSON.parse(JSON.stringify(r))), r);
  });
});
