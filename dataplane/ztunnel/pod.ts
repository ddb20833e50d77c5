/**
 * What the three proxy paths of one enrolled pod share: the pod, the node-wide state and telemetry, the pod's own
 * HBONE pool, and the ways to open sockets from inside its network namespace. The Linux implementation of the
 * dials lives in `inpod.ts`; tests on loopback give plain ones.
 */

import type { EventEmitter } from "node:events";
import type net from "node:net";
import type { Logger } from "../../mesh/log.ts";
import type { SpiffeId } from "../../mesh/identity.ts";
import type { TcpMetrics } from "../../mesh/metrics.ts";
import type { MeshState } from "../../mesh/store.ts";
import type { Workload } from "../../mesh/workload.ts";
import type { HbonePool } from "../hbone/pool.ts";
import type { ConnectionManager } from "./connection_manager.ts";
import type { DialGuard } from "../proxy/dial_guard.ts";
import type { ConnectionRecord } from "./access_log.ts";
import type { SocketAddr } from "../proxy/addr.ts";
import type { ResponseFlag } from "../proxy/flags.ts";
import type { RelayResult } from "../proxy/relay.ts";
import { type ConnectionFacts, tcpLabels, type TcpLabelSet } from "../../mesh/metrics.ts";

/** Node-wide parts every pod uses. */
export interface ProxyContext {
  state(): MeshState;
  metrics: TcpMetrics;
  connections: ConnectionManager;
  /** What each peer identity may make us dial, across its connections (`dial_guard.ts`). */
  dials: DialGuard;
  log: Logger;
  /** The access log: one "connection complete" line per connection. */
  access(record: ConnectionRecord): void;
  random(): number;
}

/** One enrolled pod, as its listeners see it. */
export interface PodContext {
  uid: string;
  identity: SpiffeId;
  /** The pod's workload in the current state (undefined until the state knows it). */
  workload(): Workload | undefined;
  pool: HbonePool;
  /**
   * A TCP connection from inside the pod's namespace, marked so the in-pod rules skip it, from `source` (the
   * pod's own address outbound; the original client's address inbound, so the app sees the real client).
   */
  dial(source: string, target: SocketAddr, signal?: AbortSignal): Promise<net.Socket>;
  /** Sockets and streams open for this pod; destroyed when the pod is removed. */
  open: Set<{ destroy(error?: Error): void }>;
}

export function stripV4Mapped(ip: string | undefined): string {
  return !ip ? "" : ip.startsWith("::ffff:") ? ip.slice(7) : ip;
}

/**
 * A socket's two ends as ztunnel sees them; for a captured connection `dst` is the original destination: the
 * socket's local address under TPROXY, or `originalDst` when the pod network says it (`PodNetwork.originalDst`).
 */
export function socketEnds(socket: net.Socket, originalDst?: SocketAddr): { src: SocketAddr; dst: SocketAddr } {
  return {
    src: { ip: stripV4Mapped(socket.remoteAddress), port: socket.remotePort ?? 0 },
    dst: originalDst ?? { ip: stripV4Mapped(socket.localAddress), port: socket.localPort ?? 0 },
  };
}

type RecordBase = Omit<ConnectionRecord, "bytesSent" | "bytesRecv" | "durationMs" | "error">;

/** Counts a connection that never carried a byte (refused, or its upstream unreachable) and logs why. */
export function recordRefused(
  ctx: ProxyContext,
  facts: ConnectionFacts,
  record: RecordBase,
  started: number,
  flag: ResponseFlag,
  reason: string,
) {
  const labels = tcpLabels({ ...facts, responseFlags: flag });
  ctx.metrics.opened.inc(labels);
  ctx.metrics.closed.inc(labels);
  ctx.access({ ...record, bytesSent: 0, bytesRecv: 0, durationMs: performance.now() - started, error: reason });
}

/** Counts a finished connection's bytes and close, and writes its access log line. */
export function recordFinished(
  ctx: ProxyContext,
  labels: TcpLabelSet,
  record: RecordBase,
  result: RelayResult,
  started: number,
) {
  ctx.metrics.received.inc(labels, result.aToB);
  ctx.metrics.sent.inc(labels, result.bToA);
  ctx.metrics.closed.inc(labels);
  ctx.access({
    ...record,
    bytesSent: result.bToA,
    bytesRecv: result.aToB,
    durationMs: performance.now() - started,
    error: result.error?.message,
  });
}

/**
 * A signal that aborts when `peer` closes while a dial for it is pending. `release()` once the dial settles: an
 * abort after that would only cost a DOMException (and its stack) per connection for nothing.
 */
export function abortOnClose(peer: EventEmitter): { signal: AbortSignal; release(): void } {
  const controller = new AbortController();
  const onClose = () => controller.abort();
  peer.once("close", onClose);
  return { signal: controller.signal, release: () => peer.off("close", onClose) };
}
