import assert from "node:assert/strict";
import { DEFAULT_TRUST_DOMAIN, SpiffeId, trustDomainProblem } from "./identity.ts";
import { assertInvalid } from "../tests/harness/assert.ts";

Deno.test("SpiffeId.parse() reads trust domain, namespace and service account", () => {
  const id = SpiffeId.parse("spiffe://cluster.local/ns/shop/sa/cart");
  assert.equal(id.trustDomain, "cluster.local");
  assert.equal(id.namespace, "shop");
  assert.equal(id.serviceAccount, "cart");
});

Deno.test("SpiffeId round-trips through parse() and toString()", async (t) => {
  for (
    const text of [
      "spiffe://cluster.local/ns/default/sa/default",
      "spiffe://example.org/ns/shop/sa/cart.v2",
      "spiffe://td_with-dash.0/ns/a-b/sa/x-y.z",
    ]
  ) {
    await t.step(text, () => {
      const id = SpiffeId.parse(text);
      assert.equal(id.toString(), text);
      assert.equal(JSON.stringify(id), JSON.stringify(text));
      assert.ok(SpiffeId.parse(id.toString()).equals(id));
    });
  }
});

Deno.test("SpiffeId.principal is the identity without spiffe://", () => {
  const id = SpiffeId.of("cluster.local", "shop", "cart");
  assert.equal(id.principal, "cluster.local/ns/shop/sa/cart");
  assert.equal(id.toString(), "spiffe://cluster.local/ns/shop/sa/cart");
});

Deno.test("SpiffeId.equals() compares every part", () => {
  const id = SpiffeId.of("cluster.local", "shop", "cart");
  assert.ok(id.equals(SpiffeId.parse("spiffe://cluster.local/ns/shop/sa/cart")));
  assert.ok(!id.equals(SpiffeId.of("example.org", "shop", "cart")));
  assert.ok(!id.equals(SpiffeId.of("cluster.local", "other", "cart")));
  assert.ok(!id.equals(SpiffeId.of("cluster.local", "shop", "other")));
});

Deno.test("SpiffeId.parse() rejects what the SPIFFE ID specification and Istio's form forbid", async (t) => {
  const cases: [string, string, RegExp][] = [
    ["uppercase scheme", "SPIFFE://cluster.local/ns/a/sa/b", /scheme/],
    ["mixed-case scheme", "Spiffe://cluster.local/ns/a/sa/b", /scheme/],
    ["wrong scheme", "https://cluster.local/ns/a/sa/b", /scheme/],
    ["scheme without //", "spiffe:cluster.local/ns/a/sa/b", /scheme/],
    ["no path", "spiffe://cluster.local", /path is missing/],
    ["empty trust domain", "spiffe:///ns/a/sa/b", /trust domain is empty/],
    ["uppercase trust domain", "spiffe://Cluster.Local/ns/a/sa/b", /trust domain may hold only/],
    ["port in the trust domain", "spiffe://cluster.local:8080/ns/a/sa/b", /port or user info/],
    ["user info in the trust domain", "spiffe://user@cluster.local/ns/a/sa/b", /port or user info/],
    ["user and password in the trust domain", "spiffe://u:p@cluster.local/ns/a/sa/b", /port or user info/],
    ["empty segment after the trust domain", "spiffe://cluster.local//ns/a/sa/b", /empty segment/],
    ["empty segment in the middle", "spiffe://cluster.local/ns//a/sa/b", /empty segment/],
    ["trailing slash", "spiffe://cluster.local/ns/a/sa/b/", /empty segment/],
    ["'.' segment", "spiffe://cluster.local/ns/./sa/b", /'\.' or '\.\.'/],
    ["'..' segment", "spiffe://cluster.local/ns/a/sa/b/../c", /'\.' or '\.\.'/],
    ["'..' as the namespace", "spiffe://cluster.local/ns/../sa/b", /'\.' or '\.\.'/],
    ["percent-encoding", "spiffe://cluster.local/ns/%61/sa/b", /may hold only letters/],
    ["percent-encoded slash", "spiffe://cluster.local/ns/a%2Fb/sa/c", /may hold only letters/],
    ["query", "spiffe://cluster.local/ns/a/sa/b?x=1", /may hold only letters/],
    ["fragment", "spiffe://cluster.local/ns/a/sa/b#frag", /may hold only letters/],
    ["query in the trust domain", "spiffe://cluster.local?x/ns/a/sa/b", /trust domain may hold only/],
    ["NUL byte in the path", "spiffe://cluster.local/ns/a\0/sa/b", /may hold only letters/],
    ["NUL byte in the trust domain", "spiffe://cluster\0.local/ns/a/sa/b", /trust domain may hold only/],
    ["space in the path", "spiffe://cluster.local/ns/a b/sa/c", /may hold only letters/],
    ["path without a service account", "spiffe://cluster.local/ns/x", /must be \/ns\/NAMESPACE\/sa/],
    ["extra segment", "spiffe://cluster.local/ns/x/sa/y/extra", /must be \/ns\/NAMESPACE\/sa/],
    ["foo instead of ns", "spiffe://cluster.local/foo/x/sa/y", /must be \/ns\/NAMESPACE\/sa/],
    ["ns and sa swapped", "spiffe://cluster.local/sa/y/ns/x", /must be \/ns\/NAMESPACE\/sa/],
    ["uppercase NS keyword", "spiffe://cluster.local/NS/x/sa/y", /must be \/ns\/NAMESPACE\/sa/],
    ["namespace with uppercase", "spiffe://cluster.local/ns/Shop/sa/cart", /namespace is not a DNS label/],
    ["namespace with a dot", "spiffe://cluster.local/ns/a.b/sa/cart", /namespace is not a DNS label/],
    ["namespace with an underscore", "spiffe://cluster.local/ns/a_b/sa/cart", /namespace is not a DNS label/],
    ["namespace starting with '-'", "spiffe://cluster.local/ns/-a/sa/cart", /namespace is not a DNS label/],
    ["namespace of 64 characters", `spiffe://cluster.local/ns/${"a".repeat(64)}/sa/cart`, /not a DNS label/],
    ["service account with uppercase", "spiffe://cluster.local/ns/a/sa/Cart", /service account is not/],
    ["service account with an underscore", "spiffe://cluster.local/ns/a/sa/c_d", /service account is not/],
    ["too long", `spiffe://cluster.local/ns/a/sa/${"b.".repeat(1100)}b`, /longer than 2048/],
    ["empty text", "", /scheme/],
  ];
  for (const [name, text, message] of cases) {
    await t.step(name, () => {
      const err = assertInvalid(() => SpiffeId.parse(text), "identity", message);
      assert.match(err.message, /is not a SPIFFE ID of the form/);
    });
  }
});

Deno.test("SpiffeId.parse() names the field it was given", () => {
  assertInvalid(() => SpiffeId.parse("spiffe://x/ns/a", "peer.principal"), "peer.principal");
});

Deno.test("SpiffeId.parse() of a non-string is a ValidationError, not a crash", () => {
  assertInvalid(() => SpiffeId.parse(42 as unknown as string), "identity", /expected a string/);
  assertInvalid(() => SpiffeId.parse(undefined as unknown as string), "identity", /expected a string/);
});

Deno.test("SpiffeId.parse() applies the 2048 limit at 2049 characters, not before", () => {
  // No valid Istio ID is this long (the parts are capped far lower), so a 2048-character text fails on a part
  // and a 2049-character one on its length.
  const at = (n: number) => `spiffe://${"t".repeat(n - "spiffe:///ns/a/sa/b".length)}/ns/a/sa/b`;
  assert.equal(at(2048).length, 2048);
  assertInvalid(() => SpiffeId.parse(at(2048)), "identity", /trust domain is longer than 255/);
  assertInvalid(() => SpiffeId.parse(at(2049)), "identity", /longer than 2048/);
});

Deno.test("SpiffeId.of() validates each part and names it", async (t) => {
  const cases: [string, [string, string, string], string][] = [
    ["empty trust domain", ["", "a", "b"], "identity.trustDomain"],
    ["uppercase trust domain", ["Cluster.local", "a", "b"], "identity.trustDomain"],
    ["trust domain with a port", ["cluster.local:80", "a", "b"], "identity.trustDomain"],
    ["trust domain of 256 characters", ["t".repeat(256), "a", "b"], "identity.trustDomain"],
    ["empty namespace", ["cluster.local", "", "b"], "identity.namespace"],
    ["namespace with a slash", ["cluster.local", "a/sa/x", "b"], "identity.namespace"],
    ["namespace with uppercase", ["cluster.local", "Shop", "b"], "identity.namespace"],
    ["empty service account", ["cluster.local", "a", ""], "identity.serviceAccount"],
    ["service account with a slash", ["cluster.local", "a", "b/c"], "identity.serviceAccount"],
    ["service account '..'", ["cluster.local", "a", ".."], "identity.serviceAccount"],
  ];
  for (const [name, [td, ns, sa], field] of cases) {
    await t.step(name, () => {
      const err = assertInvalid(() => SpiffeId.of(td, ns, sa), field);
      assert.match(err.message, /got /);
    });
  }
});

Deno.test("SpiffeId.of() accepts a dotted service account and a trust domain with '_'", () => {
  const id = SpiffeId.of("my_td.example", "shop", "cart.v2");
  assert.equal(id.toString(), "spiffe://my_td.example/ns/shop/sa/cart.v2");
});

Deno.test("trustDomainProblem() accepts Istio's default and rejects empty or oversized names", () => {
  assert.equal(trustDomainProblem(DEFAULT_TRUST_DOMAIN), undefined);
  assert.equal(DEFAULT_TRUST_DOMAIN, "cluster.local");
  assert.match(trustDomainProblem("")!, /empty/);
  assert.match(trustDomainProblem("x".repeat(256))!, /longer than 255/);
  assert.equal(trustDomainProblem("x".repeat(255)), undefined);
});
