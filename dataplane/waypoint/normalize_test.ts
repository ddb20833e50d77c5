import assert from "node:assert/strict";
import { normalizeHost, normalizePath } from "./normalize.ts";

Deno.test("normalizePath() gives every spelling of a path the canonical form policies match", async (t) => {
  const cases: [target: string, path: string, query?: string][] = [
    ["/", "/"],
    ["/admin", "/admin"],
    ["//admin", "/admin"],
    ["///admin//x", "/admin/x"],
    ["/admin%2F", "/admin/"],
    ["/admin%2f", "/admin/"],
    ["/admin%2Fx", "/admin/x"],
    ["/%2Fadmin", "/admin"],
    ["/%5Cadmin", "/admin"],
    ["/%5cadmin", "/admin"],
    ["/\\admin", "/admin"],
    ["/a\\b", "/a/b"],
    ["/./admin", "/admin"],
    ["/x/../admin", "/admin"],
    ["/x/%2E%2E/admin", "/admin"],
    ["/x/%2e./admin", "/admin"],
    ["/x%2F..%2Fadmin", "/admin"],
    ["/../admin", "/admin"],
    ["/../../..", "/"],
    ["/a/b/..", "/a/"],
    ["/a/b/.", "/a/b/"],
    ["/a/./b/../c", "/a/c"],
    ["/a/.b/..c", "/a/.b/..c"],
    ["/admin#x", "/admin"],
    ["/admin#x?y=1", "/admin"],
    ["/admin?a=1#frag", "/admin", "a=1"],
    ["/admin?x=%2F..%2F&y=//", "/admin", "x=%2F..%2F&y=//"],
    ["/admin?", "/admin", ""],
    ["/%61dmin", "/admin"],
    ["/%7Euser/%2D%5F%2E", "/~user/-_."],
    ["/%41", "/A"],
    ["/a%20b", "/a%20b"],
    ["/a%3fb", "/a%3Fb"],
    ["/caf%c3%a9", "/caf%C3%A9"],
    ["/%252F", "/%252F"],
    ["/%25", "/%25"],
    ["/Admin", "/Admin"],
    ["/a;b/c", "/a;b/c"],
    ["http://example.com/admin?q", "/admin", "q"],
    ["HTTPS://example.com//admin/", "/admin/"],
    ["http://example.com", "/"],
    ["http://example.com?q=1", "/", "q=1"],
  ];
  for (const [target, path, query = ""] of cases) {
    await t.step(`${target} → ${path}${query ? `?${query}` : ""}`, () => {
      assert.deepEqual(normalizePath(target), { path, query });
    });
  }
});

Deno.test("normalizePath() is idempotent on its output", () => {
  for (const t of ["//a/%2e%2e/b%2F%7e", "/x/../%61dmin%20/", "/a%c3%a9//./b"]) {
    const once = normalizePath(t);
    assert.ok("path" in once);
    assert.deepEqual(normalizePath(once.path), once);
  }
});

Deno.test("normalizePath() refuses what it cannot canonicalize safely", async (t) => {
  const cases: [target: string, why: RegExp][] = [
    ["", /empty/],
    ["/admin\0", /U\+0000 .* not visible ASCII/],
    ["/ad min", /U\+0020/],
    ["/admin\t", /U\+0009/],
    ["/admin\x7f", /U\+007F/],
    ["/café", /U\+00E9/],
    ["/admin?q=\n", /U\+000A/],
    ["/admin%00", /encoded NUL/],
    ["/admin%", /malformed percent-escape at offset 6/],
    ["/admin%2", /malformed percent-escape/],
    ["/admin%zz", /malformed percent-escape/],
    ["/%%2F", /malformed percent-escape at offset 1/],
    ["admin", /expected a path starting with \//],
    ["%2Fadmin", /expected a path starting with \//],
    ["%5Cadmin", /expected a path starting with \//],
    ["\\admin", /expected a path starting with \//],
    ["?q", /expected a path starting with \//],
    ["*", /asterisk-form/],
    ["ftp://host/admin", /scheme http or https/],
  ];
  for (const [target, why] of cases) {
    await t.step(JSON.stringify(target), () => {
      const r = normalizePath(target);
      assert.ok("error" in r, `expected an error, got ${JSON.stringify(r)}`);
      assert.match(r.error, /^Cannot normalize request target ".*": /s);
      assert.match(r.error, why);
    });
  }
});

Deno.test("normalizeHost() gives every spelling of a host one form (CVE-2021-39155)", async (t) => {
  const cases: [authority: string, host: string, port?: number][] = [
    ["admin.example.com", "admin.example.com"],
    ["Admin.Example.com", "admin.example.com"],
    ["ADMIN.EXAMPLE.COM:8080", "admin.example.com", 8080],
    ["admin.example.com:80", "admin.example.com", 80],
    ["admin.example.com.", "admin.example.com"],
    ["admin.example.com.:443", "admin.example.com", 443],
    ["admin.example.com:", "admin.example.com"],
    ["reviews", "reviews"],
    ["my_svc.ns.svc.cluster.local", "my_svc.ns.svc.cluster.local"],
    ["10.0.0.1:9080", "10.0.0.1", 9080],
    ["[::1]:80", "[::1]", 80],
    ["[::1]", "[::1]"],
    ["[FD00:0:0::1]:15008", "[fd00::1]", 15008],
  ];
  for (const [authority, host, port] of cases) {
    await t.step(`${authority} → ${host}${port ? `:${port}` : ""}`, () => {
      assert.deepEqual(normalizeHost(authority), port === undefined ? { host } : { host, port });
    });
  }
});

Deno.test("normalizeHost() refuses authorities that are not a plain host[:port]", async (t) => {
  const cases: [authority: string, why: RegExp][] = [
    ["", /empty/],
    ["admin.example.com\0", /U\+0000/],
    ["admin example.com", /U\+0020/],
    ["user@admin.example.com", /expected a host name/],
    ["admin%2eexample.com", /expected a host name/],
    ["admin..example.com", /expected a host name/],
    [".admin.example.com", /expected a host name/],
    ["admin.example.com..", /expected a host name/],
    ["-admin.example.com", /expected a host name/],
    ["admin/x", /expected a host name/],
    [":80", /expected a host name/],
    ["admin:0", /port from 1 to 65535/],
    ["admin:65536", /port from 1 to 65535/],
    ["admin:8o", /port from 1 to 65535/],
    ["admin:80:80", /IPv6 addresses need \[ \]/],
    ["::1", /IPv6 addresses need \[ \]/],
    ["[::1", /expected \] after/],
    ["[::1]x", /expected :port after \]/],
    ["[10.0.0.1]", /IPv6 address inside/],
    ["[fe80::1%25eth0]", /IPv6 address inside/],
    [`${"a".repeat(64)}.example.com`, /expected a host name/],
  ];
  for (const [authority, why] of cases) {
    await t.step(JSON.stringify(authority), () => {
      const r = normalizeHost(authority);
      assert.ok("error" in r, `expected an error, got ${JSON.stringify(r)}`);
      assert.match(r.error, /^Cannot normalize authority ".*": /s);
      assert.match(r.error, why);
    });
  }
});
