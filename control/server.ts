/**
 * The control plane's listeners. 15012, HTTPS with a certificate from the mesh CA (server-authenticated only,
 * as istiod's; nodes prove themselves with a bearer node token):
 *
 * | method and path       | what                                                                     |
 * | --------------------- | ------------------------------------------------------------------------ |
 * | `POST /v1/stream`     | the config stream (mesh/protocol/config_stream.ts)                       |
 * | `POST /v1/node-pods`  | the token's node's pods, for its node agent (mesh/protocol/node_pods.ts) |
 * | `POST /v1/certificates` | the CA service (certs/service.ts)                                      |
 * | `PUT /v1/registrations` | a node agent's pods, replacing its earlier report (control/reports.ts) |
 * | `POST /v1/tokenreview` | whether a node token is valid, and whose (for `skiff ca serve`)          |
 *
 * Both streams are NDJSON with a ping every `PING_INTERVAL_MS`, at which the token is checked again: a token
 * revoked or expired meanwhile ends the stream.
 *
 * A missing, wrong, expired or revoked token is a 401 with a JSON `error` saying which, and a log line naming
 * the node when the token names one. A pod of a node agent's report that does not stay on its node (another
 * node's pod, an address not its own; control/reports.ts) is refused and the report's other pods are taken: a 403
 * naming each refused pod and why, and a log line naming the node.
 *
 * 15014 (istiod's monitoring port), plain HTTP: `/metrics`, `/ready`, and `/status` with every manifest problem
 * (`file:line: field: message`) and every note of the last build.
 *
 * @module
 */

import client from "prom-client";
import { readBody } from "../mesh/http.ts";
import type { Logger } from "../mesh/log.ts";
import {
  CERTIFICATES_PATH,
  PARTS_HEADER,
  PING_INTERVAL_MS,
  REGISTRATIONS_PATH,
  STREAM_PATH,
  TOKEN_REVIEW_PATH,
} from "../mesh/protocol/config_stream.ts";
import { NODE_PODS_PATH, type NodePodsView } from "../mesh/protocol/node_pods.ts";
import { checkString, Fields, ValidationError } from "../mesh/validate.ts";
import type { CaService } from "../certs/service.ts";
import type { ControlPlane } from "./plane.ts";
import { formatProblem } from "./sources/manifests.ts";
import { ReportError } from "./reports.ts";
import { decodeRegistrationReport } from "./sources/registrations.ts";
import type { TokenVerifier } from "./tokens.ts";

/** Largest request body read (a stream request carries every version a client knows). */
const MAX_BODY = 64 * 1024 * 1024;

/** What the listeners serve from. */
export interface ServerDeps {
  plane: ControlPlane;
  tokens: TokenVerifier;
  ca: CaService;
  registry: client.Registry;
  log: Logger;
  /** Current TLS credentials of 15012. */
  tls: { cert: string; key: string };
}

/** istiod-named stream counters. */
export class StreamMetrics {
  readonly clients: client.Gauge;
  readonly pushes: client.Counter;
  constructor(registry: client.Registry) {
    this.clients = new client.Gauge({
      name: "pilot_xds",
      help: "Number of clients connected to the config and node-pods streams.",
      registers: [registry],
    });
    this.pushes = new client.Counter({
      name: "pilot_xds_pushes",
      help: "Stream messages sent, by type (snapshot, delta, pods, ping).",
      labelNames: ["type"],
      registers: [registry],
    });
  }
}

const json = (status: number, body: unknown) => Response.json(body, { status });
const badRequest = (error: unknown) => json(400, { error: `bad request: ${(error as Error).message}` });
const encoder = new TextEncoder();
const PING = encoder.encode('{"type":"ping"}\n');

/** One open stream: whose, and how it begins. */
interface StreamSpec {
  /** What the log calls it. */
  name: string;
  node: string;
  token: string;
  /** Sends the first message and subscribes to the changes; returns the unsubscribe. */
  start: (send: (line: Uint8Array, type: string) => void) => () => void;
}

/** Serves 15012 and 15014 until `signal` aborts. */
export function serveControl(
  deps: ServerDeps,
  addrs: { hostname: string; port: number; monitoringHostname: string; monitoringPort: number },
  signal: AbortSignal,
): { api: Deno.HttpServer<Deno.NetAddr>; monitoring: Deno.HttpServer<Deno.NetAddr>; finished: Promise<void> } {
  const { log } = deps;
  const metrics = new StreamMetrics(deps.registry);
  const authenticate = async (req: Request): Promise<{ node: string; token: string } | Response> => {
    const header = req.headers.get("authorization") ?? "";
    const token = /^Bearer\s+(\S+)$/i.exec(header)?.[1];
    const result = await deps.tokens.check(token);
    if ("refused" in result) {
      deps.ca.countAuthFailure();
      log.warn({ node: result.node, path: new URL(req.url).pathname, reason: result.refused }, "request refused: 401");
      return json(401, { error: result.refused });
    }
    return { node: result.node, token: token! };
  };

  const api = Deno.serve({
    hostname: addrs.hostname,
    port: addrs.port,
    cert: deps.tls.cert,
    key: deps.tls.key,
    signal,
    onListen: (a) =>
      log.info({ address: `${a.hostname}:${a.port}` }, "listener established: config stream and CA (HTTPS)"),
  }, async (req) => {
    const path = new URL(req.url).pathname;
    const route = `${req.method} ${path}`;
    const routes = [
      `POST ${STREAM_PATH}`,
      `POST ${NODE_PODS_PATH}`,
      `POST ${CERTIFICATES_PATH}`,
      `PUT ${REGISTRATIONS_PATH}`,
      `POST ${TOKEN_REVIEW_PATH}`,
    ];
    if (!routes.includes(route)) {
      return json(404, { error: `no such endpoint: ${route}` });
    }
    const auth = await authenticate(req);
    if (auth instanceof Response) return auth;
    if (path === CERTIFICATES_PATH) return deps.ca.handle(auth.node, req);
    let body: unknown;
    try {
      const text = await readBody(req, MAX_BODY);
      body = text === "" ? {} : JSON.parse(text);
    } catch (error) {
      return badRequest(error);
    }
    if (path === TOKEN_REVIEW_PATH) {
      // As Kubernetes' TokenReview: a standalone CA asks whether a caller's token is good, and for which node.
      const token = typeof (body as { token?: unknown }).token === "string" ? (body as { token: string }).token : "";
      const review = await deps.tokens.check(token);
      return json(
        200,
        "refused" in review ? { authenticated: false, error: review.refused } : {
          authenticated: true,
          node: review.node,
        },
      );
    }
    if (path === REGISTRATIONS_PATH) {
      try {
        const pods = decodeRegistrationReport(body, auth.node);
        deps.plane.register(auth.node, pods);
        log.info({ node: auth.node, pods: pods.length }, "registrations replaced");
        return json(200, { accepted: pods.length });
      } catch (error) {
        if (error instanceof ReportError) {
          // A node speaking for another node's pods or addresses: those pods refused, and said so on both sides.
          log.warn(
            { node: auth.node, error: error.message, refused: error.refused.length, accepted: error.accepted },
            "registrations refused",
          );
          return json(403, {
            error: error.message,
            accepted: error.accepted,
            refused: error.refused.map((r) => ({
              namespace: r.pod.namespace,
              name: r.pod.name,
              problems: r.problems,
            })),
          });
        }
        if (!(error instanceof ValidationError)) throw error;
        log.warn({ node: auth.node, error: error.message }, "registrations refused");
        return badRequest(error);
      }
    }
    if (path === NODE_PODS_PATH) {
      try {
        Fields.of(body, "").done(); // nothing to ask: the token says which node this is
      } catch (error) {
        return badRequest(error);
      }
      return nodePods(auth.node, auth.token);
    }
    let known: Record<string, string>;
    try {
      const f = Fields.of(body, "");
      known = f.record("known", (v, p) => checkString(v, p, { max: 128 }));
      f.optionalString("node"); // informational: the token says which node this is
      f.done();
    } catch (error) {
      return badRequest(error);
    }
    return configStream(auth.node, auth.token, known, req.headers.get(PARTS_HEADER) === "1");
  });

  const configStream = (node: string, token: string, known: Record<string, string>, parts: boolean): Response =>
    openStream({
      name: "config stream",
      node,
      token,
      start: (send) => {
        const snap = deps.plane.publisher.snapshot(known, parts);
        for (const line of snap.lines) send(line, "snapshot");
        log.info({
          node,
          version: deps.plane.publisher.version,
          sent: snap.sent,
          removed: snap.removed,
          unchanged: snap.unchanged,
          parts: snap.lines.length,
        }, "client subscribed");
        return deps.plane.publisher.subscribe((_d, line) => send(line, "delta"));
      },
    });

  const nodePods = (node: string, token: string): Response =>
    openStream({
      name: "node-pods stream",
      node,
      token,
      start: (send) => {
        const line = (view: NodePodsView) => encoder.encode(`${JSON.stringify({ type: "pods", ...view })}\n`);
        const view = deps.plane.nodeView(node);
        send(line(view), "pods");
        log.info({ node, version: view.version, pods: view.pods.length }, "node agent subscribed to its node's pods");
        return deps.plane.subscribeNode(node, (v) => send(line(v), "pods"));
      },
    });

  /** The plumbing both streams share: NDJSON, pings with the token checked again, the end on shutdown. */
  const openStream = (o: StreamSpec): Response => {
    let cleanup = () => {};
    const body = new ReadableStream<Uint8Array>({
      start: (controller) => {
        const send = (line: Uint8Array, type: string) => {
          try {
            controller.enqueue(line);
            metrics.pushes.labels(type).inc();
          } catch {
            cleanup();
          }
        };
        const close = () => {
          cleanup();
          try {
            controller.close();
          } catch { /* already closed */ }
        };
        const unsubscribe = o.start(send);
        metrics.clients.inc();
        const ping = setInterval(async () => {
          // A revoked or expired token ends the stream at the next ping.
          const still = await deps.tokens.check(o.token);
          if ("refused" in still) {
            log.warn({ node: o.node, reason: still.refused }, `closing the ${o.name}`);
            close();
            return;
          }
          send(PING, "ping");
        }, PING_INTERVAL_MS);
        let done = false;
        cleanup = () => {
          if (done) return;
          done = true;
          clearInterval(ping);
          unsubscribe();
          signal.removeEventListener("abort", close);
          metrics.clients.dec();
          log.info({ node: o.node, stream: o.name }, "client left");
        };
        signal.addEventListener("abort", close, { once: true });
      },
      cancel: () => cleanup(),
    });
    return new Response(body, { headers: { "content-type": "application/x-ndjson", "cache-control": "no-store" } });
  };

  const monitoring = Deno.serve({
    hostname: addrs.monitoringHostname,
    port: addrs.monitoringPort,
    signal,
    onListen: (a) => log.info({ address: `${a.hostname}:${a.port}` }, "listener established: monitoring"),
  }, async (req) => {
    const path = new URL(req.url).pathname;
    if (path === "/metrics") {
      return new Response(await deps.registry.metrics(), { headers: { "content-type": deps.registry.contentType } });
    }
    if (path === "/ready") return new Response("ready\n");
    if (path === "/status") {
      const { problems, notes } = deps.plane.status();
      return json(200, {
        version: deps.plane.publisher.version,
        resources: deps.plane.publisher.size,
        subscribers: deps.plane.publisher.subscribers,
        memory: Deno.memoryUsage(),
        problems: problems.map((p) => ({ ...p, text: formatProblem(p) })),
        notes,
      });
    }
    return json(404, { error: `no such endpoint: ${path} (try /metrics, /ready, /status)` });
  });

  return {
    api,
    monitoring,
    finished: Promise.all([api.finished, monitoring.finished]).then(() => {}),
  };
}
