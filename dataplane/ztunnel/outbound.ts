/**
 * Outbound (15001): a connection the pod's app opened, captured by TPROXY, so the socket's local address is where
 * the app meant to go. `route.ts` decides; this module carries the decision out: an HBONE tunnel from the pool
 * (with upstream's `forwarded`, `baggage` and `traceparent` headers), plain TCP to an out-of-mesh workload or an
 * unknown address, or a refusal. Then bytes flow both ways until both sides are done, and the connection is
 * counted, logged and forgotten.
 */

import type net from "node:net";
import type { Duplex } from "node:stream";
import type { HeaderField } from "../h2/fields.ts";
import type { Service, Workload } from "../../mesh/workload.ts";
import { tcpLabels } from "../../mesh/metrics.ts";
import { buildRequest, type SocketAddr, workloadIdentity } from "./route.ts";
import {
  abortOnClose,
  formatAddr,
  type PodContext,
  type ProxyContext,
  recordFinished,
  recordRefused,
  responseFlag,
  socketEnds,
} from "./pod.ts";
import { relay } from "./relay.ts";

/** Upstream's baggage (`src/baggage.rs`): who is calling, for the other side's telemetry. Empty values left out. */
export function baggage(w: Workload): string {
  const type = w.workloadType.toLowerCase();
  const parts: [string, string | undefined][] = [
    ["k8s.cluster.name", w.clusterId],
    ["k8s.namespace.name", w.namespace],
    [`k8s.${type}.name`, w.workloadName || w.name],
    ["service.name", w.canonicalName],
    ["service.version", w.canonicalRevision],
    ["cloud.region", w.locality?.region],
    ["cloud.availability_zone", w.locality?.zone],
  ];
  return parts.filter(([, v]) => v).map(([k, v]) => `${k}=${v}`).join(",");
}

/** A random W3C traceparent, one per connection as upstream sends it. */
export function traceparent(random = crypto.getRandomValues.bind(crypto)): string {
  const hex = (n: number) => [...random(new Uint8Array(n))].map((b) => b.toString(16).padStart(2, "0")).join("");
  return `00-${hex(16)}-${hex(8)}-00`;
}

/** The headers of an outbound CONNECT besides `:method` and `:authority`. */
export function hboneHeaders(source: Workload, client: SocketAddr, service: Service | undefined): HeaderField[] {
  const forwarded = `for="${formatAddr(client)}"${service ? `;host=${service.hostname}` : ""}`;
  return [["forwarded", forwarded], ["baggage", baggage(source)], ["traceparent", traceparent()]];
}

/** Serves one captured outbound connection to its end (`originalDst`: see `PodNetwork.originalDst`). */
export async function handleOutbound(
  socket: net.Socket,
  pod: PodContext,
  ctx: ProxyContext,
  originalDst?: SocketAddr,
): Promise<void> {
  const started = performance.now();
  socket.on("error", () => {});
  const { src, dst } = socketEnds(socket, originalDst);
  const source = pod.workload();
  if (!source) {
    ctx.log.warn({ uid: pod.uid, dst: formatAddr(dst) }, "outbound connection from a pod the state does not know yet");
    socket.destroy();
    return;
  }
  const req = buildRequest(source, dst, ctx.state(), { random: ctx.random });
  if (req.kind === "refused") {
    ctx.log.info({ src: formatAddr(src), dst: formatAddr(dst), reason: req.reason }, `refused: ${req.detail}`);
    socket.resetAndDestroy();
    return;
  }
  const hbone = req.kind === "hbone";
  const facts = {
    reporter: "source" as const,
    source,
    sourceIdentity: hbone ? pod.identity : undefined,
    destination: req.kind === "passthrough" ? undefined : req.destinationWorkload,
    destinationIdentity: hbone ? workloadIdentity(req.destinationWorkload) : undefined,
    service: req.kind === "passthrough" ? undefined : req.destinationService,
    mtls: hbone,
  };
  const record = {
    direction: "outbound" as const,
    src,
    srcWorkload: source,
    srcIdentity: pod.identity,
    dst: hbone ? req.hboneAddr : req.target,
    hboneAddr: hbone ? req.authority : undefined,
    dstService: facts.service,
    dstWorkload: facts.destination,
    dstIdentity: facts.destinationIdentity,
  };
  pod.open.add(socket);
  const cancel = abortOnClose(socket);
  let upstream: Duplex;
  try {
    upstream = hbone
      ? await pod.pool.connect(
        {
          srcIdentity: pod.identity.toString(),
          dstIdentities: req.expectedIdentities.map(String),
          dst: req.hboneAddr,
          srcIp: src.ip,
        },
        formatAddr(req.authority),
        hboneHeaders(source, src, req.destinationService),
        cancel.signal,
      )
      : await pod.dial(src.ip, req.target, cancel.signal);
  } catch (error) {
    pod.open.delete(socket);
    socket.resetAndDestroy();
    recordRefused(ctx, facts, record, started, responseFlag(error), String(error));
    return;
  } finally {
    cancel.release();
  }
  const labels = tcpLabels(facts);
  ctx.metrics.opened.inc(labels);
  pod.open.add(upstream);
  const result = await relay(socket, upstream).done;
  pod.open.delete(socket);
  pod.open.delete(upstream);
  recordFinished(ctx, labels, record, result, started);
}
