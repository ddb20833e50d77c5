/**
 * The certificate authority: creating a root, saving and loading a CA directory (a root, a plugged-in
 * intermediate, several roots in the bundle, and every way loading refuses), and the rules `sign()` applies
 * to every leaf whatever the CSR asked for.
 */
import assert from "node:assert/strict";
import { createPrivateKey, createPublicKey } from "node:crypto";
import { join } from "node:path";
import { SpiffeId } from "../mesh/identity.ts";
import { BACKDATE_MS, CA_FILES, CertificateAuthority, DEFAULT_TTL_MS, MAX_TTL_MS, ROOT_TTL_MS } from "./ca.ts";
import { createWorkloadCsr } from "./csr.ts";
import { verifyPeerChain } from "./verify.ts";
import {
  bytesEqual,
  CertError,
  certificatesToPem,
  P256,
  parseCertificates,
  privateKeyToPem,
  toPem,
  x509,
} from "./x509.ts";

const TD = "cluster.local";
const ID = SpiffeId.of(TD, "shop", "cart");
const HOUR = 3_600_000;
const DAY = 24 * HOUR;
/** Certificate times have 1-second precision, so tests sign at a whole second. */
const NOW = new Date(Math.floor(Date.now() / 1000) * 1000);

// ---- helpers: CA material made directly with @peculiar/x509, keys kept ----

interface Keyed {
  cert: x509.X509Certificate;
  keys: CryptoKeyPair;
  keyPem: string;
}

async function newKeys(): Promise<CryptoKeyPair> {
  return await crypto.subtle.generateKey(P256, true, ["sign", "verify"]) as CryptoKeyPair;
}

let serial = 1;
function nextSerial(): string {
  return (serial++).toString(16).padStart(4, "0");
}

const VALIDITY = { notBefore: new Date(NOW.getTime() - DAY), notAfter: new Date(NOW.getTime() + 365 * DAY) };
const CA_USAGES = x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign;

function caExtensions(opts: { ca?: boolean; usages?: number; basicConstraints?: boolean } = {}): x509.Extension[] {
  const ext: x509.Extension[] = [];
  if (opts.basicConstraints ?? true) ext.push(new x509.BasicConstraintsExtension(opts.ca ?? true, undefined, true));
  ext.push(new x509.KeyUsagesExtension(opts.usages ?? CA_USAGES, true));
  return ext;
}

/** A self-signed root named `name`. */
async function makeRoot(name: string): Promise<Keyed> {
  const keys = await newKeys();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: nextSerial(),
    name,
    ...VALIDITY,
    keys,
    signingAlgorithm: P256,
    extensions: caExtensions(),
  });
  return { cert, keys, keyPem: await privateKeyToPem(keys.privateKey) };
}

/** A certificate named `name` signed by `issuer`, a CA by default. */
async function makeSigned(
  issuer: Keyed,
  name: string,
  opts: { ca?: boolean; usages?: number; basicConstraints?: boolean } = {},
): Promise<Keyed> {
  const keys = await newKeys();
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: nextSerial(),
    subject: name,
    issuer: issuer.cert.subject,
    ...VALIDITY,
    publicKey: keys.publicKey,
    signingKey: issuer.keys.privateKey,
    signingAlgorithm: P256,
    extensions: caExtensions(opts),
  });
  return { cert, keys, keyPem: await privateKeyToPem(keys.privateKey) };
}

function pem(...certs: x509.X509Certificate[]): string {
  return certificatesToPem(certs);
}

function der(c: x509.X509Certificate): Uint8Array {
  return new Uint8Array(c.rawData);
}

function sameCert(a: x509.X509Certificate, b: x509.X509Certificate): boolean {
  return bytesEqual(der(a), der(b));
}

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "skiff-ca-test-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Writes a CA directory; `chain` is left out when undefined. */
async function writeCaDir(
  dir: string,
  files: { cert: string; key: string; chain?: string; roots: string },
): Promise<void> {
  await Deno.writeTextFile(join(dir, CA_FILES.cert), files.cert);
  await Deno.writeTextFile(join(dir, CA_FILES.key), files.key, { mode: 0o600 });
  if (files.chain !== undefined) await Deno.writeTextFile(join(dir, CA_FILES.chain), files.chain);
  await Deno.writeTextFile(join(dir, CA_FILES.roots), files.roots);
}

async function assertCertError(p: Promise<unknown>, code: string, message?: RegExp): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof CertError, `expected a CertError, got ${err}`);
    assert.equal(err.code, code, `wrong code; message: ${err.message}`);
    if (message) assert.match(err.message, message);
    return true;
  });
}

function spkiOfKeyPem(keyPem: string): Uint8Array {
  return new Uint8Array(createPublicKey(createPrivateKey(keyPem)).export({ type: "spki", format: "der" }));
}

/** A leaf from `ca` verifies against `roots` and names `ID`. */
async function assertIssuesVerifiable(ca: CertificateAuthority, roots: readonly x509.X509Certificate[]) {
  const issued = await ca.issue(ID);
  const id = await verifyPeerChain(issued.chain, { roots, trustDomain: TD });
  assert.ok(id.equals(ID), `verified as ${id}`);
  return issued;
}

// ---- creating a root ----

Deno.test("createRoot() makes a self-signed ECDSA P-256 CA certificate with cA=true and keyCertSign", async () => {
  const { ca, keyPem } = await CertificateAuthority.createRoot(TD, { now: NOW });
  const cert = ca.cert;
  assert.deepEqual(cert.publicKey.algorithm, { name: "ECDSA", namedCurve: "P-256" });
  assert.deepEqual(cert.signatureAlgorithm, { name: "ECDSA", hash: { name: "SHA-256" } });
  assert.equal(cert.subject, cert.issuer);
  assert.ok(await cert.isSelfSigned(), "the root verifies with its own key");
  assert.ok(ca.selfSigned);
  assert.equal(ca.roots.length, 1);
  assert.ok(sameCert(ca.roots[0], cert));
  assert.deepEqual(ca.intermediates, []);
  assert.match(cert.subject, /O=cluster\.local/);
  const bc = cert.getExtension(x509.BasicConstraintsExtension);
  assert.ok(bc, "basicConstraints present");
  assert.equal(bc.ca, true);
  assert.equal(bc.critical, true);
  const ku = cert.getExtension(x509.KeyUsagesExtension);
  assert.ok(ku, "keyUsage present");
  assert.ok(ku.usages & x509.KeyUsageFlags.keyCertSign, "keyCertSign");
  assert.equal(cert.notBefore.getTime(), NOW.getTime() - BACKDATE_MS);
  assert.equal(cert.notAfter.getTime(), NOW.getTime() + ROOT_TTL_MS);
  // The key returned is the certificate's key, and a P-256 one.
  assert.ok(bytesEqual(spkiOfKeyPem(keyPem), new Uint8Array(cert.publicKey.rawData)));
  assert.equal(createPrivateKey(keyPem).asymmetricKeyDetails?.namedCurve, "prime256v1");
});

Deno.test("createRoot() honours ttlMs for the root's lifetime", async () => {
  const { ca } = await CertificateAuthority.createRoot(TD, { now: NOW, ttlMs: HOUR });
  assert.equal(ca.cert.notAfter.getTime(), NOW.getTime() + HOUR);
});

// ---- saving and loading ----

Deno.test("save() writes the four cacerts files, the key with mode 0600 and the new directory 0700", async () => {
  await withTempDir(async (tmp) => {
    const dir = join(tmp, "cacerts");
    const { ca, keyPem } = await CertificateAuthority.createRoot(TD);
    await ca.save(dir, keyPem);
    assert.equal((await Deno.stat(dir)).mode! & 0o777, 0o700);
    assert.equal((await Deno.stat(join(dir, CA_FILES.key))).mode! & 0o777, 0o600);
    assert.equal(await Deno.readTextFile(join(dir, CA_FILES.key)), keyPem);
    for (const name of [CA_FILES.cert, CA_FILES.chain, CA_FILES.roots]) {
      const certs = parseCertificates(await Deno.readTextFile(join(dir, name)), name);
      assert.equal(certs.length, 1, `${name} holds one certificate`);
      assert.ok(sameCert(certs[0], ca.cert), `${name} holds the root`);
    }
  });
});

Deno.test("save() refuses to overwrite an existing CA directory and leaves its files as they were", async () => {
  await withTempDir(async (dir) => {
    const first = await CertificateAuthority.createRoot(TD);
    await first.ca.save(dir, first.keyPem);
    const before = Object.fromEntries(
      await Promise.all(Object.values(CA_FILES).map(async (f) => [f, await Deno.readTextFile(join(dir, f))])),
    );
    const second = await CertificateAuthority.createRoot(TD);
    await assert.rejects(second.ca.save(dir, second.keyPem));
    for (const f of Object.values(CA_FILES)) {
      assert.equal(await Deno.readTextFile(join(dir, f)), before[f], `${f} unchanged`);
    }
  });
});

Deno.test("save() refuses to overwrite each file of a CA directory, even when the key is missing", async (t) => {
  for (const existing of [CA_FILES.cert, CA_FILES.chain, CA_FILES.roots]) {
    await t.step(`${existing} already there`, async () => {
      await withTempDir(async (dir) => {
        await Deno.writeTextFile(join(dir, existing), "operator's file\n");
        const { ca, keyPem } = await CertificateAuthority.createRoot(TD);
        await assert.rejects(ca.save(dir, keyPem));
        assert.equal(await Deno.readTextFile(join(dir, existing)), "operator's file\n");
      });
    });
  }
});

Deno.test("load() reads back what save() wrote: the same certificate, bundle and signing key", async () => {
  await withTempDir(async (dir) => {
    const { ca, keyPem } = await CertificateAuthority.createRoot(TD);
    await ca.save(dir, keyPem);
    assert.ok(await CertificateAuthority.exists(dir));
    const loaded = await CertificateAuthority.load(dir);
    assert.ok(sameCert(loaded.cert, ca.cert));
    assert.equal(loaded.roots.length, 1);
    assert.ok(sameCert(loaded.roots[0], ca.cert));
    assert.deepEqual(loaded.intermediates, []);
    assert.ok(loaded.selfSigned);
    // Leaves signed with the loaded key verify against the original root: the key round-tripped.
    const issued = await assertIssuesVerifiable(loaded, [ca.cert]);
    assert.equal(issued.chain.length, 1, "a root's leaves carry no intermediate");
  });
});

Deno.test("exists() tells a CA directory from an empty one", async () => {
  await withTempDir(async (dir) => {
    assert.equal(await CertificateAuthority.exists(dir), false);
    const { ca, keyPem } = await CertificateAuthority.createRoot(TD);
    await ca.save(join(dir, "ca"), keyPem);
    assert.equal(await CertificateAuthority.exists(join(dir, "ca")), true);
  });
});

Deno.test("a plugged-in intermediate loads, and its leaves carry the chain to the root and verify against it", async (t) => {
  const root = await makeRoot("O=Example Corp, CN=Example Root");
  const int1 = await makeSigned(root, "O=Example Corp, CN=Skiff Intermediate");
  const int2 = await makeSigned(int1, "O=Example Corp, CN=Skiff Issuing CA");
  const cases: { name: string; signer: Keyed; chain?: string; carried: Keyed[] }[] = [
    {
      name: "chain file with the intermediate and the root",
      signer: int1,
      chain: pem(int1.cert, root.cert),
      carried: [int1],
    },
    { name: "chain file with the intermediate only", signer: int1, chain: pem(int1.cert), carried: [int1] },
    { name: "no chain file", signer: int1, chain: undefined, carried: [int1] },
    {
      name: "two intermediates, chain up to the root",
      signer: int2,
      chain: pem(int2.cert, int1.cert, root.cert),
      carried: [int2, int1],
    },
    {
      name: "two intermediates, chain without the root",
      signer: int2,
      chain: pem(int2.cert, int1.cert),
      carried: [int2, int1],
    },
  ];
  for (const c of cases) {
    await t.step(c.name, async () => {
      await withTempDir(async (dir) => {
        await writeCaDir(dir, {
          cert: pem(c.signer.cert),
          key: c.signer.keyPem,
          chain: c.chain,
          roots: pem(root.cert),
        });
        const ca = await CertificateAuthority.load(dir);
        assert.equal(ca.selfSigned, false);
        assert.ok(sameCert(ca.cert, c.signer.cert));
        assert.equal(ca.roots.length, 1);
        assert.ok(sameCert(ca.roots[0], root.cert));
        const issued = await assertIssuesVerifiable(ca, [root.cert]);
        assert.equal(issued.chain.length, 1 + c.carried.length, "leaf, then the intermediates, no root");
        c.carried.forEach((k, i) => assert.ok(sameCert(issued.chain[i + 1], k.cert), `chain[${i + 1}]`));
        assert.equal(issued.chain[0].issuer, c.signer.cert.subject);
        // Without the intermediates the leaf does not reach the root: they are needed, not decoration.
        await assertCertError(verifyPeerChain([issued.chain[0]], { roots: [root.cert], trustDomain: TD }), "UNTRUSTED");
      });
    });
  }
  await t.step("two intermediates without a chain file do not reach the root", async () => {
    await assertCertError(
      CertificateAuthority.fromPem({ cert: pem(int2.cert), key: int2.keyPem, roots: pem(root.cert) }),
      "CA_CHAIN",
    );
  });
});

Deno.test("the trust bundle may hold several roots: it loads, and leaves of each root verify", async (t) => {
  const a = await makeRoot("O=cluster.local, CN=Skiff root CA A");
  const b = await makeRoot("O=cluster.local, CN=Skiff root CA B");
  const stranger = await makeRoot("O=elsewhere, CN=Stranger root");
  const caB = await CertificateAuthority.fromPem({ cert: pem(b.cert), key: b.keyPem, roots: pem(b.cert) });
  const caStranger = await CertificateAuthority.fromPem({
    cert: pem(stranger.cert),
    key: stranger.keyPem,
    roots: pem(stranger.cert),
  });
  for (const [name, bundle] of [["signer first", pem(a.cert, b.cert)], ["signer second", pem(b.cert, a.cert)]]) {
    await t.step(`root-cert.pem with two roots, ${name}`, async () => {
      await withTempDir(async (dir) => {
        await writeCaDir(dir, { cert: pem(a.cert), key: a.keyPem, roots: bundle });
        const ca = await CertificateAuthority.load(dir);
        assert.equal(ca.roots.length, 2);
        assert.ok(ca.selfSigned, "the signer is one of the roots");
        assert.deepEqual(ca.intermediates, []);
        await assertIssuesVerifiable(ca, ca.roots);
        await assertIssuesVerifiable(caB, ca.roots);
        // Control: a root outside the bundle is not trusted.
        const foreign = await caStranger.issue(ID);
        await assertCertError(verifyPeerChain(foreign.chain, { roots: ca.roots, trustDomain: TD }), "UNTRUSTED");
      });
    });
  }
});

Deno.test("an intermediate under the second of two same-named roots loads (Skiff names every root alike)", async (t) => {
  // createRoot names every root of a trust domain "O=<td>, CN=Skiff root CA", so after a root rotation the
  // bundle holds two roots with one subject; the chain check must try each of them.
  const name = `O=${TD}, CN=Skiff root CA`;
  const oldRoot = await makeRoot(name);
  const newRoot = await makeRoot(name);
  const int = await makeSigned(newRoot, "O=cluster.local, CN=Skiff intermediate");
  for (const [label, chain] of [["no chain file", undefined], ["chain without the root", pem(int.cert)]] as const) {
    await t.step(label, async () => {
      const ca = await CertificateAuthority.fromPem({
        cert: pem(int.cert),
        key: int.keyPem,
        chain,
        roots: pem(oldRoot.cert, newRoot.cert),
      });
      await assertIssuesVerifiable(ca, ca.roots);
    });
  }
  await t.step("control: under neither root, the same name is not enough", async () => {
    const third = await makeRoot(name);
    const orphan = await makeSigned(third, "O=cluster.local, CN=Skiff intermediate");
    await assertCertError(
      CertificateAuthority.fromPem({
        cert: pem(orphan.cert),
        key: orphan.keyPem,
        roots: pem(oldRoot.cert, newRoot.cert),
      }),
      "CA_CHAIN",
    );
  });
});

Deno.test("loading refuses CA material that does not fit together", async (t) => {
  const root = await makeRoot("CN=Root");
  const other = await makeRoot("CN=Other Root");
  const sameName = await makeRoot("CN=Root");
  const int = await makeSigned(root, "CN=Intermediate");
  const notCa = await makeSigned(root, "CN=Not a CA", { ca: false, usages: x509.KeyUsageFlags.digitalSignature });
  const noKeyCertSign = await makeSigned(root, "CN=CA without keyCertSign", {
    usages: x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.cRLSign,
  });
  const noBasicConstraints = await makeSigned(root, "CN=No basicConstraints", { basicConstraints: false });
  // A CA signed by a key that merely claims the intermediate's name ("CN=Intermediate").
  const rogue = await makeRoot("CN=Intermediate");
  const rogueLeafCa = await makeSigned(rogue, "CN=Rogue issuing CA");
  const { ca: issuing } = await CertificateAuthority.createRoot(TD);
  const leaf = await issuing.issue(ID);
  const cases: { name: string; files: { cert: string; key: string; chain?: string; roots: string }; code: string }[] = [
    {
      name: "key of another certificate",
      files: { cert: pem(root.cert), key: other.keyPem, roots: pem(root.cert) },
      code: "CA_MISMATCH",
    },
    {
      name: "intermediate with the root's key",
      files: { cert: pem(int.cert), key: root.keyPem, roots: pem(root.cert) },
      code: "CA_MISMATCH",
    },
    {
      name: "cA=false certificate",
      files: { cert: pem(notCa.cert), key: notCa.keyPem, roots: pem(root.cert) },
      code: "CA_NOT_CA",
    },
    {
      name: "a workload leaf",
      files: { cert: pem(leaf.chain[0]), key: leaf.keyPem, roots: pem(...leaf.roots) },
      code: "CA_NOT_CA",
    },
    {
      name: "cA=true without keyCertSign",
      files: { cert: pem(noKeyCertSign.cert), key: noKeyCertSign.keyPem, roots: pem(root.cert) },
      code: "CA_NOT_CA",
    },
    {
      name: "no basicConstraints",
      files: { cert: pem(noBasicConstraints.cert), key: noBasicConstraints.keyPem, roots: pem(root.cert) },
      code: "CA_NOT_CA",
    },
    {
      name: "intermediate under a root not in the bundle",
      files: { cert: pem(int.cert), key: int.keyPem, roots: pem(other.cert) },
      code: "CA_CHAIN",
    },
    {
      name: "chain leading to a root not in the bundle",
      files: { cert: pem(int.cert), key: int.keyPem, chain: pem(int.cert, root.cert), roots: pem(other.cert) },
      code: "CA_CHAIN",
    },
    {
      name: "bundle root with the issuer's name but another key",
      files: { cert: pem(int.cert), key: int.keyPem, roots: pem(sameName.cert) },
      code: "CA_CHAIN",
    },
    {
      name: "chain certificate with the issuer's name but another key",
      files: { cert: pem(int.cert), key: int.keyPem, chain: pem(int.cert, sameName.cert), roots: pem(other.cert) },
      code: "CA_CHAIN",
    },
    {
      name: "chain certificate with the issuer's name but another key, itself under a bundle root",
      files: {
        cert: pem(rogueLeafCa.cert),
        key: rogueLeafCa.keyPem,
        chain: pem(rogueLeafCa.cert, int.cert),
        roots: pem(root.cert),
      },
      code: "CA_CHAIN",
    },
    {
      name: "a root that is not in the bundle",
      files: { cert: pem(root.cert), key: root.keyPem, roots: pem(other.cert) },
      code: "CA_CHAIN",
    },
  ];
  for (const c of cases) {
    await t.step(`${c.name} → ${c.code}`, async () => {
      await assertCertError(CertificateAuthority.fromPem(c.files), c.code);
      await withTempDir(async (dir) => {
        await writeCaDir(dir, c.files);
        await assertCertError(CertificateAuthority.load(dir), c.code);
      });
    });
  }
  await t.step("control: the intermediate with its own key and its root loads", async () => {
    await CertificateAuthority.fromPem({ cert: pem(int.cert), key: int.keyPem, roots: pem(root.cert) });
  });
});

Deno.test("load() names the missing file in a CA_DIR error; only cert-chain.pem is optional", async (t) => {
  const { ca, keyPem } = await CertificateAuthority.createRoot(TD);
  for (const missing of [CA_FILES.cert, CA_FILES.key, CA_FILES.roots]) {
    await t.step(`without ${missing}`, async () => {
      await withTempDir(async (dir) => {
        await ca.save(dir, keyPem);
        await Deno.remove(join(dir, missing));
        const path = join(dir, missing);
        await assertCertError(
          CertificateAuthority.load(dir),
          "CA_DIR",
          new RegExp(path.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")),
        );
      });
    });
  }
  await t.step(`without ${CA_FILES.chain}`, async () => {
    await withTempDir(async (dir) => {
      await ca.save(dir, keyPem);
      await Deno.remove(join(dir, CA_FILES.chain));
      const loaded = await CertificateAuthority.load(dir);
      assert.ok(sameCert(loaded.cert, ca.cert));
    });
  });
  await t.step("a directory that does not exist", async () => {
    await withTempDir(async (dir) => {
      await assertCertError(CertificateAuthority.load(join(dir, "nope")), "CA_DIR", /nope/);
    });
  });
});

Deno.test("load() accepts a SEC1 'EC PRIVATE KEY' PEM as openssl writes it", async (t) => {
  const cases: { name: string; make: () => Promise<{ cert: x509.X509Certificate; keyPem: string }> }[] = [
    {
      name: "Skiff root",
      make: async () => {
        const { ca, keyPem } = await CertificateAuthority.createRoot(TD);
        return { cert: ca.cert, keyPem };
      },
    },
    { name: "root made elsewhere", make: () => makeRoot("CN=openssl root") },
  ];
  for (const c of cases) {
    await t.step(c.name, async () => {
      const { cert, keyPem } = await c.make();
      const sec1 = createPrivateKey(keyPem).export({ type: "sec1", format: "pem" }) as string;
      assert.match(sec1, /^-----BEGIN EC PRIVATE KEY-----/);
      await withTempDir(async (dir) => {
        await writeCaDir(dir, { cert: pem(cert), key: sec1, roots: pem(cert) });
        const loaded = await CertificateAuthority.load(dir);
        await assertIssuesVerifiable(loaded, [cert]);
      });
    });
  }
});

// ---- signing ----

/** A CSR with any subject and SANs, signed with `signWith` (the CSR's own key by default). */
async function customCsr(opts: {
  names?: x509.JsonGeneralName[];
  subject?: string;
  signWith?: CryptoKey;
}): Promise<{ csrPem: string; keys: CryptoKeyPair }> {
  const keys = await newKeys();
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    name: opts.subject,
    keys: { publicKey: keys.publicKey, privateKey: opts.signWith ?? keys.privateKey },
    signingAlgorithm: P256,
    extensions: opts.names ? [new x509.SubjectAlternativeNameExtension(opts.names)] : [],
  });
  return { csrPem: csr.toString("pem"), keys };
}

let sharedRoot: Promise<CertificateAuthority> | undefined;
/** A root for the signing tests, made once. */
function signingCa(): Promise<CertificateAuthority> {
  sharedRoot ??= CertificateAuthority.createRoot(TD, { now: new Date(NOW.getTime() - HOUR) }).then((r) => r.ca);
  return sharedRoot;
}

function leafOf(issued: { chain: x509.X509Certificate[] }): x509.X509Certificate {
  return issued.chain[0];
}

Deno.test("sign() puts only the authorized identity in the leaf, whatever the CSR asked for", async (t) => {
  const ca = await signingCa();
  const cases: { name: string; names?: x509.JsonGeneralName[]; subject?: string }[] = [
    { name: "CSR for the same identity", names: [{ type: "url", value: ID.toString() }] },
    {
      name: "CSR for another identity",
      names: [{ type: "url", value: "spiffe://cluster.local/ns/kube-system/sa/admin" }],
    },
    { name: "CSR for another trust domain", names: [{ type: "url", value: "spiffe://evil.example/ns/shop/sa/cart" }] },
    {
      name: "CSR with extra DNS, URI and IP SANs",
      names: [
        { type: "url", value: ID.toString() },
        { type: "dns", value: "cart.shop.svc.cluster.local" },
        { type: "url", value: "spiffe://cluster.local/ns/kube-system/sa/admin" },
        { type: "dns", value: "*.example.com" },
        { type: "ip", value: "10.0.0.1" },
      ],
    },
    { name: "CSR with DNS SANs only", names: [{ type: "dns", value: "admin.example.com" }] },
    { name: "CSR without SANs but with a subject", names: undefined, subject: "CN=admin, O=system:masters" },
  ];
  for (const c of cases) {
    await t.step(c.name, async () => {
      const { csrPem, keys } = await customCsr({ names: c.names, subject: c.subject });
      const leaf = leafOf(await ca.sign({ csrPem, identity: ID, now: NOW }));
      const san = leaf.getExtension(x509.SubjectAlternativeNameExtension);
      assert.ok(san, "the leaf has a SAN extension");
      assert.deepEqual(san.names.toJSON(), [{ type: "url", value: ID.toString() }]);
      assert.equal(san.critical, true, "with an empty subject the SAN is critical");
      assert.equal(leaf.subject, "", "the CSR's subject is not copied");
      // The leaf certifies the CSR's key.
      const csrSpki = new Uint8Array(await crypto.subtle.exportKey("spki", keys.publicKey));
      assert.ok(bytesEqual(new Uint8Array(leaf.publicKey.rawData), csrSpki));
    });
  }
});

Deno.test("sign() makes an end-entity leaf: cA false, keyUsage digitalSignature+keyEncipherment, both critical", async () => {
  const ca = await signingCa();
  const { csrPem } = await createWorkloadCsr(ID);
  const leaf = leafOf(await ca.sign({ csrPem, identity: ID, now: NOW }));
  const bc = leaf.getExtension(x509.BasicConstraintsExtension);
  assert.ok(bc, "basicConstraints present");
  assert.equal(bc.ca, false);
  assert.equal(bc.critical, true);
  const ku = leaf.getExtension(x509.KeyUsagesExtension);
  assert.ok(ku, "keyUsage present");
  assert.equal(ku.usages, x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment);
  assert.equal(ku.usages & x509.KeyUsageFlags.keyCertSign, 0, "no keyCertSign");
  assert.equal(ku.critical, true);
  const eku = leaf.getExtension(x509.ExtendedKeyUsageExtension);
  assert.ok(eku, "extendedKeyUsage present");
  assert.ok(eku.usages.includes(x509.ExtendedKeyUsage.serverAuth), "serverAuth");
  assert.ok(eku.usages.includes(x509.ExtendedKeyUsage.clientAuth), "clientAuth");
  assert.equal(leaf.issuer, ca.cert.subject);
  assert.ok(await leaf.verify({ publicKey: ca.cert.publicKey, signatureOnly: true }), "signed by the CA key");
});

Deno.test("sign() backdates notBefore by two minutes for clock skew", async () => {
  const ca = await signingCa();
  const { csrPem } = await createWorkloadCsr(ID);
  const leaf = leafOf(await ca.sign({ csrPem, identity: ID, now: NOW }));
  assert.equal(BACKDATE_MS, 2 * 60_000);
  assert.equal(leaf.notBefore.getTime(), NOW.getTime() - 2 * 60_000);
});

Deno.test("sign() lifetime: 24 h when ttlMs is absent, 0 or negative; as asked up to exactly 90 days", async (t) => {
  const ca = await signingCa();
  assert.equal(DEFAULT_TTL_MS, DAY);
  assert.equal(MAX_TTL_MS, 90 * DAY);
  const cases: { ttlMs: number | undefined; lifetime: number }[] = [
    { ttlMs: undefined, lifetime: DAY },
    { ttlMs: 0, lifetime: DAY },
    { ttlMs: -1, lifetime: DAY },
    { ttlMs: -30 * DAY, lifetime: DAY },
    { ttlMs: HOUR, lifetime: HOUR },
    { ttlMs: 7 * DAY, lifetime: 7 * DAY },
    { ttlMs: 90 * DAY, lifetime: 90 * DAY },
  ];
  for (const c of cases) {
    await t.step(`ttlMs ${c.ttlMs} → ${c.lifetime / HOUR} h`, async () => {
      const { csrPem } = await createWorkloadCsr(ID);
      const leaf = leafOf(await ca.sign({ csrPem, identity: ID, now: NOW, ttlMs: c.ttlMs }));
      assert.equal(leaf.notAfter.getTime(), NOW.getTime() + c.lifetime);
    });
  }
});

Deno.test("sign() refuses a TTL above 90 days with TTL_TOO_LONG instead of clamping it", async (t) => {
  const ca = await signingCa();
  const { csrPem } = await createWorkloadCsr(ID);
  for (const ttlMs of [90 * DAY + 1000, 91 * DAY, 365 * DAY]) {
    await t.step(`ttlMs ${ttlMs}`, async () => {
      await assertCertError(ca.sign({ csrPem, identity: ID, now: NOW, ttlMs }), "TTL_TOO_LONG");
    });
  }
});

Deno.test("sign() never sets notAfter past the signer's notAfter", async (t) => {
  const { ca } = await CertificateAuthority.createRoot(TD, { now: NOW, ttlMs: HOUR });
  for (const ttlMs of [undefined, 2 * HOUR, 90 * DAY]) {
    await t.step(`ttlMs ${ttlMs} from a root that expires in 1 h`, async () => {
      const { csrPem } = await createWorkloadCsr(ID);
      const leaf = leafOf(await ca.sign({ csrPem, identity: ID, now: NOW, ttlMs }));
      assert.equal(leaf.notAfter.getTime(), ca.cert.notAfter.getTime());
    });
  }
  await t.step("control: a shorter TTL is kept", async () => {
    const { csrPem } = await createWorkloadCsr(ID);
    const leaf = leafOf(await ca.sign({ csrPem, identity: ID, now: NOW, ttlMs: 30 * 60_000 }));
    assert.equal(leaf.notAfter.getTime(), NOW.getTime() + 30 * 60_000);
  });
});

Deno.test("sign() rejects a CSR whose signature does not verify with BAD_CSR", async (t) => {
  const ca = await signingCa();
  const good = await createWorkloadCsr(ID);
  await t.step("control: the untouched CSR is signed", async () => {
    await ca.sign({ csrPem: good.csrPem, identity: ID, now: NOW });
  });
  await t.step("a byte of the signature flipped", async () => {
    const bytes = new Uint8Array(new x509.Pkcs10CertificateRequest(good.csrPem).rawData);
    bytes[bytes.length - 1] ^= 0x01; // the last byte of the DER is the last byte of the signature's s
    const tampered = toPem(bytes, "CERTIFICATE REQUEST");
    await assertCertError(ca.sign({ csrPem: tampered, identity: ID, now: NOW }), "BAD_CSR");
  });
  await t.step("signed with a key other than the one it carries", async () => {
    const other = await newKeys();
    const { csrPem } = await customCsr({ names: [{ type: "url", value: ID.toString() }], signWith: other.privateKey });
    await assertCertError(ca.sign({ csrPem, identity: ID, now: NOW }), "BAD_CSR");
  });
});

Deno.test("sign() rejects a CSR that does not parse with BAD_CSR", async (t) => {
  const ca = await signingCa();
  const cases: [string, string][] = [
    ["garbage text", "not a certificate request"],
    ["empty", ""],
    ["PEM with junk inside", toPem(new Uint8Array([1, 2, 3, 4, 5]), "CERTIFICATE REQUEST")],
  ];
  for (const [name, csrPem] of cases) {
    await t.step(name, async () => {
      await assertCertError(ca.sign({ csrPem, identity: ID, now: NOW }), "BAD_CSR");
    });
  }
});

Deno.test("sign() refuses to sign with SIGNER_EXPIRED once the signer's notAfter has passed", async (t) => {
  const { ca } = await CertificateAuthority.createRoot(TD, { now: NOW, ttlMs: HOUR });
  const expiry = ca.cert.notAfter.getTime();
  const { csrPem } = await createWorkloadCsr(ID);
  for (
    const [name, at] of [["at notAfter", expiry], ["a second later", expiry + 1000], [
      "a year later",
      expiry + 365 * DAY,
    ]] as const
  ) {
    await t.step(name, async () => {
      await assertCertError(ca.sign({ csrPem, identity: ID, now: new Date(at) }), "SIGNER_EXPIRED");
    });
  }
  await t.step("control: a second before notAfter it still signs", async () => {
    await ca.sign({ csrPem, identity: ID, now: new Date(expiry - 1000) });
  });
});
