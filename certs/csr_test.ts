/** Workload keys and CSRs as ztunnel makes them: ECDSA P-256, an empty subject, the identity as the only SAN. */
import assert from "node:assert/strict";
import { createPrivateKey, createPublicKey } from "node:crypto";
import { SpiffeId } from "../mesh/identity.ts";
import { createWorkloadCsr } from "./csr.ts";
import { bytesEqual, x509 } from "./x509.ts";

const IDENTITIES = [
  SpiffeId.of("cluster.local", "shop", "cart"),
  SpiffeId.of("cluster.local", "default", "default"),
  SpiffeId.of("example.org", "payments", "ledger.v2"),
];

Deno.test("createWorkloadCsr() makes an ECDSA P-256 key and a CSR signed with it", async (t) => {
  for (const id of IDENTITIES) {
    await t.step(id.toString(), async () => {
      const { keys, keyPem, csrPem } = await createWorkloadCsr(id);
      assert.deepEqual(keys.privateKey.algorithm, { name: "ECDSA", namedCurve: "P-256" });
      assert.deepEqual(keys.publicKey.algorithm, { name: "ECDSA", namedCurve: "P-256" });
      const csr = new x509.Pkcs10CertificateRequest(csrPem);
      assert.deepEqual(csr.publicKey.algorithm, { name: "ECDSA", namedCurve: "P-256" });
      assert.deepEqual(csr.signatureAlgorithm, { name: "ECDSA", hash: { name: "SHA-256" } });
      assert.ok(await csr.verify(), "the CSR's signature verifies");
      // keyPem is the PKCS#8 form of the same key the CSR carries.
      assert.match(keyPem, /^-----BEGIN PRIVATE KEY-----\n/);
      const key = createPrivateKey(keyPem);
      assert.equal(key.asymmetricKeyDetails?.namedCurve, "prime256v1");
      const spki = new Uint8Array(createPublicKey(key).export({ type: "spki", format: "der" }));
      assert.ok(bytesEqual(spki, new Uint8Array(csr.publicKey.rawData)));
    });
  }
});

Deno.test("createWorkloadCsr() asks for the identity as the only SAN, a URI, with an empty subject", async (t) => {
  for (const id of IDENTITIES) {
    await t.step(id.toString(), async () => {
      const csr = new x509.Pkcs10CertificateRequest((await createWorkloadCsr(id)).csrPem);
      assert.equal(csr.subject, "");
      const san = csr.extensions.find((e): e is x509.SubjectAlternativeNameExtension =>
        e instanceof x509.SubjectAlternativeNameExtension
      );
      assert.ok(san, "the CSR asks for a SAN");
      assert.deepEqual(san.names.toJSON(), [{ type: "url", value: id.toString() }]);
      assert.equal(san.names.items.filter((n) => n.type === "dns").length, 0, "no DNS SAN");
      assert.equal(san.critical, true, "with an empty subject the SAN is critical");
      assert.equal(csr.extensions.length, 1, "no other extension is requested");
    });
  }
});

Deno.test("createWorkloadCsr() makes a fresh key for every request", async () => {
  const id = IDENTITIES[0];
  const a = new x509.Pkcs10CertificateRequest((await createWorkloadCsr(id)).csrPem);
  const b = new x509.Pkcs10CertificateRequest((await createWorkloadCsr(id)).csrPem);
  assert.equal(bytesEqual(new Uint8Array(a.publicKey.rawData), new Uint8Array(b.publicKey.rawData)), false);
});
