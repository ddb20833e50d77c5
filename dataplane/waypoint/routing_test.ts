import assert from "node:assert/strict";
import type { HttpRoute, RouteBackend, RouteMatch, RouteRule } from "../../mesh/l7.ts";
import {
  applyHeaderModifier,
  parseQuery,
  pathMatches,
  pickBackend,
  routeMatchHolds,
  type RouteRequest,
  selectRule,
} from "./routing.ts";

const SVC = "shop/web.shop.svc.cluster.local";

function match(m: Partial<RouteMatch>): RouteMatch {
  return { headers: [], queryParams: [], ...m };
}

function ruleOf(matches: RouteMatch[], backend = "v1"): RouteRule {
  return { matches, backends: [{ service: `shop/${backend}`, port: 80, weight: 1 }] };
}

function route(
  name: string,
  rules: RouteRule[],
  opts: { namespace?: string; port?: number; service?: string } = {},
): HttpRoute {
  return {
    name,
    namespace: opts.namespace ?? "shop",
    parents: [{ service: opts.service ?? SVC, port: opts.port }],
    rules,
  };
}

function req(path: string, r: Partial<RouteRequest> = {}): RouteRequest {
  return { method: "GET", path, query: "", headers: [], ...r };
}

/** The backend service of the selected rule, or undefined. */
function chosen(routes: HttpRoute[], r: RouteRequest, port = 80, key?: string): string | undefined {
  return selectRule(routes, r, port, key)?.rule.backends[0].service.slice("shop/".length);
}

Deno.test("pathMatches() matches PathPrefix on whole segments and ignores a trailing slash in the prefix", async (t) => {
  const cases: [type: "Exact" | "PathPrefix" | "RegularExpression", value: string, path: string, want: boolean][] = [
    ["PathPrefix", "/foo", "/foo", true],
    ["PathPrefix", "/foo", "/foo/", true],
    ["PathPrefix", "/foo", "/foo/bar", true],
    ["PathPrefix", "/foo", "/foobar", false],
    ["PathPrefix", "/foo/", "/foo", true],
    ["PathPrefix", "/foo/", "/foo/bar", true],
    ["PathPrefix", "/foo/", "/foobar", false],
    ["PathPrefix", "/", "/anything/at/all", true],
    ["PathPrefix", "/", "/", true],
    ["PathPrefix", "/Foo", "/foo", false],
    ["Exact", "/foo", "/foo", true],
    ["Exact", "/foo", "/foo/", false],
    ["RegularExpression", "/v[0-9]+/.*", "/v12/items", true],
    ["RegularExpression", "/v[0-9]+", "/v12/items", false],
    ["RegularExpression", "/v[0-9]+", "/x/v12", false],
    ["RegularExpression", "/a|/b", "/b", true],
    ["RegularExpression", "/a|/b", "/bc", false],
    ["RegularExpression", "/([", "/([", false],
  ];
  for (const [type, value, path, want] of cases) {
    await t.step(`${type} ${value} on ${path} → ${want}`, () => assert.equal(pathMatches({ type, value }, path), want));
  }
});

Deno.test("routeMatchHolds() checks method, headers and query parameters", async (t) => {
  const cases: { name: string; m: RouteMatch; r: RouteRequest; want: boolean }[] = [
    { name: "method exact", m: match({ method: "POST" }), r: req("/", { method: "POST" }), want: true },
    { name: "method mismatch", m: match({ method: "POST" }), r: req("/"), want: false },
    {
      name: "header name case-insensitive",
      m: match({ headers: [{ name: "X-Version", type: "Exact", value: "v2" }] }),
      r: req("/", { headers: [["x-version", "v2"]] }),
      want: true,
    },
    {
      name: "header value case-sensitive",
      m: match({ headers: [{ name: "x-version", type: "Exact", value: "v2" }] }),
      r: req("/", { headers: [["x-version", "V2"]] }),
      want: false,
    },
    {
      name: "repeated header values are joined with , as Envoy does",
      m: match({ headers: [{ name: "x-version", type: "Exact", value: "v1,v2" }] }),
      r: req("/", { headers: [["x-version", "v1"], ["x-version", "v2"]] }),
      want: true,
    },
    {
      name: "so a single value of a repeated header does not match Exact",
      m: match({ headers: [{ name: "x-version", type: "Exact", value: "v2" }] }),
      r: req("/", { headers: [["x-version", "v1"], ["x-version", "v2"]] }),
      want: false,
    },
    {
      name: "header regex is a full match",
      m: match({ headers: [{ name: "user-agent", type: "RegularExpression", value: "curl/.*" }] }),
      r: req("/", { headers: [["user-agent", "x curl/8"]] }),
      want: false,
    },
    {
      name: "absent header",
      m: match({ headers: [{ name: "x-version", type: "RegularExpression", value: ".*" }] }),
      r: req("/"),
      want: false,
    },
    {
      name: "only the first of two header matches for one name counts",
      m: match({
        headers: [{ name: "x-v", type: "Exact", value: "a" }, { name: "X-V", type: "Exact", value: "b" }],
      }),
      r: req("/", { headers: [["x-v", "a"]] }),
      want: true,
    },
    {
      name: "query exact, percent-decoded",
      m: match({ queryParams: [{ name: "q", type: "Exact", value: "a b/c" }] }),
      r: req("/", { query: "x=1&q=a%20b%2Fc" }),
      want: true,
    },
    {
      name: "query + stays +",
      m: match({ queryParams: [{ name: "q", type: "Exact", value: "a+b" }] }),
      r: req("/", { query: "q=a+b" }),
      want: true,
    },
    {
      name: "query first value wins",
      m: match({ queryParams: [{ name: "v", type: "Exact", value: "2" }] }),
      r: req("/", { query: "v=1&v=2" }),
      want: false,
    },
    {
      name: "query name is case-sensitive",
      m: match({ queryParams: [{ name: "V", type: "Exact", value: "1" }] }),
      r: req("/", { query: "v=1" }),
      want: false,
    },
    {
      name: "query regex",
      m: match({ queryParams: [{ name: "id", type: "RegularExpression", value: "[0-9]+" }] }),
      r: req("/", { query: "id=123" }),
      want: true,
    },
    {
      name: "all fields together",
      m: match({
        path: { type: "PathPrefix", value: "/api" },
        method: "GET",
        headers: [{ name: "x-a", type: "Exact", value: "1" }],
        queryParams: [{ name: "b", type: "Exact", value: "2" }],
      }),
      r: req("/api/x", { headers: [["x-a", "1"]], query: "b=2" }),
      want: true,
    },
  ];
  for (const c of cases) await t.step(c.name, () => assert.equal(routeMatchHolds(c.m, c.r), c.want));
});

Deno.test("parseQuery() keeps the first value, decodes escapes and keeps bad ones raw", () => {
  assert.deepEqual(
    [...parseQuery("a=1&a=2&b&c=%41%2b&&d=%zz&=e")],
    [["a", "1"], ["b", ""], ["c", "A+"], ["d", "%zz"], ["", "e"]],
  );
  assert.equal(parseQuery("").size, 0);
});

Deno.test("selectRule() applies Gateway API precedence across all rules of all routes", async (t) => {
  const exact = match({ path: { type: "Exact", value: "/api/v1" } });
  const prefixLong = match({ path: { type: "PathPrefix", value: "/api/v1" } });
  const prefixShort = match({ path: { type: "PathPrefix", value: "/api" } });
  const regex = match({ path: { type: "RegularExpression", value: "/api/v[0-9]+.*" } });
  const cases: { name: string; routes: HttpRoute[]; r: RouteRequest; want: string | undefined }[] = [
    {
      name: "Exact beats a longer-matching prefix in another route",
      routes: [route("a", [ruleOf([prefixLong], "prefix")]), route("b", [ruleOf([exact], "exact")])],
      r: req("/api/v1"),
      want: "exact",
    },
    {
      name: "the longest PathPrefix wins",
      routes: [route("a", [ruleOf([prefixShort], "short"), ruleOf([prefixLong], "long")])],
      r: req("/api/v1/items"),
      want: "long",
    },
    {
      name: "a trailing slash does not lengthen a prefix: /api/ ties with /api and the route order decides",
      routes: [
        route("b", [ruleOf([match({ path: { type: "PathPrefix", value: "/api/" } })], "slash")]),
        route("a", [ruleOf([prefixShort], "plain")]),
      ],
      r: req("/api/x"),
      want: "plain",
    },
    {
      name: "PathPrefix beats RegularExpression",
      routes: [route("a", [ruleOf([regex], "regex"), ruleOf([prefixShort], "prefix")])],
      r: req("/api/v2/items"),
      want: "prefix",
    },
    {
      name: "a match without a path is PathPrefix / and beats RegularExpression",
      routes: [route("a", [ruleOf([regex], "regex")]), route("b", [ruleOf([match({})], "root")])],
      r: req("/api/v2"),
      want: "root",
    },
    {
      name: "RegularExpression when nothing else matches",
      routes: [route("a", [ruleOf([regex], "regex"), ruleOf([prefixLong], "prefix")])],
      r: req("/api/v2"),
      want: "regex",
    },
    {
      name: "an empty matches list catches everything, below any longer prefix",
      routes: [route("a", [ruleOf([], "default"), ruleOf([prefixShort], "api")])],
      r: req("/api/x"),
      want: "api",
    },
    {
      name: "an empty matches list catches what nothing else does",
      routes: [route("a", [ruleOf([], "default"), ruleOf([prefixShort], "api")])],
      r: req("/other"),
      want: "default",
    },
    {
      name: "with equal paths, a method match wins",
      routes: [route("a", [ruleOf([prefixShort], "any"), ruleOf([match({ ...prefixShort, method: "GET" })], "get")])],
      r: req("/api"),
      want: "get",
    },
    {
      name: "a method match does not beat a longer prefix",
      routes: [route("a", [ruleOf([match({ ...prefixShort, method: "GET" })], "get"), ruleOf([prefixLong], "long")])],
      r: req("/api/v1"),
      want: "long",
    },
    {
      name: "then the most header matches",
      routes: [
        route("a", [
          ruleOf([match({ headers: [{ name: "x-a", type: "Exact", value: "1" }] })], "one"),
          ruleOf([
            match({
              headers: [{ name: "x-a", type: "Exact", value: "1" }, { name: "x-b", type: "Exact", value: "2" }],
            }),
          ], "two"),
        ]),
      ],
      r: req("/", { headers: [["x-a", "1"], ["x-b", "2"]] }),
      want: "two",
    },
    {
      name: "a method match beats more header matches",
      routes: [
        route("a", [
          ruleOf([match({ headers: [{ name: "x-a", type: "Exact", value: "1" }] })], "header"),
          ruleOf([match({ method: "GET" })], "method"),
        ]),
      ],
      r: req("/", { headers: [["x-a", "1"]] }),
      want: "method",
    },
    {
      name: "then the most query matches",
      routes: [
        route("a", [
          ruleOf([match({ queryParams: [{ name: "a", type: "Exact", value: "1" }] })], "one"),
          ruleOf([
            match({
              queryParams: [{ name: "a", type: "Exact", value: "1" }, { name: "b", type: "Exact", value: "2" }],
            }),
          ], "two"),
        ]),
      ],
      r: req("/", { query: "a=1&b=2" }),
      want: "two",
    },
    {
      name: "header matches outrank query matches",
      routes: [
        route("a", [
          ruleOf([match({ queryParams: [{ name: "a", type: "Exact", value: "1" }] })], "query"),
          ruleOf([match({ headers: [{ name: "x-a", type: "Exact", value: "1" }] })], "header"),
        ]),
      ],
      r: req("/", { query: "a=1", headers: [["x-a", "1"]] }),
      want: "header",
    },
    {
      name: "on a full tie the route whose namespace/name sorts first wins, whatever the list order",
      routes: [route("zeta", [ruleOf([prefixShort], "zeta")]), route("alpha", [ruleOf([prefixShort], "alpha")])],
      r: req("/api"),
      want: "alpha",
    },
    {
      name: "namespace sorts before name",
      routes: [
        route("a", [ruleOf([prefixShort], "shop-a")], { namespace: "shop" }),
        route("z", [ruleOf([prefixShort], "bar-z")], { namespace: "bar" }),
      ],
      r: req("/api"),
      want: "bar-z",
    },
    {
      name: "then the earlier rule of the route",
      routes: [route("a", [ruleOf([prefixShort], "first"), ruleOf([prefixShort], "second")])],
      r: req("/api"),
      want: "first",
    },
    {
      name: "the best match of a rule with several matches counts",
      routes: [route("a", [ruleOf([match({}), exact], "multi"), ruleOf([prefixLong], "long")])],
      r: req("/api/v1"),
      want: "multi",
    },
    {
      name: "nothing matches: undefined",
      routes: [route("a", [ruleOf([prefixShort], "api")])],
      r: req("/apix"),
      want: undefined,
    },
  ];
  for (const c of cases) await t.step(c.name, () => assert.equal(chosen(c.routes, c.r), c.want));
});

Deno.test("selectRule() only considers routes attached to the port and Service", async (t) => {
  const onPort80 = route("on80", [ruleOf([], "p80")], { port: 80 });
  const onPort90 = route("on90", [ruleOf([match({ path: { type: "PathPrefix", value: "/long/path" } })], "p90")], {
    port: 90,
  });
  const anyPort = route("any", [ruleOf([match({ path: { type: "PathPrefix", value: "/long" } })], "any")]);
  const otherSvc = route("other", [ruleOf([match({ path: { type: "Exact", value: "/long/path" } })], "other")], {
    service: "shop/other.shop.svc.cluster.local",
  });
  const routes = [onPort80, onPort90, anyPort, otherSvc];
  await t.step("port 90 takes its own route", () => assert.equal(chosen(routes, req("/long/path"), 90, SVC), "p90"));
  await t.step("port 80 does not see the port-90 route", () => {
    assert.equal(chosen(routes, req("/long/path"), 80, SVC), "any");
  });
  await t.step("a parent without a port takes any port", () => {
    assert.equal(chosen(routes, req("/long/x"), 12345, SVC), "any");
  });
  await t.step("no serviceKey: every parent's Service counts", () => {
    assert.equal(chosen(routes, req("/long/path"), 80), "other");
  });
  await t.step("a route with several parents attaches through any of them", () => {
    const multi: HttpRoute = { ...otherSvc, parents: [{ service: "shop/x", port: 1 }, { service: SVC, port: 80 }] };
    const sel = selectRule([multi], req("/long/path"), 80, SVC);
    assert.equal(sel?.route, multi);
    assert.equal(sel?.ruleIndex, 0);
  });
  await t.step("no route attached: undefined", () => {
    assert.equal(selectRule([otherSvc], req("/long/path"), 80, SVC), undefined);
  });
});

Deno.test("selectRule() reports the rule's index in its route", () => {
  const r = route("a", [ruleOf([match({ method: "POST" })], "post"), ruleOf([], "default")]);
  const sel = selectRule([r], req("/"), 80, SVC);
  assert.equal(sel?.ruleIndex, 1);
  assert.equal(sel?.rule, r.rules[1]);
});

/** A seeded PRNG (mulberry32), so the weight test is deterministic. */
function seeded(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function backends(...weights: number[]): RouteRule {
  return {
    matches: [],
    backends: weights.map((weight, i): RouteBackend => ({ service: `shop/b${i}`, port: 80, weight })),
  };
}

Deno.test("pickBackend() splits by weight", async (t) => {
  await t.step("90/10 over 100 000 picks lands within 1% of 90/10", () => {
    const rule = backends(90, 10);
    const random = seeded(42);
    const counts = new Map<string, number>();
    const n = 100_000;
    for (let i = 0; i < n; i++) {
      const b = pickBackend(rule, random)!.service;
      counts.set(b, (counts.get(b) ?? 0) + 1);
    }
    const share = (counts.get("shop/b0") ?? 0) / n;
    assert.ok(Math.abs(share - 0.9) < 0.01, `b0 got ${share}`);
    assert.equal((counts.get("shop/b0") ?? 0) + (counts.get("shop/b1") ?? 0), n);
  });
  await t.step("weight 0 is never picked", () => {
    const rule = backends(0, 1, 0);
    const random = seeded(7);
    for (let i = 0; i < 1000; i++) assert.equal(pickBackend(rule, random)?.service, "shop/b1");
  });
  await t.step("the edges of random() map to the first and last backends", () => {
    const rule = backends(1, 0, 3);
    assert.equal(pickBackend(rule, () => 0)?.service, "shop/b0");
    assert.equal(pickBackend(rule, () => 0.2499)?.service, "shop/b0");
    assert.equal(pickBackend(rule, () => 0.25)?.service, "shop/b2");
    assert.equal(pickBackend(rule, () => 0.999999)?.service, "shop/b2");
    assert.equal(pickBackend(rule, () => 1)?.service, "shop/b2");
  });
  await t.step("all weights zero, or no backends: undefined", () => {
    assert.equal(pickBackend(backends(0, 0), () => 0.5), undefined);
    assert.equal(pickBackend(backends(), () => 0.5), undefined);
  });
  await t.step("a backend with a problem is still picked for its share", () => {
    const rule: RouteRule = {
      matches: [],
      backends: [{ service: "shop/gone", port: 80, weight: 1, problem: "not found" }],
    };
    assert.equal(pickBackend(rule, () => 0.5)?.problem, "not found");
  });
});

Deno.test("applyHeaderModifier() removes, then sets, then adds, by lowercase name", async (t) => {
  const base: [string, string][] = [["host", "web"], ["x-a", "1"], ["accept", "*/*"], ["x-a", "2"], ["x-drop", "z"]];
  await t.step("no modifier: a copy with lowercase names", () => {
    const input: [string, string][] = [["X-A", "1"]];
    const out = applyHeaderModifier(input, undefined);
    assert.deepEqual(out, [["x-a", "1"]]);
    assert.notEqual(out, input);
  });
  await t.step("set replaces every value at the first position", () => {
    assert.deepEqual(applyHeaderModifier(base, { set: [{ name: "X-A", value: "9" }], add: [], remove: [] }), [
      ["host", "web"],
      ["x-a", "9"],
      ["accept", "*/*"],
      ["x-drop", "z"],
    ]);
  });
  await t.step("set adds an absent header", () => {
    assert.deepEqual(
      applyHeaderModifier([["host", "web"]], { set: [{ name: "x-new", value: "1" }], add: [], remove: [] }),
      [["host", "web"], ["x-new", "1"]],
    );
  });
  await t.step("add appends another value", () => {
    assert.deepEqual(applyHeaderModifier(base, { set: [], add: [{ name: "X-A", value: "3" }], remove: [] }), [
      ...base,
      ["x-a", "3"],
    ]);
  });
  await t.step("remove deletes every value", () => {
    assert.deepEqual(applyHeaderModifier(base, { set: [], add: [], remove: ["X-A", "x-drop"] }), [
      ["host", "web"],
      ["accept", "*/*"],
    ]);
  });
  await t.step("remove and add of one name: the added value stays", () => {
    assert.deepEqual(
      applyHeaderModifier(base, { set: [], add: [{ name: "x-drop", value: "new" }], remove: ["x-drop"] }),
      [["host", "web"], ["x-a", "1"], ["accept", "*/*"], ["x-a", "2"], ["x-drop", "new"]],
    );
  });
  await t.step("the input is not changed", () => {
    const copy = structuredClone(base);
    applyHeaderModifier(base, { set: [{ name: "x-a", value: "9" }], add: [], remove: ["host"] });
    assert.deepEqual(base, copy);
  });
});
