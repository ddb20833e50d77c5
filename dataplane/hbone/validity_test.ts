import assert from "node:assert/strict";
import {
  chainValidity,
  type ConnectionCerts,
  derChainNotAfter,
  localCertProblem,
  retireReason,
  untrustedReason,
} from "./validity.ts";
import { pemBlocks } from "../../certs/x509.ts";
import { TestPki } from "../../tests/harness/pki.ts";

const T = Date.parse("2026-12-03T12:00:00Z");
const LOCAL = "spiffe://cluster.local/ns/default/sa/client";
const PEER = "spiffe://cluster.local/ns/default/sa/server";

function certs(localNotAfter: number, peerNotAfter: number): ConnectionCerts {
  return {
    local: { identity: LOCAL, notAfter: localNotAfter },
    peer: { identity: PEER, notAfter: peerNotAfter, chain: [] },
    rootsPem: "",
  };
}

Deno.test("retireReason() lets a stream ride a connection only while both certificates are valid", async (t) => {
  const cases: [string, ConnectionCerts, number, RegExp | undefined][] = [
    ["both valid", certs(T + 1000, T + 2000), T, undefined],
    ["the local one expired", certs(T, T + 2000), T, /^the local certificate .*sa\/client expired at 2026-12-03T12:00/],
    ["the peer's expired", certs(T + 1000, T - 1), T, /^the peer certificate .*sa\/server expired at 2026-12-03T11:59/],
    ["both expired: the local one is named", certs(T - 5, T - 9), T, /^the local certificate/],
  ];
  for (const [name, c, now, want] of cases) {
    await t.step(name, () => {
      const got = retireReason(c, now);
      if (want) assert.match(got ?? "", want);
      else assert.equal(got, undefined);
    });
  }
});

Deno.test("localCertProblem() refuses our own certificate outside its validity", async (t) => {
  const window = { notBefore: T - 1000, notAfter: T + 1000 };
  const cases: [string, number, RegExp | undefined][] = [
    ["within", T, undefined],
    ["not yet valid", T - 1001, /is not valid before 2026-12-03T11:59:59/],
    ["expired at the instant of notAfter", T + 1000, /expired at 2026-12-03T12:00:01/],
  ];
  for (const [name, now, want] of cases) {
    await t.step(name, () => {
      const got = localCertProblem(LOCAL, window, now);
      if (want) assert.match(got ?? "", want);
      else assert.equal(got, undefined);
    });
  }
});

Deno.test("chainValidity() and derChainNotAfter() read the earliest expiry of a chain", async () => {
  const pki = await TestPki.create();
  const creds = await pki.credentials("default/client", { ttlMs: 60_000 });
  const window = chainValidity(creds.chainPem);
  assert.ok(window.notAfter - Date.now() <= 60_000 && window.notAfter - Date.now() > 50_000);
  assert.ok(window.notBefore < Date.now());
  // The root lives for years: the chain's expiry is the leaf's.
  const chain = [...pemBlocks(creds.chainPem, "CERTIFICATE"), ...pemBlocks(creds.rootsPem, "CERTIFICATE")];
  assert.equal(derChainNotAfter(chain), window.notAfter);
  assert.throws(() => chainValidity("not a certificate"), /the local certificate chain: no PEM CERTIFICATE block/);
});

Deno.test("untrustedReason() verifies a peer chain again against a new trust bundle", async (t) => {
  const pki = await TestPki.create();
  const other = await TestPki.create();
  const peer = await pki.credentials("default/server");
  const c: ConnectionCerts = {
    local: { identity: LOCAL, notAfter: Date.now() + 60_000 },
    peer: { identity: PEER, notAfter: Date.now() + 60_000, chain: pemBlocks(peer.chainPem, "CERTIFICATE") },
    rootsPem: peer.rootsPem,
  };
  const both = peer.rootsPem + (await other.credentials("default/x")).rootsPem;
  const cases: [string, string, string, RegExp | undefined][] = [
    ["the same root", peer.rootsPem, "cluster.local", undefined],
    ["a bundle that still holds the root", both, "cluster.local", undefined],
    [
      "a bundle without it",
      (await other.credentials("default/x")).rootsPem,
      "cluster.local",
      /does not chain .*trust bundle/,
    ],
    ["another trust domain", peer.rootsPem, "other.domain", /not in trust domain other.domain/],
    ["a bundle that cannot be read", "garbage", "cluster.local", /the trust bundle: no PEM CERTIFICATE block/],
  ];
  for (const [name, roots, domain, want] of cases) {
    await t.step(name, async () => {
      const got = await untrustedReason(c, roots, domain, "server", Date.now());
      if (want) assert.match(got ?? "", want);
      else assert.equal(got, undefined);
    });
  }
});
