/**
 * `skiff ca serve`: the CA service on its own, apart from the control plane, for operators who keep the signing
 * key on a separate machine. It answers `POST /v1/certificates` exactly as the control plane does
 * (certs/service.ts), and learns what it needs from the control plane, as a client with its own node token:
 *
 * - which workloads run on which node, from the config stream (kept while the control plane is away, so
 *   renewals go on);
 * - whether a caller's token is valid and for which node, from the control plane's token review
 *   (`POST /v1/tokenreview`, as istiod asks Kubernetes' TokenReview). Answers are kept for
 *   {@link REVIEW_CACHE_MS}; with the control plane unreachable, a token reviewed good before stays good that
 *   long and no longer.
 *
 * Its HTTPS certificate comes from its own CA directory, so clients that trust the mesh root trust it.
 *
 * @module
 */

import client from "prom-client";
import { ClientConfig, type ControlConnection, ControlError, runConfigClient } from "../mesh/control_client.ts";
import type { Logger } from "../mesh/log.ts";
import { CERTIFICATES_PATH, TOKEN_REVIEW_PATH } from "../mesh/protocol/config_stream.ts";
import type { CertificateAuthority } from "./ca.ts";
import { CaMetrics, CaService } from "./service.ts";
import { certificatesToPem } from "./x509.ts";

/** How long a token review is trusted. */
export const REVIEW_CACHE_MS = 10_000;

/** Options of {@link serveCa}. */
export interface CaServeOptions {
  ca: CertificateAuthority;
  control: ControlConnection;
  trustDomain: string;
  hostname: string;
  port: number;
  /** Names and addresses on the HTTPS certificate. */
  names: string[];
  log: Logger;
  signal: AbortSignal;
}

/** Runs the standalone CA until `signal` aborts. */
export async function serveCa(o: CaServeOptions): Promise<void> {
  const config = new ClientConfig(o.log);
  const streaming = runConfigClient({
    connection: o.control,
    config,
    log: o.log,
    signal: o.signal,
    onChange: () => {},
  });
  const registry = new client.Registry();
  const service = new CaService({
    ca: () => o.ca,
    registry: { onNode: (node) => config.state.workloads.onNode(node) },
    trustDomain: o.trustDomain,
    log: o.log,
    metrics: new CaMetrics(registry),
  });
  const reviews = new Map<string, { at: number; result: { node: string } | { refused: string } }>();
  const review = async (token: string): Promise<{ node: string } | { refused: string }> => {
    const cached = reviews.get(token);
    if (cached && Date.now() - cached.at < REVIEW_CACHE_MS) return cached.result;
    const response = await o.control.request("POST", TOKEN_REVIEW_PATH, { token });
    const answer = await response.json() as { authenticated: boolean; node?: string; error?: string };
    const result = answer.authenticated && answer.node ? { node: answer.node } : { refused: answer.error ?? "refused" };
    if (reviews.size > 10_000) reviews.clear();
    reviews.set(token, { at: Date.now(), result });
    return result;
  };
  const serving = await o.ca.issueServing(o.names);
  const server = Deno.serve({
    hostname: o.hostname,
    port: o.port,
    cert: certificatesToPem(serving.chain),
    key: serving.keyPem,
    signal: o.signal,
    onListen: (a) =>
      o.log.info({ address: `${a.hostname}:${a.port}`, names: o.names }, "listener established: CA (HTTPS)"),
  }, async (req) => {
    const url = new URL(req.url);
    if (url.pathname === "/metrics" && req.method === "GET") {
      return new Response(await registry.metrics(), { headers: { "content-type": registry.contentType } });
    }
    if (url.pathname !== CERTIFICATES_PATH || req.method !== "POST") {
      return Response.json({ error: `no such endpoint: ${req.method} ${url.pathname}` }, { status: 404 });
    }
    const token = /^Bearer\s+(\S+)$/i.exec(req.headers.get("authorization") ?? "")?.[1];
    if (!token) {
      service.countAuthFailure();
      return Response.json({ error: "no bearer token (Authorization: Bearer <node token>)" }, { status: 401 });
    }
    let result: { node: string } | { refused: string };
    try {
      result = await review(token);
    } catch (error) {
      const message = error instanceof ControlError ? error.message : String(error);
      o.log.warn({ error: message }, "cannot review a token with the control plane; refusing the request");
      return Response.json({ error: "the CA cannot check tokens right now; try again" }, { status: 503 });
    }
    if ("refused" in result) {
      service.countAuthFailure();
      o.log.warn({ reason: result.refused }, "request refused: 401");
      return Response.json({ error: result.refused }, { status: 401 });
    }
    return service.handle(result.node, req);
  });
  await Promise.allSettled([server.finished, streaming]);
}
