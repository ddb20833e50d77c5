import assert from "node:assert/strict";
import { addressKey, canonicalIp, type Cidr, cidrContains, decodeCidr, decodeIp, formatCidr, ipBytes } from "./net.ts";
import { assertInvalid } from "../tests/harness/assert.ts";

Deno.test("canonicalIp() gives one text for every spelling of an address", async (t) => {
  const cases: [string, string[]][] = [
    ["10.0.0.1", ["10.0.0.1"]],
    ["255.255.255.255", ["255.255.255.255"]],
    ["fd00::1", ["fd00::1", "FD00::1", "fd00:0:0:0:0:0:0:1", "FD00:0000:0000:0000:0000:0000:0000:0001", "fd00::0001"]],
    ["::", ["::", "0:0:0:0:0:0:0:0", "0::0"]],
    ["::1", ["::1", "0:0:0:0:0:0:0:1"]],
    ["2001:db8::1:0:0:1", ["2001:db8:0:0:1:0:0:1", "2001:DB8::1:0:0:1"]],
    ["::ffff:a00:1", ["::ffff:10.0.0.1", "::FFFF:0a00:0001", "0:0:0:0:0:ffff:a00:1"]],
    ["1:2:3:4:5:6:7:8", ["1:2:3:4:5:6:7:8"]],
    ["1::", ["1:0:0:0:0:0:0:0"]],
  ];
  for (const [canonical, spellings] of cases) {
    await t.step(canonical, () => {
      for (const s of spellings) assert.equal(canonicalIp(s), canonical, s);
      assert.equal(canonicalIp(canonical), canonical, "canonical text is a fixed point");
    });
  }
});

Deno.test("canonicalIp() refuses IPv4 forms that could alias another address", async (t) => {
  // node:net's isIP rejects leading zeros (inet_aton would read 010 as octal 8), shortened and hex forms, so
  // "010.0.0.1" can never become a second key for 10.0.0.1 or for 8.0.0.1.
  for (const text of ["010.0.0.1", "10.0.0.01", "0x0a.0.0.1", "10.1", "167772161", "10.0.0.256", "10.0.0.1 "]) {
    await t.step(JSON.stringify(text), () => assert.equal(canonicalIp(text), undefined));
  }
});

Deno.test("canonicalIp() rejects text that is not an address", async (t) => {
  for (const text of ["", "localhost", "fe80::1%eth0", "1:2:3:4:5:6:7:8:9", "::g", "[::1]", "10.0.0.0/8"]) {
    await t.step(JSON.stringify(text), () => assert.equal(canonicalIp(text), undefined));
  }
});

Deno.test("decodeIp() returns the canonical text and names the field of a bad value", () => {
  assert.equal(decodeIp("FD00::0001", "x.address"), "fd00::1");
  assertInvalid(() => decodeIp("010.0.0.1", "x.address"), "x.address", /expected an IPv4 or IPv6 address/);
  assertInvalid(() => decodeIp(17, "x.address"), "x.address", /expected a string, got 17/);
  assertInvalid(() => decodeIp(undefined, "x.address"), "x.address", /expected a string/);
});

Deno.test("decodeCidr() reads a bare address as a host route", () => {
  assert.deepEqual(decodeCidr("10.1.2.3", "p"), { address: "10.1.2.3", length: 32 });
  assert.deepEqual(decodeCidr("FD00::0001", "p"), { address: "fd00::1", length: 128 });
});

Deno.test("decodeCidr() accepts ranges at the prefix bounds and canonicalizes the address", async (t) => {
  const cases: [string, Cidr][] = [
    ["0.0.0.0/0", { address: "0.0.0.0", length: 0 }],
    ["10.0.0.0/8", { address: "10.0.0.0", length: 8 }],
    ["10.0.0.0/7", { address: "10.0.0.0", length: 7 }],
    ["10.0.0.2/31", { address: "10.0.0.2", length: 31 }],
    ["10.0.0.3/32", { address: "10.0.0.3", length: 32 }],
    ["::/0", { address: "::", length: 0 }],
    ["FD00::/8", { address: "fd00::", length: 8 }],
    ["fd00:0:0:0:0:0:0:1/128", { address: "fd00::1", length: 128 }],
  ];
  for (const [text, want] of cases) {
    await t.step(text, () => {
      const got = decodeCidr(text, "p");
      assert.deepEqual(got, want);
      assert.deepEqual(decodeCidr(formatCidr(got), "p"), got, "formatCidr() round-trips");
    });
  }
});

Deno.test("decodeCidr() names the path of a bad range", async (t) => {
  const cases: [string, unknown, RegExp][] = [
    ["host bits set after /8", "10.0.0.1/8", /host bits set after \/8/],
    ["host bits set after /31", "10.0.0.3/31", /host bits set after \/31/],
    ["host bits set after /7", "11.0.0.0/7", /host bits set after \/7/],
    ["v6 host bits set after /127", "fd00::1/127", /host bits set after \/127/],
    ["v6 host bits set after /0", "::1/0", /host bits set after \/0/],
    ["prefix over 32", "10.0.0.0/33", /prefix length from 0 to 32/],
    ["prefix over 128", "fd00::/129", /prefix length from 0 to 128/],
    ["negative prefix", "10.0.0.0/-1", /prefix length/],
    ["empty prefix", "10.0.0.0/", /prefix length/],
    ["non-numeric prefix", "10.0.0.0/eight", /prefix length/],
    ["two slashes", "10.0.0.0/8/8", /expected an IP address or CIDR range/],
    ["garbage", "not-an-ip", /expected an IP address or CIDR range/],
    ["garbage with a prefix", "x/8", /expected an IP address or CIDR range/],
    ["leading-zero octet", "010.0.0.0/8", /expected an IP address or CIDR range/],
    ["empty", "", /must not be empty/],
    ["not a string", 10, /expected a string, got 10/],
    ["null", null, /expected a string, got null/],
  ];
  for (const [name, value, message] of cases) {
    await t.step(name, () => {
      const path = "policy.rules[0].sourceIps[2]";
      assertInvalid(() => decodeCidr(value, path), path, message);
    });
  }
});

Deno.test("cidrContains() matches addresses inside the range and nothing outside", async (t) => {
  const cases: [string, string, boolean][] = [
    ["10.0.0.0/8", "10.255.255.255", true],
    ["10.0.0.0/8", "10.0.0.0", true],
    ["10.0.0.0/8", "11.0.0.0", false],
    ["10.0.0.0/8", "9.255.255.255", false],
    ["0.0.0.0/0", "255.255.255.255", true],
    ["0.0.0.0/0", "0.0.0.0", true],
    ["10.0.0.7/32", "10.0.0.7", true],
    ["10.0.0.7/32", "10.0.0.6", false],
    ["10.0.0.7/32", "10.0.0.8", false],
    ["10.0.0.2/31", "10.0.0.2", true],
    ["10.0.0.2/31", "10.0.0.3", true],
    ["10.0.0.2/31", "10.0.0.1", false],
    ["10.0.0.2/31", "10.0.0.4", false],
    ["10.0.0.0/7", "11.255.255.255", true],
    ["10.0.0.0/7", "9.255.255.255", false],
    ["10.0.0.0/7", "12.0.0.0", false],
    ["192.168.0.0/20", "192.168.15.255", true],
    ["192.168.0.0/20", "192.168.16.0", false],
    ["::/0", "fd00::1", true],
    ["::/0", "::", true],
    ["fd00::/8", "fdff:ffff::1", true],
    ["fd00::/8", "fe00::", false],
    ["fc00::/7", "fdff::1", true],
    ["fc00::/7", "fe00::", false],
    ["fd00::1/128", "fd00::1", true],
    ["fd00::1/128", "fd00::2", false],
    ["fd00::1/128", "fd00::", false],
    ["2001:db8::/127", "2001:db8::1", true],
    ["2001:db8::/127", "2001:db8::2", false],
    // Other family: never, even for /0.
    ["0.0.0.0/0", "::", false],
    ["0.0.0.0/0", "fd00::1", false],
    ["::/0", "10.0.0.1", false],
    ["::/0", "0.0.0.0", false],
    // An IPv4-mapped IPv6 address is an IPv6 address here.
    ["10.0.0.0/8", canonicalIp("::ffff:10.0.0.1")!, false],
    ["::ffff:0:0/96", canonicalIp("::ffff:10.0.0.1")!, true],
  ];
  for (const [range, ip, want] of cases) {
    await t.step(`${range} ${want ? "contains" : "does not contain"} ${ip}`, () => {
      assert.equal(cidrContains(decodeCidr(range, "p"), ip), want);
    });
  }
});

Deno.test("ipBytes() expands IPv4, compressed IPv6 and an embedded IPv4 tail", async (t) => {
  const v6 = (...tail: number[]) => Uint8Array.from([...new Array(16 - tail.length).fill(0), ...tail]);
  const cases: [string, Uint8Array][] = [
    ["10.1.2.3", Uint8Array.from([10, 1, 2, 3])],
    ["0.0.0.0", Uint8Array.from([0, 0, 0, 0])],
    ["::", v6()],
    ["::1", v6(1)],
    ["::ffff:1.2.3.4", v6(0xff, 0xff, 1, 2, 3, 4)],
    ["::ffff:102:304", v6(0xff, 0xff, 1, 2, 3, 4)],
    ["fd00::", Uint8Array.from([0xfd, 0, ...new Array(14).fill(0)])],
    ["1:2:3:4:5:6:7:8", Uint8Array.from([0, 1, 0, 2, 0, 3, 0, 4, 0, 5, 0, 6, 0, 7, 0, 8])],
    ["2001:db8::1:0:0:1", Uint8Array.from([0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1])],
    ["1::", Uint8Array.from([0, 1, ...new Array(14).fill(0)])],
  ];
  for (const [ip, want] of cases) {
    await t.step(ip, () => assert.deepEqual(ipBytes(ip), want));
  }
});

Deno.test("addressKey() is network/ip, and the default network is the empty name", () => {
  assert.equal(addressKey({ network: "", address: "10.0.0.1" }), "/10.0.0.1");
  assert.equal(addressKey({ network: "net1", address: "fd00::1" }), "net1/fd00::1");
  assert.notEqual(addressKey({ network: "a", address: "10.0.0.1" }), addressKey({ network: "b", address: "10.0.0.1" }));
});
