import assert from "node:assert/strict";
import {
  asAuthority,
  asHboneAddr,
  asOriginalDst,
  type Authority,
  formatAddr,
  type HboneAddr,
  parseAuthority,
} from "./addr.ts";

Deno.test("parseAuthority() takes ip:port, [v6]:port and host:port, and nothing else", async (t) => {
  const good: [string, ReturnType<typeof parseAuthority>][] = [
    ["10.0.1.2:8080", { host: "10.0.1.2", ip: "10.0.1.2", port: 8080 }],
    ["[FD00::1]:443", { host: "fd00::1", ip: "fd00::1", port: 443 }],
    ["Web.Shop.svc.cluster.local:80", { host: "web.shop.svc.cluster.local", port: 80 }],
  ];
  for (const [text, want] of good) await t.step(text, () => assert.deepEqual(parseAuthority(text), want));
  for (
    const bad of [
      "10.0.1.2",
      "10.0.1.2:0",
      "10.0.1.2:65536",
      "fd00::1:80",
      "[10.0.1.2]:80",
      ":80",
      "host:80/x",
      "a b:80",
      "10.0.1.2:80:80",
      "",
    ]
  ) {
    await t.step(`rejects ${JSON.stringify(bad)}`, () => assert.equal(parseAuthority(bad), undefined));
  }
});

Deno.test("formatAddr() brackets IPv6 (RFC 3986 §3.2.2), and parseAuthority() reads it back", async (t) => {
  for (const [ip, text] of [["10.0.1.2", "10.0.1.2:80"], ["fd00::1", "[fd00::1]:80"]]) {
    await t.step(text, () => {
      assert.equal(formatAddr({ ip, port: 80 }), text);
      assert.deepEqual(parseAuthority(text), { host: ip, ip, port: 80 });
    });
  }
});

// The `@ts-expect-error` lines are the test: `deno check` fails if any of them type-checks.
Deno.test("an original destination, an HBONE address and an authority cannot be passed for one another", () => {
  const dst = asOriginalDst({ ip: "10.0.2.2", port: 8080 });
  const hbone = (a: HboneAddr) => formatAddr(a);
  const connect = (a: Authority) => formatAddr(a);
  // @ts-expect-error an original destination is not where HBONE opens
  hbone(dst);
  // @ts-expect-error nor is a bare SocketAddr
  hbone({ ip: "10.0.2.2", port: 15008 });
  // @ts-expect-error an HBONE address is not an authority
  connect(asHboneAddr("10.0.2.2", 15008));
  assert.equal(hbone(asHboneAddr("10.0.2.2", 15008)), "10.0.2.2:15008");
  assert.equal(connect(asAuthority(dst)), "10.0.2.2:8080");
});
