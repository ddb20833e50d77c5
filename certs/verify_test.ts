/**
 * Verifying peer chains: a good X509-SVID is accepted and named, and each rule of `verify.ts` rejects a leaf
 * or chain that breaks it. Bad certificates are made with a root whose keys the test keeps, so anything can
 * be signed; every helper is also run with good extensions as a positive control, so that a rejection is due
 * to the bad property and not to the helper.
 */
import assert from "node:assert/strict";
import { SpiffeId } from "../mesh/identity.ts";
import { CertificateAuthority } from "./ca.ts";
import { MAX_CHAIN_DEPTH, svidIdentity, type VerifyOptions, verifyPeerChain } from "./verify.ts";
import { CertError, P256, x509 } from "./x509.ts";

const TD = "cluster.local";
const ID = SpiffeId.of(TD, "shop", "cart");
const HOUR = 3_600_000;
const DAY = 24 * HOUR;
const NOW = new Date(Math.floor(Date.now() / 1000) * 1000);

const KU = x509.KeyUsageFlags;
const EKU = x509.ExtendedKeyUsage;

interface Keyed {
  cert: x509.X509Certificate;
  keys: CryptoKeyPair;
}

interface Validity {
  notBefore: Date;
  notAfter: Date;
}

const WIDE: Validity = { notBefore: new Date(NOW.getTime() - DAY), notAfter: new Date(NOW.getTime() + 365 * DAY) };

async function newKeys(): Promise<CryptoKeyPair> {
  return await crypto.subtle.generateKey(P256, true, ["sign", "verify"]) as CryptoKeyPair;
}

let serial = 1;
function nextSerial(): string {
  return (serial++).toString(16).padStart(4, "0");
}

function caExtensions(opts: { ca?: boolean; usages?: number } = {}): x509.Extension[] {
  return [
    new x509.BasicConstraintsExtension(opts.ca ?? true, undefined, true),
    new x509.KeyUsagesExtension(opts.usages ?? (KU.keyCertSign | KU.cRLSign), true),
  ];
}

async function makeRoot(name = "O=cluster.local, CN=Test root", validity: Validity = WIDE): Promise<Keyed> {
  const keys = await newKeys();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: nextSerial(),
    name,
    ...validity,
    keys,
    signingAlgorithm: P256,
    extensions: caExtensions(),
  });
  return { cert, keys };
}

/** Signs any certificate with `issuer`'s key: the tool to make good and bad leaves and intermediates alike. */
async function signWith(
  issuer: Keyed,
  opts: { subject?: string; extensions: x509.Extension[]; validity?: Validity },
): Promise<Keyed> {
  const keys = await newKeys();
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: nextSerial(),
    subject: opts.subject ?? "",
    issuer: issuer.cert.subject,
    ...(opts.validity ?? WIDE),
    publicKey: keys.publicKey,
    signingKey: issuer.keys.privateKey,
    signingAlgorithm: P256,
    extensions: opts.extensions,
  });
  return { cert, keys };
}

/** The properties of a leaf; `goodLeaf` is what the CA makes. */
interface LeafShape {
  sans: x509.JsonGeneralName[] | undefined;
  ca: boolean | undefined;
  usages: number | undefined;
  eku: string[] | undefined;
}

const GOOD_LEAF: LeafShape = {
  sans: [{ type: "url", value: ID.toString() }],
  ca: false,
  usages: KU.digitalSignature | KU.keyEncipherment,
  eku: [EKU.serverAuth, EKU.clientAuth],
};

function leafExtensions(shape: Partial<LeafShape>): x509.Extension[] {
  const s = { ...GOOD_LEAF, ...shape };
  const ext: x509.Extension[] = [];
  if (s.ca !== undefined) ext.push(new x509.BasicConstraintsExtension(s.ca, undefined, true));
  if (s.usages !== undefined) ext.push(new x509.KeyUsagesExtension(s.usages, true));
  if (s.eku !== undefined) ext.push(new x509.ExtendedKeyUsageExtension(s.eku, false));
  if (s.sans !== undefined) ext.push(new x509.SubjectAlternativeNameExtension(s.sans, true));
  return ext;
}

async function leaf(issuer: Keyed, shape: Partial<LeafShape> = {}, validity?: Validity): Promise<x509.X509Certificate> {
  return (await signWith(issuer, { extensions: leafExtensions(shape), validity })).cert;
}

function opts(roots: Keyed[], more: Partial<VerifyOptions> = {}): VerifyOptions {
  return { roots: roots.map((r) => r.cert), trustDomain: TD, now: NOW, ...more };
}

async function assertRejects(p: Promise<unknown>, code: string, message?: RegExp): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof CertError, `expected a CertError, got ${err}`);
    assert.equal(err.code, code, `wrong code; message: ${err.message}`);
    if (message) assert.match(err.message, message);
    return true;
  });
}

async function assertAccepted(p: Promise<SpiffeId>, id = ID): Promise<void> {
  const got = await p;
  assert.ok(got instanceof SpiffeId);
  assert.ok(got.equals(id), `accepted as ${got}, expected ${id}`);
}

Deno.test("verifyPeerChain() accepts a leaf the CA issued and returns its SPIFFE ID", async (t) => {
  const { ca } = await CertificateAuthority.createRoot(TD);
  const issued = await ca.issue(ID);
  for (const purpose of [undefined, "server", "client"] as const) {
    await t.step(`purpose ${purpose}`, async () => {
      const id = await verifyPeerChain(issued.chain, { roots: issued.roots, trustDomain: TD, purpose });
      assert.equal(id.toString(), "spiffe://cluster.local/ns/shop/sa/cart");
      assert.equal(id.namespace, "shop");
      assert.equal(id.serviceAccount, "cart");
      assert.equal(id.trustDomain, TD);
    });
  }
});

Deno.test("positive control: the test's signing helper with good extensions is accepted", async (t) => {
  const root = await makeRoot();
  await t.step("leaf signed by the root", async () => {
    await assertAccepted(verifyPeerChain([await leaf(root)], opts([root], { purpose: "server" })));
  });
  await t.step("leaf signed by a good intermediate", async () => {
    const int = await signWith(root, { subject: "CN=Intermediate", extensions: caExtensions() });
    await assertAccepted(verifyPeerChain([await leaf(int), int.cert], opts([root], { purpose: "client" })));
  });
  await t.step("another identity in the trust domain", async () => {
    const other = SpiffeId.of(TD, "billing", "invoicer");
    await assertAccepted(
      verifyPeerChain([await leaf(root, { sans: [{ type: "url", value: other.toString() }] })], opts([root])),
      other,
    );
  });
});

Deno.test("verifyPeerChain() rejects a chain that leads to a foreign root with UNTRUSTED", async (t) => {
  const root = await makeRoot("O=cluster.local, CN=Test root");
  const foreignSameName = await makeRoot("O=cluster.local, CN=Test root");
  const foreignOtherName = await makeRoot("O=elsewhere, CN=Foreign root");
  const cases: [string, Keyed][] = [
    ["foreign root with another name", foreignOtherName],
    ["foreign root with the same name, another key", foreignSameName],
  ];
  for (const [name, signer] of cases) {
    await t.step(name, async () => {
      await assertRejects(verifyPeerChain([await leaf(signer)], opts([root])), "UNTRUSTED");
    });
  }
  await t.step("foreign root sent along in the chain", async () => {
    await assertRejects(
      verifyPeerChain([await leaf(foreignOtherName), foreignOtherName.cert], opts([root])),
      "UNTRUSTED",
    );
  });
  await t.step("intermediate under a foreign root", async () => {
    const int = await signWith(foreignOtherName, { subject: "CN=Intermediate", extensions: caExtensions() });
    await assertRejects(verifyPeerChain([await leaf(int), int.cert], opts([root])), "UNTRUSTED");
  });
  await t.step("control: with the foreign root in the bundle the same leaf is accepted", async () => {
    await assertAccepted(verifyPeerChain([await leaf(foreignOtherName)], opts([root, foreignOtherName])));
  });
});

Deno.test("verifyPeerChain() checks validity at `now`: EXPIRED after notAfter, NOT_YET_VALID before notBefore", async (t) => {
  const root = await makeRoot();
  const validity = { notBefore: new Date(NOW.getTime() - HOUR), notAfter: new Date(NOW.getTime() + HOUR) };
  const good = await leaf(root, {}, validity);
  const cases: { name: string; at: number; code?: string }[] = [
    { name: "a second after notAfter", at: validity.notAfter.getTime() + 1000, code: "EXPIRED" },
    { name: "a day after notAfter", at: validity.notAfter.getTime() + DAY, code: "EXPIRED" },
    { name: "a second before notBefore", at: validity.notBefore.getTime() - 1000, code: "NOT_YET_VALID" },
    { name: "a day before notBefore", at: validity.notBefore.getTime() - DAY, code: "NOT_YET_VALID" },
    { name: "control: at notBefore", at: validity.notBefore.getTime() },
    { name: "control: in the middle", at: NOW.getTime() },
    { name: "control: at notAfter", at: validity.notAfter.getTime() },
  ];
  for (const c of cases) {
    await t.step(c.name, async () => {
      const p = verifyPeerChain([good], opts([root], { now: new Date(c.at) }));
      if (c.code) await assertRejects(p, c.code);
      else await assertAccepted(p);
    });
  }
});

Deno.test("verifyPeerChain() rejects an expired intermediate or trust root with EXPIRED", async (t) => {
  const past = { notBefore: new Date(NOW.getTime() - 2 * DAY), notAfter: new Date(NOW.getTime() - DAY) };
  const current = { notBefore: new Date(NOW.getTime() - HOUR), notAfter: new Date(NOW.getTime() + HOUR) };
  await t.step("expired intermediate", async () => {
    const root = await makeRoot();
    const int = await signWith(root, { subject: "CN=Old intermediate", extensions: caExtensions(), validity: past });
    await assertRejects(
      verifyPeerChain([await leaf(int, {}, current), int.cert], opts([root])),
      "EXPIRED",
      /certificate 2/,
    );
  });
  await t.step("expired trust root", async () => {
    const root = await makeRoot("CN=Old root", past);
    await assertRejects(verifyPeerChain([await leaf(root, {}, current)], opts([root])), "EXPIRED", /trust root/);
  });
});

Deno.test("verifyPeerChain() rejects a leaf whose identity is in another trust domain with WRONG_TRUST_DOMAIN", async (t) => {
  const root = await makeRoot();
  for (const uri of ["spiffe://example.org/ns/shop/sa/cart", "spiffe://cluster.local.evil/ns/shop/sa/cart"]) {
    await t.step(uri, async () => {
      const l = await leaf(root, { sans: [{ type: "url", value: uri }] });
      await assertRejects(verifyPeerChain([l], opts([root])), "WRONG_TRUST_DOMAIN");
      // Control: the same leaf is accepted when that trust domain is the one pinned.
      const td = SpiffeId.parse(uri).trustDomain;
      await assertAccepted(verifyPeerChain([l], opts([root], { trustDomain: td })), SpiffeId.parse(uri));
    });
  }
});

Deno.test("verifyPeerChain() rejects a leaf that is not a proper X509-SVID", async (t) => {
  const root = await makeRoot();
  const url = (value: string): x509.JsonGeneralName => ({ type: "url", value });
  const cases: {
    name: string;
    shape: Partial<LeafShape>;
    purpose?: "server" | "client";
    code: string;
    msg?: RegExp;
  }[] = [
    {
      name: "two URI SANs",
      shape: { sans: [url(ID.toString()), url("spiffe://cluster.local/ns/shop/sa/other")] },
      code: "BAD_SAN",
      msg: /2 URI SANs/,
    },
    {
      name: "the same URI SAN twice",
      shape: { sans: [url(ID.toString()), url(ID.toString())] },
      code: "BAD_SAN",
      msg: /2 URI SANs/,
    },
    {
      name: "zero URI SANs but a DNS SAN",
      shape: { sans: [{ type: "dns", value: "cart.shop.svc" }] },
      code: "BAD_SAN",
      msg: /0 URI SANs/,
    },
    { name: "no SAN extension at all", shape: { sans: undefined }, code: "BAD_SAN", msg: /0 URI SANs/ },
    {
      name: "a NUL byte in the URI SAN",
      shape: { sans: [url("spiffe://cluster.local/ns/shop/sa/cart\0.evil")] },
      code: "BAD_SAN",
      msg: /NUL/,
    },
    {
      name: "a NUL byte in a DNS SAN beside a good URI SAN",
      shape: { sans: [url(ID.toString()), { type: "dns", value: "cart.shop.svc\0.evil.example" }] },
      code: "BAD_SAN",
      msg: /NUL/,
    },
    {
      name: "a URI SAN that is not a SPIFFE ID",
      shape: { sans: [url("https://cluster.local/ns/shop/sa/cart")] },
      code: "BAD_SAN",
    },
    {
      name: "a SPIFFE ID not in Istio's form",
      shape: { sans: [url("spiffe://cluster.local/workload/cart")] },
      code: "BAD_SAN",
    },
    { name: "cA=true", shape: { ca: true }, code: "CA_LEAF", msg: /cA=true/ },
    {
      name: "keyCertSign",
      shape: { usages: KU.digitalSignature | KU.keyCertSign },
      code: "CA_LEAF",
      msg: /keyCertSign/,
    },
    { name: "cRLSign", shape: { usages: KU.digitalSignature | KU.cRLSign }, code: "CA_LEAF" },
    {
      name: "clientAuth only, acting as a server",
      shape: { eku: [EKU.clientAuth] },
      purpose: "server",
      code: "BAD_EKU",
    },
    {
      name: "serverAuth only, acting as a client",
      shape: { eku: [EKU.serverAuth] },
      purpose: "client",
      code: "BAD_EKU",
    },
    {
      name: "codeSigning only, acting as a server",
      shape: { eku: [EKU.codeSigning] },
      purpose: "server",
      code: "BAD_EKU",
    },
  ];
  for (const c of cases) {
    await t.step(`${c.name} → ${c.code}`, async () => {
      const l = await leaf(root, c.shape);
      await assertRejects(verifyPeerChain([l], opts([root], { purpose: c.purpose })), c.code, c.msg);
      assert.throws(() => svidIdentity(l, TD, c.purpose), (err: unknown) => (err as CertError).code === c.code);
    });
  }
});

Deno.test("verifyPeerChain() accepts leaves whose EKU allows the role they play, or that have no EKU", async (t) => {
  const root = await makeRoot();
  const cases: { name: string; eku: string[] | undefined; purpose?: "server" | "client" }[] = [
    { name: "clientAuth only, acting as a client", eku: [EKU.clientAuth], purpose: "client" },
    { name: "serverAuth only, acting as a server", eku: [EKU.serverAuth], purpose: "server" },
    { name: "both, acting as a server", eku: [EKU.serverAuth, EKU.clientAuth], purpose: "server" },
    { name: "both, acting as a client", eku: [EKU.serverAuth, EKU.clientAuth], purpose: "client" },
    { name: "no EKU extension, acting as a server", eku: undefined, purpose: "server" },
    { name: "clientAuth only, no role given", eku: [EKU.clientAuth], purpose: undefined },
  ];
  for (const c of cases) {
    await t.step(c.name, async () => {
      await assertAccepted(verifyPeerChain([await leaf(root, { eku: c.eku })], opts([root], { purpose: c.purpose })));
    });
  }
  await t.step("no basicConstraints and no keyUsage", async () => {
    await assertAccepted(verifyPeerChain([await leaf(root, { ca: undefined, usages: undefined })], opts([root])));
  });
});

Deno.test("verifyPeerChain() rejects an intermediate that may not sign with BAD_CHAIN", async (t) => {
  const root = await makeRoot();
  const cases: { name: string; extensions: x509.Extension[] }[] = [
    { name: "cA=false", extensions: caExtensions({ ca: false, usages: KU.digitalSignature }) },
    { name: "cA=false with keyCertSign", extensions: caExtensions({ ca: false }) },
    { name: "no basicConstraints", extensions: [new x509.KeyUsagesExtension(KU.keyCertSign, true)] },
    { name: "cA=true without keyCertSign", extensions: caExtensions({ usages: KU.digitalSignature | KU.cRLSign }) },
  ];
  for (const c of cases) {
    await t.step(c.name, async () => {
      const int = await signWith(root, { subject: "CN=Not really a CA", extensions: c.extensions });
      await assertRejects(verifyPeerChain([await leaf(int), int.cert], opts([root])), "BAD_CHAIN", /not a CA/);
    });
  }
  await t.step("control: the same intermediate with CA extensions is accepted", async () => {
    const int = await signWith(root, { subject: "CN=Not really a CA", extensions: caExtensions() });
    await assertAccepted(verifyPeerChain([await leaf(int), int.cert], opts([root])));
  });
  await t.step("an intermediate that did not sign the leaf", async () => {
    const int = await signWith(root, { subject: "CN=Intermediate", extensions: caExtensions() });
    const impostor = await signWith(root, { subject: "CN=Intermediate", extensions: caExtensions() });
    await assertRejects(verifyPeerChain([await leaf(int), impostor.cert], opts([root])), "BAD_CHAIN", /not signed/);
  });
});

Deno.test("verifyPeerChain() rejects an empty chain with NO_CERTIFICATE", async () => {
  const root = await makeRoot();
  await assertRejects(verifyPeerChain([], opts([root])), "NO_CERTIFICATE");
});

Deno.test(`verifyPeerChain() rejects a chain longer than ${MAX_CHAIN_DEPTH} certificates with BAD_CHAIN`, async () => {
  const root = await makeRoot();
  const l = await leaf(root);
  await assertAccepted(verifyPeerChain(Array(MAX_CHAIN_DEPTH).fill(l), opts([root])));
  await assertRejects(verifyPeerChain(Array(MAX_CHAIN_DEPTH + 1).fill(l), opts([root])), "BAD_CHAIN");
});

Deno.test("svidIdentity() names the leaf's identity without looking at the chain", async () => {
  const stranger = await makeRoot("CN=Anyone");
  const id = svidIdentity(await leaf(stranger), TD, "server");
  assert.ok(id.equals(ID));
});
