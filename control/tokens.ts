/**
 * Node tokens: how a node proves to the control plane which node it is, in place of upstream's Kubernetes
 * service-account token (bare-metal VMs have none; see the departures table in istio-ambient.md). A token is a
 * JWT (ES256, via `jose`) naming the node as its subject, with an expiry and a token id. The store keeps, per
 * node, the id of its one valid token: `node add` again replaces it, `node remove` deletes it, and either
 * revokes the old token at once, since every request is checked against the store.
 *
 * A refusal carries a reason a person can act on ("expired", "revoked"), logged on both sides; it never says
 * more than the caller already knows.
 *
 * @module
 */

import * as jose from "jose";
import type { ControlStore } from "./store.ts";

/** Issuer and audience of node tokens. */
export const TOKEN_ISSUER = "skiff-control";
/** Default token lifetime: 30 days. */
export const DEFAULT_TOKEN_TTL_MS = 30 * 24 * 3_600_000;

const SIGNING_KEY = "node-token-signing-key";

async function signingKey(store: ControlStore): Promise<{ privateKey: CryptoKey; publicKey: CryptoKey }> {
  let jwk = store.meta(SIGNING_KEY);
  if (jwk === undefined) {
    const { privateKey } = await jose.generateKeyPair("ES256", { extractable: true });
    // `node add` runs in its own process, maybe several at once: the first key stored is the one every token uses.
    jwk = store.setMetaOnce(SIGNING_KEY, JSON.stringify(await jose.exportJWK(privateKey)));
  }
  const priv = JSON.parse(jwk) as jose.JWK;
  const { d: _d, ...pub } = priv;
  return {
    privateKey: await jose.importJWK(priv, "ES256") as CryptoKey,
    publicKey: await jose.importJWK(pub, "ES256") as CryptoKey,
  };
}

/** Issues a token for node `name`, revoking any earlier one. */
export async function issueNodeToken(store: ControlStore, name: string, ttlMs = DEFAULT_TOKEN_TTL_MS): Promise<string> {
  const { privateKey } = await signingKey(store);
  const now = Date.now();
  const tokenId = crypto.randomUUID();
  const token = await new jose.SignJWT({})
    .setProtectedHeader({ alg: "ES256", typ: "JWT" })
    .setIssuer(TOKEN_ISSUER)
    .setAudience(TOKEN_ISSUER)
    .setSubject(name)
    .setJti(tokenId)
    .setIssuedAt(Math.floor(now / 1000))
    .setExpirationTime(Math.floor((now + ttlMs) / 1000))
    .sign(privateKey);
  store.putNode({ name, tokenId, expiresAt: now + ttlMs, createdAt: now });
  return token;
}

/** The outcome of checking a token. */
export type TokenCheck = { node: string } | { refused: string; node?: string };

/** Verifies a token: signature, issuer, audience, expiry, and that it is its node's current token. */
export class TokenVerifier {
  readonly #store: ControlStore;
  #key?: Promise<CryptoKey>;

  constructor(store: ControlStore) {
    this.#store = store;
  }

  /** Checks a bearer token. */
  async check(token: string | undefined): Promise<TokenCheck> {
    if (!token) return { refused: "no bearer token (Authorization: Bearer <node token>)" };
    this.#key ??= signingKey(this.#store).then((k) => k.publicKey);
    let payload: jose.JWTPayload;
    try {
      ({ payload } = await jose.jwtVerify(token, await this.#key, {
        issuer: TOKEN_ISSUER,
        audience: TOKEN_ISSUER,
        algorithms: ["ES256"],
      }));
    } catch (error) {
      if (error instanceof jose.errors.JWTExpired) {
        return {
          refused: "the node token has expired; issue a new one with skiff control node add",
          node: error.payload.sub,
        };
      }
      return { refused: "the node token is not valid for this control plane" };
    }
    const node = payload.sub ?? "";
    const record = this.#store.node(node);
    if (!record || record.tokenId !== payload.jti) {
      return { refused: `the node token of ${node} was revoked`, node };
    }
    return { node };
  }
}
