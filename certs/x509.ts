/**
 * The one place `@peculiar/x509` is set up: it needs `reflect-metadata` loaded first and a WebCrypto
 * provider. Everything in `certs/` imports x509 from here, and PEM and key helpers live beside it.
 *
 * @module
 */

import "reflect-metadata";
import * as x509 from "@peculiar/x509";
import { createPrivateKey, createPublicKey } from "node:crypto";

x509.cryptoProvider.set(crypto);

export { x509 };

/** Errors from the certificate core; `code` says which rule was broken. */
export class CertError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "CertError";
    this.code = code;
  }
}

/** ECDSA P-256 with SHA-256: workload keys, and keys of CAs Skiff creates. */
export const P256 = { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" } as const;

/** A private key with what signing needs to know about it. */
export interface SigningKey {
  key: CryptoKey;
  /** Algorithm to sign certificates with. */
  algorithm: Algorithm & { hash: string };
  /** DER of the matching public key (SubjectPublicKeyInfo), to compare with a certificate's. */
  spki: Uint8Array;
}

/** Splits PEM text into DER blocks of the given label ("CERTIFICATE"), in order. */
export function pemBlocks(text: string, label: string): Uint8Array<ArrayBuffer>[] {
  const re = new RegExp(`-----BEGIN ${label}-----([\\s\\S]*?)-----END ${label}-----`, "g");
  return [...text.matchAll(re)].map((m) => Uint8Array.from(atob(m[1].replace(/\s+/g, "")), (c) => c.charCodeAt(0)));
}

/** Encodes DER as PEM. */
export function toPem(der: Uint8Array | ArrayBuffer, label: string): string {
  const bytes = der instanceof Uint8Array ? der : new Uint8Array(der);
  let bin = "";
  for (let i = 0; i < bytes.length; i += 0x8000) bin += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  const b64 = btoa(bin).replace(/.{64}/g, "$&\n").replace(/\n$/, "");
  return `-----BEGIN ${label}-----\n${b64}\n-----END ${label}-----\n`;
}

/** Parses every certificate in PEM text; `what` names the source in errors. */
export function parseCertificates(text: string, what: string): x509.X509Certificate[] {
  const blocks = pemBlocks(text, "CERTIFICATE");
  if (blocks.length === 0) throw new CertError("BAD_PEM", `${what}: no PEM CERTIFICATE block found`);
  return blocks.map((der, i) => {
    try {
      return new x509.X509Certificate(der);
    } catch (err) {
      throw new CertError(
        "BAD_PEM",
        `${what}: certificate ${i + 1} does not parse: ${(err as Error).message}`,
      );
    }
  });
}

/** PEM text of certificates, in order. */
export function certificatesToPem(certs: readonly x509.X509Certificate[]): string {
  return certs.map((c) => c.toString("pem") + "\n").join("");
}

/**
 * Imports a private key from PEM (PKCS#8 `PRIVATE KEY`, SEC1 `EC PRIVATE KEY` or PKCS#1 `RSA PRIVATE KEY`, as
 * openssl and Istio's cacerts write them) for signing. ECDSA P-256/P-384 and RSA keys are accepted.
 */
export async function importSigningKey(pem: string, what: string): Promise<SigningKey> {
  let keyObject;
  try {
    keyObject = createPrivateKey(pem);
  } catch (err) {
    throw new CertError("BAD_KEY", `${what}: not a PEM private key: ${(err as Error).message}`);
  }
  const pkcs8 = keyObject.export({ type: "pkcs8", format: "der" });
  const spki = new Uint8Array(createPublicKey(keyObject).export({ type: "spki", format: "der" }));
  const type = keyObject.asymmetricKeyType;
  let algorithm: SigningKey["algorithm"];
  let importAlg: EcKeyImportParams | RsaHashedImportParams;
  if (type === "ec") {
    const curve = keyObject.asymmetricKeyDetails?.namedCurve;
    const namedCurve = curve === "prime256v1" || curve === "P-256"
      ? "P-256"
      : curve === "secp384r1" || curve === "P-384"
      ? "P-384"
      : undefined;
    if (!namedCurve) {
      throw new CertError("BAD_KEY", `${what}: EC curve ${curve} is not supported (use P-256 or P-384)`);
    }
    const hash = namedCurve === "P-256" ? "SHA-256" : "SHA-384";
    algorithm = { name: "ECDSA", hash };
    importAlg = { name: "ECDSA", namedCurve };
  } else if (type === "rsa") {
    algorithm = { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" };
    importAlg = { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" };
  } else {
    throw new CertError("BAD_KEY", `${what}: key type ${type} is not supported (use ECDSA or RSA)`);
  }
  const key = await crypto.subtle.importKey("pkcs8", new Uint8Array(pkcs8), importAlg, true, ["sign"]);
  return { key, algorithm, spki };
}

/** PEM (PKCS#8) of a private key. */
export async function privateKeyToPem(key: CryptoKey): Promise<string> {
  return toPem(await crypto.subtle.exportKey("pkcs8", key), "PRIVATE KEY");
}

/** DER of a certificate's SubjectPublicKeyInfo. */
export function certificateSpki(cert: x509.X509Certificate): Uint8Array {
  return new Uint8Array(cert.publicKey.rawData);
}

/** Whether two byte strings are equal. */
export function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

/** A random positive serial number of 16 bytes, as hex. */
export function randomSerial(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[0] &= 0x7f;
  bytes[0] |= 0x01;
  return [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
}
