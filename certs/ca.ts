/**
 * The certificate authority: a signer (a root Skiff created, or an intermediate an operator plugged in) and
 * the trust bundle, kept in a directory laid out as Istio's `cacerts`:
 *
 * | file            | what                                                                  |
 * | --------------- | --------------------------------------------------------------------- |
 * | `ca-cert.pem`   | the signing certificate (the root itself, or the intermediate)        |
 * | `ca-key.pem`    | its private key, mode 0600                                            |
 * | `cert-chain.pem`| the chain from `ca-cert.pem` up, roots optional                       |
 * | `root-cert.pem` | the trust bundle: one or more roots                                   |
 *
 * Signing follows Istio's CA (`security/pkg/pki/ca`) with SPIFFE's X509-SVID rules: the leaf carries exactly
 * one URI SAN, the identity the caller was authorized for, whatever the CSR asked for; cA false; keyUsage
 * digitalSignature+keyEncipherment, critical; EKU serverAuth+clientAuth; empty subject, so the SAN is
 * critical; notBefore backdated two minutes for clock skew; TTL 24 h by default, 90 days at most (above is an
 * error, not clamped; ≤ 0 means the default); notAfter never past the signer's.
 *
 * @module
 */

import { isIP } from "node:net";
import { join } from "node:path";
import type { SpiffeId } from "../mesh/identity.ts";
import { createWorkloadCsr } from "./csr.ts";
import {
  bytesEqual,
  CertError,
  certificateSpki,
  certificatesToPem,
  importSigningKey,
  P256,
  parseCertificates,
  privateKeyToPem,
  randomSerial,
  type SigningKey,
  x509,
} from "./x509.ts";

/** Default leaf lifetime: 24 hours. */
export const DEFAULT_TTL_MS = 24 * 3_600_000;
/** Longest leaf lifetime: 90 days. */
export const MAX_TTL_MS = 90 * 24 * 3_600_000;
/** notBefore is set this far in the past, for clock skew. */
export const BACKDATE_MS = 2 * 60_000;
/** Lifetime of a root Skiff creates: 10 years, as Istio's self-signed root. */
export const ROOT_TTL_MS = 10 * 365 * 24 * 3_600_000;

/** File names of a CA directory (Istio's cacerts). */
export const CA_FILES = {
  cert: "ca-cert.pem",
  key: "ca-key.pem",
  chain: "cert-chain.pem",
  roots: "root-cert.pem",
} as const;

/** A signed workload certificate: the chain to present (leaf first) and the trust bundle. */
export interface Issued {
  /** Leaf, then intermediates up to (not including) the root. */
  chain: x509.X509Certificate[];
  /** The trust bundle. */
  roots: x509.X509Certificate[];
}

/** What to sign. */
export interface SignRequest {
  /** PEM of a PKCS#10 CSR; its signature must verify, its SANs are ignored. */
  csrPem: string;
  /** The identity the caller is authorized for: the one URI SAN of the leaf. */
  identity: SpiffeId;
  /** Lifetime in ms; ≤ 0 or absent means 24 h; above 90 days is an error. */
  ttlMs?: number;
  /** Signing time; now by default. */
  now?: Date;
}

/** A loaded certificate authority. */
export class CertificateAuthority {
  /** The signing certificate. */
  readonly cert: x509.X509Certificate;
  /** Certificates from the signer up, excluding roots: appended to every leaf. */
  readonly intermediates: x509.X509Certificate[];
  /** The trust bundle. */
  readonly roots: x509.X509Certificate[];
  /** Whether the signer is itself one of the roots. */
  readonly selfSigned: boolean;
  readonly #key: SigningKey;

  private constructor(
    cert: x509.X509Certificate,
    key: SigningKey,
    intermediates: x509.X509Certificate[],
    roots: x509.X509Certificate[],
  ) {
    this.cert = cert;
    this.#key = key;
    this.intermediates = intermediates;
    this.roots = roots;
    this.selfSigned = roots.some((r) => bytesEqual(new Uint8Array(r.rawData), new Uint8Array(cert.rawData)));
  }

  /** Creates a new self-signed root (ECDSA P-256) for `trustDomain`. */
  static async createRoot(
    trustDomain: string,
    opts: { now?: Date; ttlMs?: number } = {},
  ): Promise<{ ca: CertificateAuthority; keyPem: string }> {
    const now = opts.now ?? new Date();
    const keys = await crypto.subtle.generateKey(P256, true, ["sign", "verify"]) as CryptoKeyPair;
    const cert = await x509.X509CertificateGenerator.createSelfSigned({
      serialNumber: randomSerial(),
      name: [{ O: [trustDomain] }, { CN: ["Skiff root CA"] }],
      notBefore: new Date(now.getTime() - BACKDATE_MS),
      notAfter: new Date(now.getTime() + (opts.ttlMs ?? ROOT_TTL_MS)),
      keys,
      signingAlgorithm: P256,
      extensions: [
        new x509.BasicConstraintsExtension(true, undefined, true),
        new x509.KeyUsagesExtension(
          x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign | x509.KeyUsageFlags.digitalSignature,
          true,
        ),
        await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
      ],
    });
    const keyPem = await privateKeyToPem(keys.privateKey);
    const key = await importSigningKey(keyPem, "new root key");
    return { ca: new CertificateAuthority(cert, key, [], [cert]), keyPem };
  }

  /**
   * Loads a CA from PEM texts, checking that they fit together: the key matches the certificate, the
   * certificate may sign, and the chain leads to a root in the bundle.
   */
  static async fromPem(
    p: { cert: string; key: string; chain?: string; roots: string },
    where = "CA",
  ): Promise<CertificateAuthority> {
    const [cert] = parseCertificates(p.cert, `${where} ${CA_FILES.cert}`);
    const key = await importSigningKey(p.key, `${where} ${CA_FILES.key}`);
    const roots = parseCertificates(p.roots, `${where} ${CA_FILES.roots}`);
    if (!bytesEqual(key.spki, certificateSpki(cert))) {
      throw new CertError("CA_MISMATCH", `${where}: ${CA_FILES.key} is not the key of ${CA_FILES.cert}`);
    }
    const bc = cert.getExtension(x509.BasicConstraintsExtension);
    const ku = cert.getExtension(x509.KeyUsagesExtension);
    if (!bc?.ca || (ku && !(ku.usages & x509.KeyUsageFlags.keyCertSign))) {
      throw new CertError(
        "CA_NOT_CA",
        `${where}: ${CA_FILES.cert} is not a CA certificate (needs cA=true and keyCertSign)`,
      );
    }
    const isRoot = (c: x509.X509Certificate) =>
      roots.some((r) => bytesEqual(new Uint8Array(r.rawData), new Uint8Array(c.rawData)));
    const chain = p.chain ? parseCertificates(p.chain, `${where} ${CA_FILES.chain}`) : [cert];
    if (!bytesEqual(new Uint8Array(chain[0].rawData), new Uint8Array(cert.rawData))) chain.unshift(cert);
    const intermediates = chain.filter((c) => !isRoot(c));
    // The chain must lead, link by link, to a root of the bundle.
    let current = cert;
    for (let i = 1;; i++) {
      if (isRoot(current)) break;
      // Every root of the bundle with the issuer's name: roots Skiff creates for one trust domain share one.
      let signedByRoot = false;
      for (const root of roots.filter((r) => r.subject === current.issuer)) {
        if (await current.verify({ publicKey: root.publicKey, signatureOnly: true })) signedByRoot = true;
      }
      if (signedByRoot) break;
      const next = chain[i];
      if (
        !next || next.subject !== current.issuer ||
        !await current.verify({ publicKey: next.publicKey, signatureOnly: true })
      ) {
        throw new CertError(
          "CA_CHAIN",
          `${where}: ${CA_FILES.cert} does not chain to a root in ${CA_FILES.roots} (issuer ${current.issuer})`,
        );
      }
      current = next;
    }
    return new CertificateAuthority(cert, key, intermediates, roots);
  }

  /** Loads a CA directory (see the module's table). */
  static async load(dir: string): Promise<CertificateAuthority> {
    const read = async (name: string, optional = false): Promise<string | undefined> => {
      try {
        return await Deno.readTextFile(join(dir, name));
      } catch (err) {
        if (optional && err instanceof Deno.errors.NotFound) return undefined;
        throw new CertError("CA_DIR", `Cannot read CA file ${join(dir, name)}: ${(err as Error).message}`);
      }
    };
    return await CertificateAuthority.fromPem({
      cert: (await read(CA_FILES.cert))!,
      key: (await read(CA_FILES.key))!,
      chain: await read(CA_FILES.chain, true),
      roots: (await read(CA_FILES.roots))!,
    }, dir);
  }

  /** Whether `dir` holds a CA (its certificate file exists). */
  static async exists(dir: string): Promise<boolean> {
    try {
      await Deno.stat(join(dir, CA_FILES.cert));
      return true;
    } catch (err) {
      if (err instanceof Deno.errors.NotFound) return false;
      throw err;
    }
  }

  /** Writes a new root's files into `dir` (created 0700), the key 0600. Refuses to overwrite. */
  async save(dir: string, keyPem: string): Promise<void> {
    await Deno.mkdir(dir, { recursive: true, mode: 0o700 });
    const write = async (name: string, text: string, mode: number) => {
      const path = join(dir, name);
      await Deno.writeTextFile(path, text, { createNew: true, mode });
      await Deno.chmod(path, mode); // the umask may have narrowed it; set exactly what we mean
    };
    await write(CA_FILES.key, keyPem, 0o600);
    await write(CA_FILES.cert, certificatesToPem([this.cert]), 0o644);
    await write(CA_FILES.chain, certificatesToPem([this.cert, ...this.intermediates.slice(1)]), 0o644);
    await write(CA_FILES.roots, certificatesToPem(this.roots), 0o644);
  }

  /** Signs a workload certificate for `req.identity`; see the module's rules. */
  async sign(req: SignRequest): Promise<Issued> {
    const now = req.now ?? new Date();
    const ttl = req.ttlMs === undefined || req.ttlMs <= 0 ? DEFAULT_TTL_MS : req.ttlMs;
    if (ttl > MAX_TTL_MS) {
      throw new CertError(
        "TTL_TOO_LONG",
        `requested TTL of ${Math.round(ttl / 3_600_000)} h is above the maximum of 90 days`,
      );
    }
    if (now.getTime() >= this.cert.notAfter.getTime()) {
      throw new CertError(
        "SIGNER_EXPIRED",
        `the CA certificate expired at ${this.cert.notAfter.toISOString()}`,
      );
    }
    let csr: x509.Pkcs10CertificateRequest;
    try {
      csr = new x509.Pkcs10CertificateRequest(req.csrPem);
    } catch (err) {
      throw new CertError("BAD_CSR", `the CSR does not parse: ${(err as Error).message}`);
    }
    if (!await csr.verify()) throw new CertError("BAD_CSR", "the CSR signature does not verify");
    const notAfter = Math.min(now.getTime() + ttl, this.cert.notAfter.getTime());
    const leaf = await x509.X509CertificateGenerator.create({
      serialNumber: randomSerial(),
      subject: "",
      issuer: this.cert.subjectName,
      notBefore: new Date(now.getTime() - BACKDATE_MS),
      notAfter: new Date(notAfter),
      publicKey: csr.publicKey,
      signingKey: this.#key.key,
      signingAlgorithm: this.#key.algorithm,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(
          x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment,
          true,
        ),
        new x509.ExtendedKeyUsageExtension([
          x509.ExtendedKeyUsage.serverAuth,
          x509.ExtendedKeyUsage.clientAuth,
        ], false),
        // An empty subject makes the SAN the only name, so RFC 5280 §4.2.1.6 requires it critical.
        new x509.SubjectAlternativeNameExtension([{ type: "url", value: req.identity.toString() }], true),
        await x509.AuthorityKeyIdentifierExtension.create(this.cert),
      ],
    });
    return { chain: [leaf, ...this.intermediates], roots: this.roots };
  }

  /**
   * Makes a key and a TLS server certificate for the control plane's own port: DNS and IP SANs (clients check
   * the host of the URL they dial, as ztunnel does against istiod's certificate), serverAuth only.
   */
  async issueServing(names: string[], opts: { ttlMs?: number; now?: Date } = {}): Promise<Issued & { keyPem: string }> {
    const now = opts.now ?? new Date();
    const keys = await crypto.subtle.generateKey(P256, true, ["sign", "verify"]) as CryptoKeyPair;
    const notAfter = Math.min(now.getTime() + (opts.ttlMs ?? DEFAULT_TTL_MS * 365), this.cert.notAfter.getTime());
    const leaf = await x509.X509CertificateGenerator.create({
      serialNumber: randomSerial(),
      subject: `CN=${names[0]}`,
      issuer: this.cert.subjectName,
      notBefore: new Date(now.getTime() - BACKDATE_MS),
      notAfter: new Date(notAfter),
      publicKey: keys.publicKey,
      signingKey: this.#key.key,
      signingAlgorithm: this.#key.algorithm,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
        new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth], false),
        new x509.SubjectAlternativeNameExtension(
          names.map((n) => (isIP(n) ? { type: "ip" as const, value: n } : { type: "dns" as const, value: n })),
          false,
        ),
        await x509.AuthorityKeyIdentifierExtension.create(this.cert),
      ],
    });
    return { chain: [leaf, ...this.intermediates], roots: this.roots, keyPem: await privateKeyToPem(keys.privateKey) };
  }

  /** Makes a key and CSR for `identity` and signs it: what `skiff ca issue` and tests use. */
  async issue(
    identity: SpiffeId,
    opts: { ttlMs?: number; now?: Date } = {},
  ): Promise<Issued & { keyPem: string }> {
    const { csrPem, keyPem } = await createWorkloadCsr(identity);
    return { ...await this.sign({ csrPem, identity, ...opts }), keyPem };
  }
}
