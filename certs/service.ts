/**
 * The CA service (upstream's IstioCertificateService, reference §6) on the control plane's port: a node asks
 * for a certificate for one identity with a CSR and a lifetime; the node-scoped decision (certs/node_auth.ts)
 * says whether a workload with that identity runs on the caller's node; the CA signs for the identity it
 * authorized (never the CSR's SANs). The caller learns only that it was refused (upstream's opaque
 * "request impersonation authentication failure"); the log gets the reason. Counters carry istiod's names.
 *
 * @module
 */

import client from "prom-client";
import { type CertificateAuthority, MAX_TTL_MS } from "./ca.ts";
import { authorizeNodeIdentity, type NodeRegistryView } from "./node_auth.ts";
import { certificatesToPem } from "./x509.ts";
import { SpiffeId } from "../mesh/identity.ts";
import { readBody } from "../mesh/http.ts";
import type { Logger } from "../mesh/log.ts";
import type { CertificateResponse } from "../mesh/protocol/config_stream.ts";
import { checkInt, Fields, ValidationError } from "../mesh/validate.ts";

/** What a refused caller is told, whatever the reason. */
export const REFUSAL = "request impersonation authentication failure";
/** Largest CSR accepted. */
const MAX_BODY = 64 * 1024;

/** istiod's CA counters. */
export class CaMetrics {
  readonly csrs: client.Counter;
  readonly issued: client.Counter;
  readonly refused: client.Counter;
  readonly authFailures: client.Counter;

  constructor(registry: client.Registry) {
    const counter = (name: string, help: string) => new client.Counter({ name, help, registers: [registry] });
    this.csrs = counter("citadel_server_csr_count", "The number of CSRs received by the CA service.");
    this.issued = counter("citadel_server_success_cert_issuance_count", "The number of certificates issued.");
    this.refused = counter(
      "citadel_server_csr_sign_error_count",
      "The number of certificate requests refused or failed (the node may not hold the identity, bad CSR).",
    );
    this.authFailures = counter(
      "citadel_server_authentication_failure_count",
      "The number of requests refused for their node token.",
    );
  }
}

/** Serves certificate requests for authenticated nodes. */
export class CaService {
  readonly #ca: () => CertificateAuthority;
  readonly #registry: NodeRegistryView;
  readonly #trustDomain: string;
  readonly #log: Logger;
  readonly #metrics: CaMetrics;

  constructor(opts: {
    ca: () => CertificateAuthority;
    registry: NodeRegistryView;
    trustDomain: string;
    log: Logger;
    metrics: CaMetrics;
  }) {
    this.#ca = opts.ca;
    this.#registry = opts.registry;
    this.#trustDomain = opts.trustDomain;
    this.#log = opts.log;
    this.#metrics = opts.metrics;
  }

  /** Counts a request refused for its token (on any endpoint, as istiod counts them). */
  countAuthFailure(): void {
    this.#metrics.authFailures.inc();
  }

  /** Answers one request from node `node`. */
  async handle(node: string, request: Request): Promise<Response> {
    this.#metrics.csrs.inc();
    let ask: { csr: string; identity: SpiffeId; ttlSeconds: number };
    try {
      const text = await readBody(request, MAX_BODY);
      let body: unknown;
      try {
        body = JSON.parse(text);
      } catch {
        throw new ValidationError("request", "is not JSON");
      }
      const f = Fields.of(body, "");
      ask = {
        csr: f.string("csr", { nonEmpty: true, max: MAX_BODY }),
        identity: SpiffeId.parse(f.string("identity", { nonEmpty: true }), "identity"),
        ttlSeconds: checkInt(f.raw("ttlSeconds") ?? 0, "ttlSeconds", 0, MAX_TTL_MS / 1000),
      };
      f.done();
    } catch (error) {
      this.#metrics.refused.inc();
      const message = error instanceof ValidationError ? error.message : String(error);
      this.#log.warn({ node, error: message }, "certificate request malformed");
      return Response.json({ error: `bad request: ${message}` }, { status: 400 });
    }
    const decision = authorizeNodeIdentity(node, ask.identity, this.#trustDomain, this.#registry);
    if (!decision.allowed) {
      this.#metrics.refused.inc();
      this.#log.warn({ node, identity: ask.identity.toString(), reason: decision.reason }, "certificate refused");
      return Response.json({ error: REFUSAL }, { status: 403 });
    }
    try {
      const issued = await this.#ca().sign({ csrPem: ask.csr, identity: ask.identity, ttlMs: ask.ttlSeconds * 1000 });
      this.#metrics.issued.inc();
      const leaf = issued.chain[0];
      this.#log.info(
        { node, identity: ask.identity.toString(), serial: leaf.serialNumber, notAfter: leaf.notAfter.toISOString() },
        "certificate issued",
      );
      const answer: CertificateResponse = {
        chain: certificatesToPem(issued.chain),
        roots: certificatesToPem(issued.roots),
      };
      return Response.json(answer);
    } catch (error) {
      this.#metrics.refused.inc();
      this.#log.warn(
        { node, identity: ask.identity.toString(), error: (error as Error).message },
        "certificate not signed",
      );
      return Response.json({ error: `cannot sign: ${(error as Error).message}` }, { status: 400 });
    }
  }
}
