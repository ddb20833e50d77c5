import assert from "node:assert/strict";
import { checkInt, checkOneOf, checkString, dnsLabel, dnsSubdomain, fieldPath, Fields, show } from "./validate.ts";
import { assertInvalid } from "../tests/harness/assert.ts";

Deno.test("fieldPath() joins identifiers with dots, indexes with brackets and quotes other keys", async (t) => {
  const cases: [string, string | number, string][] = [
    ["workload", "addresses", "workload.addresses"],
    ["workload.addresses", 1, "workload.addresses[1]"],
    ["", "workload", "workload"],
    ["workload.services", "default/web.svc", 'workload.services["default/web.svc"]'],
    ["x", "has space", 'x["has space"]'],
    ["x", "1abc", 'x["1abc"]'],
    ["x", 'q"uote', 'x["q\\"uote"]'],
  ];
  for (const [path, key, want] of cases) {
    await t.step(want, () => assert.equal(fieldPath(path, key), want));
  }
});

Deno.test("show() prints a bad value as JSON, shortened to 80 characters", async (t) => {
  const cases: [string, unknown, string][] = [
    ["string", "a", '"a"'],
    ["number", 70000, "70000"],
    ["undefined", undefined, "undefined"],
    ["null", null, "null"],
    ["object", { a: 1 }, '{"a":1}'],
    ["bigint", 10n, "10"],
    ["symbol", Symbol("s"), "Symbol(s)"],
  ];
  for (const [name, value, want] of cases) {
    await t.step(name, () => assert.equal(show(value), want));
  }
  await t.step("long value", () => {
    const s = show("x".repeat(1000));
    assert.equal(s.length, 80);
    assert.ok(s.endsWith("..."));
  });
  await t.step("circular value", () => {
    const o: Record<string, unknown> = {};
    o.self = o;
    assert.equal(show(o), "[object Object]");
  });
});

Deno.test("Fields reports an unread key by its path", () => {
  const f = Fields.of({ a: 1, b: 2 }, "doc");
  assert.equal(f.int("a", { min: 0, max: 9 }), 1);
  assertInvalid(() => f.done(), "doc.b", /is not a known field/);
  const g = Fields.of({ a: 1 }, "doc");
  g.raw("a");
  g.done();
});

Deno.test("Fields treats null as absent", () => {
  const f = Fields.of({ s: null, n: null, b: null, o: null, l: null, r: null }, "doc");
  assert.equal(f.has("s"), false);
  assert.equal(f.string("s", { default: "d" }), "d");
  assert.equal(f.int("n", { min: 0, max: 1, default: 1 }), 1);
  assert.equal(f.bool("b", true), true);
  assert.equal(f.optionalObject("o", () => 1), undefined);
  assert.deepEqual(f.array("l", () => 1), []);
  assert.deepEqual(f.record("r", () => 1), {});
  f.done();
});

Deno.test("Fields names the path of each kind of bad value", async (t) => {
  const cases: [string, (f: Fields) => unknown, string, RegExp][] = [
    ["required string missing", (f) => f.string("missing"), "doc.missing", /is required/],
    ["required int missing", (f) => f.int("missing", { min: 0, max: 1 }), "doc.missing", /is required/],
    ["bool of the wrong type", (f) => f.bool("num", false), "doc.num", /expected true or false, got 5/],
    ["oneOf outside the set", (f) => f.oneOf("str", ["a", "b"], "a"), "doc.str", /expected one of a, b, got "text"/],
    ["array of the wrong type", (f) => f.array("str", (v) => v), "doc.str", /expected a list/],
    ["array too long", (f) => f.array("list", (v) => v, { max: 2 }), "doc.list", /3 items, at most 2/],
    ["array item", (f) => f.array("list", (v, p) => checkInt(v, p, 0, 2)), "doc.list[2]", /got 3/],
    ["record of the wrong type", (f) => f.record("list", (v) => v), "doc.list", /expected an object/],
    ["record value", (f) => f.record("map", (v, p) => checkString(v, p)), 'doc.map["a/b"]', /expected a string/],
  ];
  for (const [name, read, field, problem] of cases) {
    await t.step(name, () => {
      const f = Fields.of({ num: 5, str: "text", list: [1, 2, 3], map: { "a/b": 1 } }, "doc");
      assertInvalid(() => read(f), field, problem);
    });
  }
});

Deno.test("checkString(), checkInt() and checkOneOf() reject values of the wrong type", () => {
  assertInvalid(() => checkString(1, "p"), "p", /expected a string, got 1/);
  assertInvalid(() => checkString("", "p", { nonEmpty: true }), "p", /must not be empty/);
  assertInvalid(() => checkString("x".repeat(4097), "p"), "p", /4097 characters long, at most 4096/);
  assertInvalid(
    () => checkString("ab", "p", { check: (v) => v === "ab" ? "not ab" : undefined }),
    "p",
    /not ab, got "ab"/,
  );
  assertInvalid(() => checkInt(1.5, "p", 0, 2), "p", /integer from 0 to 2, got 1.5/);
  assertInvalid(() => checkInt(NaN, "p", 0, 2), "p", /integer/);
  assertInvalid(() => checkInt("1", "p", 0, 2), "p", /got "1"/);
  assertInvalid(() => checkOneOf(1, "p", ["a"]), "p", /expected one of a, got 1/);
  assert.equal(checkInt(2, "p", 0, 2), 2);
  assert.equal(checkOneOf("a", "p", ["a"]), "a");
});

Deno.test("dnsLabel and dnsSubdomain follow Kubernetes' DNS-1123 rules", async (t) => {
  const labels: [string, boolean][] = [
    ["a", true],
    ["a-b-1", true],
    ["1a", true],
    ["a".repeat(63), true],
    ["a".repeat(64), false],
    ["", false],
    ["-a", false],
    ["a-", false],
    ["A", false],
    ["a.b", false],
    ["a_b", false],
  ];
  for (const [v, ok] of labels) {
    await t.step(`label ${JSON.stringify(v.length > 10 ? `${v.length} chars` : v)}`, () => {
      assert.equal(dnsLabel(v) === undefined, ok);
    });
  }
  const subdomains: [string, boolean][] = [
    ["web.default.svc.cluster.local", true],
    ["a", true],
    [`${"a".repeat(63)}.${"b".repeat(63)}.${"c".repeat(63)}.${"d".repeat(61)}`, true],
    [`${"a".repeat(63)}.${"b".repeat(63)}.${"c".repeat(63)}.${"d".repeat(62)}`, false],
    ["a..b", false],
    [".a", false],
    ["a.", false],
    ["A.b", false],
    ["a/b", false],
  ];
  for (const [v, ok] of subdomains) {
    await t.step(`subdomain ${JSON.stringify(v.length > 40 ? `${v.length} chars` : v)}`, () => {
      assert.equal(dnsSubdomain(v) === undefined, ok);
    });
  }
});
