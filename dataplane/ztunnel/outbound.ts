/**
 * Outbound (15001): a connection the pod's app opened, captured by TPROXY, so the socket's local address is where
 * the app meant to go. `route.ts` decides; this module carries the decision out: an HBONE tunnel from the pool
 * (with upstream's `forwarded`, `baggage` and `traceparent` headers), plain TCP to an out-of-mesh workload or an
 * unknown address, or a refusal. Then bytes flow both ways until both sides are done, and the connection is
 * counted, logged and forgotten.
 */

import type net from "node:net";
import type { Duplex } from "node:stream";
import { tcpLabels } from "../../mesh/metrics.ts";
import { asOriginalDst, formatAddr, type SocketAddr } from "../proxy/addr.ts";
import { hboneHeaders } from "../proxy/headers.ts";
import { workloadIdentity } from "../proxy/identity.ts";
import { buildRequest } from "./route.ts";
import { abortOnClose, type PodContext, type ProxyContext, recordFinished, recordRefused, socketEnds } from "./pod.ts";
import { responseFlag } from "../proxy/flags.ts";
import { relay } from "../proxy/relay.ts";

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
  const req = buildRequest(source, asOriginalDst(dst), ctx.state(), { random: ctx.random });
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
