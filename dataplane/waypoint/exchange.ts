/**
 * One HTTP request through the waypoint, whatever protocol carried it: L7 authorization (the policies attached
 * to this waypoint's Gateway and to the destination Service), then routing (the HTTPRoutes whose parent is the
 * destination Service; with none, the Service itself), then the forward to an endpoint with the rule's timeouts
 * and retries. The protocol adapters (`http1.ts`, `http2.ts`) turn bytes into an {@link Exchange} and write back
 * what this returns.
 *
 * Order and answers follow Envoy's, since users read them in their logs: a denial is `403 RBAC: access denied`
 * before anything is routed; no matching rule is `404` (`NR`); a rule whose backend cannot be resolved is `500`
 * (Gateway API); no endpoint is `503 no healthy upstream` (`UH`); endpoints that cannot be reached are
 * `503 upstream connect error…` (`UF`, with `URX` when retries ran out); a timeout before the response is
 * `504 upstream request timeout` (`UT`).
 *
 * Retries: connect failures are retried twice by default, on another endpoint when there is one (Istio's
 * default retry policy retries them too); an HTTPRoute's `retry` sets the attempts and the 5xx codes that are
 * retried. A response code can only be retried when the request body could be replayed: bodies up to
 * {@link REPLAY_LIMIT} bytes are held for that when the rule retries on codes; a larger body is sent once.
 *
 * A request body the codec refuses after the head went on (a bad chunk, DATA beyond content-length, malformed
 * trailers) ends the attempt at once, wherever it is (still reaching the endpoint, or waiting for its answer): the
 * endpoint's stream or connection is reset and the client is answered `400` (`DPE`), so that no client can hold
 * an endpoint waiting for the rest of a body that will never come.
 *
 * @module
 */

import { Readable } from "node:stream";
import { authorizeRequest } from "./authz.ts";
import { applyHeaderModifier, pickBackend, selectRule } from "./routing.ts";
import type { WaypointDrain } from "./drain.ts";
import type { Session, WaypointSelf } from "./session.ts";
import type { WaypointMetrics } from "./telemetry.ts";
import { type Balancer, ConnectFailure, type Endpoint, type Tunnels } from "./upstream.ts";
import type { ResponseFlags } from "../proxy/flags.ts";
import { workloadIdentity } from "../proxy/identity.ts";
import type { HeaderModifier, L7Policy, RouteRule } from "../../mesh/l7.ts";
import { sleep } from "../../mesh/abort.ts";
import type { SpiffeId } from "../../mesh/identity.ts";
import type { Logger } from "../../mesh/log.ts";
import type { ConnectionFacts } from "../../mesh/metrics.ts";
import type { MeshState } from "../../mesh/store.ts";
import { type Service, serviceKey } from "../../mesh/workload.ts";

/** Retries of a connect failure when no route says otherwise. */
export const DEFAULT_CONNECT_RETRIES = 2;
/** The largest request body held for replaying on a retried response code. */
export const REPLAY_LIMIT = 64 * 1024;
/** Between attempts, when the route does not say. */
export const DEFAULT_BACKOFF_MS = 25;

/** What the waypoint's request handling needs. */
export interface WaypointContext {
  self: WaypointSelf;
  state: () => MeshState;
  balancer: Balancer;
  tunnels: Tunnels;
  metrics: WaypointMetrics;
  log: Logger;
  access: Logger;
  random: () => number;
  /** Counts requests in flight and tells the adapters when the waypoint drains (`drain.ts`). */
  drain?: WaypointDrain;
}

/** A header list: lowercase names, in order, repeats kept. */
export type Headers = [string, string][];

/** A request as the adapters hand it over. */
export interface Exchange {
  method: string;
  /** Normalized path, no query: what policies and routes see and what is forwarded. */
  path: string;
  /** The raw query, without `?`; empty when none. */
  query: string;
  /** Normalized host (lowercase, no port). */
  host: string;
  /** The authority as the client sent it (Host or `:authority`). */
  authority: string;
  /** Headers without pseudo-headers and hop-by-hop ones. */
  headers: Headers;
  /** The body, or null when the request has none. */
  body: Readable | null;
  /** The request's trailers, once its body has ended (HTTP/2 trailers, or a chunked body's trailer section). */
  trailers?: () => Headers | undefined;
  /** Aborts when the client goes away (a reset stream, a closed connection) before its answer is complete. */
  cancelled?: AbortSignal;
  grpc: boolean;
}

/** A request as sent to an endpoint. */
export interface UpstreamRequest {
  method: string;
  authority: string;
  /** Path and query. */
  target: string;
  headers: Headers;
  body: Readable | null;
  /** The request's trailers, once `body` has ended: forwarded when the next hop can carry them. */
  trailers?: () => Headers | undefined;
}

/** An endpoint's answer. */
export interface UpstreamResponse {
  status: number;
  headers: Headers;
  /** The body, or null when the response has none. */
  body: Readable | null;
  /** Trailers, once the body has ended. */
  trailers(): Headers | undefined;
  /** Drops the response (a retried attempt): the body is not read. */
  discard(): void;
}

/** Sends one attempt; rejects with {@link ConnectFailure} when the endpoint cannot be reached. */
export interface Upstream {
  send(endpoint: Endpoint, request: UpstreamRequest, signal: AbortSignal): Promise<UpstreamResponse>;
}

/** The upstream for a backend whose port declares `appProtocol` (`protocol.ts` decides which). */
export type UpstreamChooser = (appProtocol: string | undefined) => Upstream;

/** What to answer. */
export type Answer =
  | { kind: "local"; status: number; body: string; headers: Headers }
  | { kind: "upstream"; response: UpstreamResponse; endpoint: Endpoint }
  /** The client went away before an answer: nothing is written; recorded as Envoy does, `0` with `DC`. */
  | { kind: "cancelled" };

/** The outcome of an exchange, for the adapter to write and telemetry to record. */
export interface Handled {
  answer: Answer;
  flags: ResponseFlags;
  attempts: number;
  facts: ConnectionFacts;
  route?: string;
  service?: Service;
  /** The port of `service` the request went to. */
  servicePort?: number;
  /** Applied by the adapter to the endpoint's response headers. */
  responseHeaders?: HeaderModifier;
  /** Aborts when the rule's request timeout runs out; the adapter then stops the response. */
  deadline: AbortSignal;
  /** Clears the timers. */
  done(): void;
}

const local = (status: number, body: string, extra: Headers = []): Answer => ({
  kind: "local",
  status,
  body,
  headers: [["content-type", "text/plain"], ...extra],
});

/** The L7 policies that apply to a session's destination. */
export function policiesFor(session: Session, ctx: WaypointContext): L7Policy[] {
  const state = ctx.state();
  const out = state.l7Policies.forTarget("Gateway", ctx.self.namespace, ctx.self.name);
  if (session.destination.kind === "service") {
    const s = session.destination.service;
    out.push(...state.l7Policies.forTarget("Service", s.namespace, s.name));
  }
  return out;
}

/** What telemetry knows of a session before an endpoint is chosen. */
export function sessionFacts(session: Session): ConnectionFacts {
  const dest = session.destination;
  return {
    reporter: "waypoint",
    source: session.peer.workload,
    sourceIdentity: session.peer.identity,
    service: dest.kind === "service" ? dest.service : undefined,
    destination: dest.kind === "workload" ? dest.workload : undefined,
    mtls: true,
  };
}

/** The attributes policies read that come from the tunnel rather than the request. */
export function peerAttributes(session: Session) {
  const dest = session.destination;
  const identity = session.peer.identity;
  return {
    port: dest.port,
    sourcePrincipal: identity.toString().replace(/^spiffe:\/\//, ""),
    sourceNamespace: identity.namespace,
    sourceIp: session.peer.ip,
    remoteIp: session.peer.ip,
    destinationIp: dest.kind === "service" ? dest.vip : dest.ip,
  };
}

/**
 * `headers` with `x-forwarded-client-cert` set from what the tunnel proved, as Envoy's SANITIZE_SET does: every
 * value the client sent is dropped, whatever its spelling or number, and one is written in Envoy's XFCC syntax
 * with `By` = this waypoint's identity and `URI` = the verified peer's, the value Istio's waypoint synthesizes
 * (`By=%FILTER_STATE(io.istio.local_principal)%;URI=%FILTER_STATE(io.istio.peer_principal)%`). A forged
 * certificate header must never reach a backend that trusts it. SPIFFE IDs hold none of `,;="`, so no quoting.
 */
export function withClientCert(headers: Headers, self: SpiffeId, peer: SpiffeId): Headers {
  const out = headers.filter(([n]) => n !== "x-forwarded-client-cert");
  out.push(["x-forwarded-client-cert", `By=${self};URI=${peer}`]);
  return out;
}

/** The client's request body failed (the codec refused it, or the client went away) while it was being sent. */
export class RequestBodyError extends Error {
  constructor(cause: unknown) {
    super(`request body refused: ${cause instanceof Error ? cause.message : String(cause)}`, { cause });
    this.name = "RequestBodyError";
  }
}

/** The parts of a request the plan reads. */
export type PlanRequest = Pick<Exchange, "method" | "path" | "query" | "host" | "headers">;

/**
 * What to do with one request, decided without I/O ({@link planExchange}): answer locally (denied, no route, no
 * backend), or forward to a fixed endpoint (a workload destination) or to an endpoint of a backend service, which
 * the balancer picks per attempt (round robin, ejection and retries are state, so they stay with the I/O).
 */
export type ExchangePlan =
  & { dryRun: { policy: string; wouldAllow: boolean }[] }
  & (
    | {
      kind: "answer";
      status: number;
      message: string;
      flags: ResponseFlags;
      route?: string;
      log?: { level: "debug" | "warn"; fields: Record<string, unknown>; message: string };
    }
    | {
      kind: "forward";
      rule?: RouteRule;
      route?: string;
      backend: { kind: "endpoint"; endpoint: Endpoint } | { kind: "service"; service: Service; port: number };
      /** The service port the request goes to (the backend's when a route chose one). */
      servicePort: number;
      /** The backend port's declared protocol, which picks the upstream codec. */
      appProtocol?: string;
    }
  );

/**
 * Authorizes and routes one request: the L7 policies (dry-run ones only reported), then for a service
 * destination the route rule (only routes with a parent on this very port; a port no route attaches to routes to
 * itself) and its weighted backend. Pure: `random` is the only input beside its arguments.
 */
export function planExchange(
  session: Session,
  x: PlanRequest,
  policies: readonly L7Policy[],
  state: MeshState,
  random: () => number,
): ExchangePlan {
  const dest = session.destination;
  let dryRun: ExchangePlan["dryRun"] = [];
  if (policies.length > 0) {
    const decision = authorizeRequest(policies, {
      ...peerAttributes(session),
      method: x.method,
      path: x.path,
      host: x.host,
      headers: x.headers,
    });
    dryRun = decision.dryRun;
    if (!decision.allowed) {
      const fields = { policy: decision.policy, path: x.path, method: x.method };
      const log = { level: "debug" as const, fields, message: "request denied" };
      return { dryRun, kind: "answer", status: 403, message: "RBAC: access denied", flags: "RBAC", log };
    }
  }
  if (dest.kind === "workload") {
    const w = dest.workload;
    const endpoint: Endpoint = { workload: w, ip: dest.ip, port: dest.port, hbone: w.tunnelProtocol === "HBONE" };
    return {
      dryRun,
      kind: "forward",
      backend: { kind: "endpoint", endpoint },
      servicePort: dest.port,
      appProtocol: dest.appProtocol,
    };
  }
  const key = serviceKey(dest.service);
  const routes = state.routes.forService(key).filter((r) =>
    r.parents.some((p) => p.service === key && (p.port === undefined || p.port === dest.port))
  );
  let rule: RouteRule | undefined;
  let route: string | undefined;
  let service = dest.service;
  let port = dest.port;
  if (routes.length > 0) {
    const selected = selectRule(
      routes,
      { method: x.method, path: x.path, query: x.query, headers: x.headers },
      dest.port,
      key,
    );
    if (!selected) return { dryRun, kind: "answer", status: 404, message: "route not found", flags: "NR" };
    rule = selected.rule;
    route = `${selected.route.namespace}/${selected.route.name}`;
    const backend = pickBackend(rule, random);
    if (!backend) {
      return { dryRun, kind: "answer", status: 500, message: "no backend for this route", flags: "NR", route };
    }
    const svc = backend.problem ? undefined : state.services.byKey(backend.service);
    if (!svc) {
      const fields = { route, backend: backend.service, problem: backend.problem };
      const log = { level: "warn" as const, fields, message: "route backend not found" };
      return { dryRun, kind: "answer", status: 500, message: "route backend not found", flags: "NR", route, log };
    }
    service = svc;
    port = backend.port;
  }
  return {
    dryRun,
    kind: "forward",
    rule,
    route,
    backend: { kind: "service", service, port },
    servicePort: port,
    appProtocol: service.ports.find((p) => p.port === port)?.appProtocol,
  };
}

/**
 * Authorizes, routes and forwards one request. `upstream` is the one to use, or picks one by the backend port's
 * declared protocol (the port the chosen route's backend names, else the destination's).
 */
export async function handleExchange(
  session: Session,
  x: Exchange,
  upstream: Upstream | UpstreamChooser,
  ctx: WaypointContext,
): Promise<Handled> {
  // Before policies read the headers: Envoy sanitizes XFCC as the request arrives, before any filter runs.
  // Trailers too: a backend that merges a trailer section into its headers (as some HTTP/1.1 servers can be set to)
  // must not read a forged certificate there either.
  const clientTrailers = x.trailers;
  x = {
    ...x,
    headers: withClientCert(x.headers, ctx.self.identity, session.peer.identity),
    trailers: clientTrailers && (() => clientTrailers()?.filter(([n]) => n !== "x-forwarded-client-cert")),
  };
  const facts = sessionFacts(session);
  const deadline = new AbortController();
  const timers: ReturnType<typeof setTimeout>[] = [];
  const base = { attempts: 0, facts, deadline: deadline.signal, done: () => timers.forEach(clearTimeout) };

  const state = ctx.state();
  const plan = planExchange(session, x, policiesFor(session, ctx), state, ctx.random);
  for (const d of plan.dryRun) {
    ctx.log.info({ policy: d.policy, wouldAllow: d.wouldAllow, path: x.path }, "dry-run policy evaluated");
  }
  if (plan.kind === "answer") {
    if (plan.log) ctx.log[plan.log.level](plan.log.fields, plan.log.message);
    const answer = { ...base, answer: local(plan.status, plan.message), flags: plan.flags };
    return plan.route === undefined ? answer : { ...answer, route: plan.route };
  }
  const { rule, route: routeName, servicePort, appProtocol, backend } = plan;
  let endpointFor: (tried: ReadonlySet<string>) => Endpoint | undefined;
  if (backend.kind === "endpoint") {
    endpointFor = () => backend.endpoint;
  } else {
    facts.service = backend.service;
    endpointFor = (tried) => ctx.balancer.pick(state, backend.service, backend.port, ctx.self, tried);
  }

  const headers = applyHeaderModifier([...x.headers], rule?.requestHeaders);
  if (!headers.some(([n]) => n === "x-request-id")) headers.push(["x-request-id", crypto.randomUUID()]);
  const retry = rule?.retry;
  const retries = retry ? retry.attempts : DEFAULT_CONNECT_RETRIES;
  const codes = new Set(retry?.codes ?? []);
  const backoff = retry?.backoffMs ?? DEFAULT_BACKOFF_MS;
  let body: { replay: Uint8Array } | { stream: Readable } | null = x.body ? { stream: x.body } : null;
  const refused = () => ({ ...base, route: routeName, answer: local(400, "Bad Request"), flags: "DPE" as const });
  if (x.body && codes.size > 0 && retries > 0) {
    try {
      body = await holdForReplay(x.body);
    } catch {
      return refused();
    }
  }

  if (rule?.timeoutMs) timers.push(setTimeout(() => deadline.abort(new Error("request timeout")), rule.timeoutMs));
  const tried = new Set<string>();
  const via = typeof upstream === "function" ? upstream(appProtocol) : upstream;
  const cancelled = () => ({
    ...base,
    ...extra,
    attempts: sent,
    answer: { kind: "cancelled" as const },
    flags: "DC" as const,
  });
  let sent = 0;
  const extra = { route: routeName, service: facts.service, servicePort, responseHeaders: rule?.responseHeaders };
  let lastFailure = "";
  for (let attempt = 0; attempt <= retries; attempt++) {
    if (attempt > 0) await sleep(backoff * attempt, deadline.signal);
    if (x.cancelled?.aborted) return cancelled();
    if (deadline.signal.aborted) break;
    const endpoint = endpointFor(tried);
    if (!endpoint) {
      return { ...base, ...extra, attempts: attempt, answer: local(503, "no healthy upstream"), flags: "UH" };
    }
    tried.add(`${endpoint.ip}:${endpoint.port}`);
    facts.destination = endpoint.workload;
    facts.destinationIdentity = endpoint.hbone ? workloadIdentity(endpoint.workload) : undefined;
    const tryAbort = new AbortController();
    const onDeadline = () => tryAbort.abort(deadline.signal.reason);
    deadline.signal.addEventListener("abort", onDeadline, { once: true });
    // The client gone: the attempt is cancelled too, so that the endpoint stops working for nobody.
    const onCancel = () => tryAbort.abort(new Error("downstream went away"));
    x.cancelled?.addEventListener("abort", onCancel, { once: true });
    // On before the send's first await: a body refused while the endpoint is still being reached (before the
    // upstream's own listener is on) must end the attempt too, or the endpoint waits for the rest of it.
    const onBodyError = (error: Error) => tryAbort.abort(new RequestBodyError(error));
    const watched = body !== null && "stream" in body ? x.body : null;
    if (watched?.errored) onBodyError(watched.errored);
    else watched?.once("error", onBodyError);
    const tryTimer = rule?.backendTimeoutMs
      ? setTimeout(() => tryAbort.abort(new Error("backend request timeout")), rule.backendTimeoutMs)
      : undefined;
    try {
      const requestBody = body === null ? null : "replay" in body ? Readable.from([body.replay]) : body.stream;
      sent++;
      const response = await via.send(endpoint, {
        method: x.method,
        authority: x.authority,
        target: x.query ? `${x.path}?${x.query}` : x.path,
        headers,
        body: requestBody,
        trailers: x.trailers,
      }, tryAbort.signal);
      if (x.cancelled?.aborted) {
        response.discard();
        return cancelled();
      }
      const replayable = body === null || "replay" in body;
      if (codes.has(response.status) && attempt < retries && replayable) {
        response.discard();
        lastFailure = `status ${response.status}`;
        continue;
      }
      return {
        ...base,
        ...extra,
        attempts: attempt + 1,
        answer: { kind: "upstream", response, endpoint },
        flags: "-",
      };
    } catch (error) {
      if (x.cancelled?.aborted) return cancelled();
      if (x.body?.errored || tryAbort.signal.reason instanceof RequestBodyError) {
        ctx.log.info({ path: x.path, error: String(x.body?.errored ?? error) }, "request body refused");
        return { ...refused(), ...extra, attempts: attempt + 1 };
      }
      if (tryAbort.signal.aborted) {
        // A try that timed out is retried only when the route asks for retries (Istio's default policy does not
        // retry per-try timeouts), and never when its body has gone and cannot be sent again.
        const bodyGone = body !== null && "stream" in body && body.stream.readableDidRead;
        if (deadline.signal.aborted || attempt >= retries || !retry || bodyGone) {
          return {
            ...base,
            ...extra,
            attempts: attempt + 1,
            answer: local(504, "upstream request timeout"),
            flags: "UT",
          };
        }
        lastFailure = "backend request timeout";
        continue;
      }
      if (!(error instanceof ConnectFailure)) {
        ctx.log.debug({ endpoint: `${endpoint.ip}:${endpoint.port}`, error: String(error) }, "upstream reset");
        return {
          ...base,
          ...extra,
          attempts: attempt + 1,
          answer: local(503, "upstream connect error or disconnect/reset before headers. reset reason: remote reset"),
          flags: "UC",
        };
      }
      ctx.balancer.eject(endpoint);
      lastFailure = error.message;
      ctx.log.info(
        { endpoint: `${endpoint.ip}:${endpoint.port}`, error: error.message, attempt },
        "upstream connect failed",
      );
      if (body !== null && "stream" in body && body.stream.readableDidRead) break; // the body went nowhere; cannot resend
    } finally {
      clearTimeout(tryTimer);
      deadline.signal.removeEventListener("abort", onDeadline);
      x.cancelled?.removeEventListener("abort", onCancel);
      watched?.off("error", onBodyError);
    }
  }
  if (deadline.signal.aborted) {
    return { ...base, ...extra, attempts: sent, answer: local(504, "upstream request timeout"), flags: "UT" };
  }
  return {
    ...base,
    ...extra,
    attempts: sent,
    answer: local(503, `upstream connect error or disconnect/reset before headers. reset reason: ${lastFailure}`),
    flags: retries > 0 ? "URX,UF" : "UF",
  };
}

/** Reads up to {@link REPLAY_LIMIT} bytes; a longer body comes back as one stream of what was read and the rest. */
async function holdForReplay(body: Readable): Promise<{ replay: Uint8Array } | { stream: Readable }> {
  const chunks: Uint8Array[] = [];
  let size = 0;
  const it = body[Symbol.asyncIterator]();
  for (;;) {
    const next = await it.next();
    if (next.done) break;
    const chunk = next.value as Uint8Array;
    chunks.push(chunk);
    size += chunk.byteLength;
    if (size > REPLAY_LIMIT) {
      const rest = async function* () {
        yield* chunks;
        for (;;) {
          const n = await it.next();
          if (n.done) return;
          yield n.value as Uint8Array;
        }
      };
      return { stream: Readable.from(rest(), { objectMode: false }) };
    }
  }
  const out = new Uint8Array(size);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.byteLength;
  }
  return { replay: out };
}
