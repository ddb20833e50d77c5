/** A worker's certificates: pushed from the main thread, asked for once when missing, never served expired. */
import assert from "node:assert/strict";
import { SpiffeId } from "../../mesh/identity.ts";
import type { WorkloadCert } from "./identity.ts";
import { CertFeed, type CertMessage, PushedCerts, toWire } from "./worker_certs.ts";

const ID = "spiffe://cluster.local/ns/shop/sa/web";
const T0 = Date.UTC(2030, 0, 1);

function cert(notBefore: number, notAfter: number): WorkloadCert {
  return { identity: SpiffeId.parse(ID), chainPem: "c", keyPem: "k", rootsPem: "r", notBefore, notAfter };
}

Deno.test("PushedCerts asks once for a missing certificate and hands the pushed one to every waiter", async () => {
  const asked: CertMessage[] = [];
  let now = T0;
  const certs = new PushedCerts((m) => asked.push(m), () => now);
  const a = certs.get(ID);
  const b = certs.get(ID);
  assert.deepEqual(asked, [{ t: "want-cert", identity: ID }]);
  certs.accept(structuredClone({ t: "cert", identity: ID, cert: toWire(cert(T0, T0 + 1000)) }) as CertMessage);
  const [ca, cb] = await Promise.all([a, b]);
  assert.equal(ca.identity.toString(), ID, "the identity is a SpiffeId again after crossing threads");
  assert.equal(ca, cb);
  now = T0 + 1000;
  assert.equal(certs.current(ID), undefined, "never served at or past notAfter");
  const c = certs.get(ID);
  assert.equal(asked.length, 2, "an expired one is asked for again");
  certs.accept({ t: "cert-error", identity: ID, error: "CA unavailable" });
  await assert.rejects(c, /CA unavailable/);
});

Deno.test("PushedCerts keeps the newer certificate when an older one arrives late, and drops a forgotten one", () => {
  const certs = new PushedCerts(() => {}, () => T0 + 10);
  certs.accept({ t: "cert", identity: ID, cert: toWire(cert(T0, T0 + 2000)) });
  certs.accept({ t: "cert", identity: ID, cert: toWire(cert(T0, T0 + 1000)) });
  assert.equal(certs.current(ID)?.notAfter, T0 + 2000);
  certs.forget(ID);
  assert.equal(certs.current(ID), undefined);
});

Deno.test("CertFeed pushes each issued certificate to every worker and answers a worker's want to it alone", async () => {
  const sent: [number, CertMessage][] = [];
  const held = new Map([[ID, cert(Date.now() - 1000, Date.now() + 60_000)]]);
  const feed = new CertFeed({
    prefetch() {},
    get: (id) => held.has(id) ? Promise.resolve(held.get(id)!) : Promise.reject(new Error(`no certificate for ${id}`)),
    current: (id) => held.get(id),
    forget() {},
  }, () => ({ broadcast: (m) => sent.push([0, m]), send: (i, m) => sent.push([i, m]) }));
  feed.issued(ID, held.get(ID)!);
  feed.onWorkerMessage(2, { t: "want-cert", identity: ID });
  feed.onWorkerMessage(1, { t: "want-cert", identity: "spiffe://cluster.local/ns/shop/sa/other" });
  feed.onWorkerMessage(1, { t: "something else" });
  await new Promise((r) => setTimeout(r, 0));
  assert.deepEqual(sent.map(([i, m]) => [i, m.t]), [[0, "cert"], [2, "cert"], [1, "cert-error"]]);
  assert.deepEqual(feed.held([ID, "x"]).map((c) => c.identity), [ID]);
});

Deno.test("PushedCerts takes a renewal that ends sooner: issued later, it is the one the main thread serves", () => {
  // A CA caps a leaf at its own notAfter (certs/ca.ts): after a rotation to a CA that ends sooner, the renewal
  // ends before the certificate it replaces, and chains to the new roots only.
  const certs = new PushedCerts(() => {}, () => T0 + 10);
  certs.accept({ t: "cert", identity: ID, cert: toWire(cert(T0, T0 + 2000)) });
  const renewal = { ...cert(T0 + 5, T0 + 1000), chainPem: "c2", rootsPem: "r2" };
  certs.accept({ t: "cert", identity: ID, cert: toWire(renewal) });
  assert.equal(certs.current(ID)?.rootsPem, "r2");
  certs.accept({ t: "cert", identity: ID, cert: toWire(cert(T0, T0 + 2000)) });
  assert.equal(certs.current(ID)?.rootsPem, "r2", "the one it replaced, arriving again late, is older");
});
