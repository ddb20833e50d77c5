/**
 * The access log line ztunnel writes when a connection ends, "connection complete", with upstream's keys
 * (`src.addr`, `src.workload`, `src.namespace`, `src.identity`, `dst.addr`, `dst.hbone_addr`, `dst.service`,
 * `dst.workload`, `dst.namespace`, `dst.identity`, `direction`, `bytes_sent`, `bytes_recv`, `duration`), so
 * that log queries written for ztunnel carry over. Absent values are left out rather than faked.
 *
 * @module
 */

import type { SpiffeId } from "../../mesh/identity.ts";
import type { Service, Workload } from "../../mesh/workload.ts";
import type { SocketAddr } from "../proxy/addr.ts";

/** What is known about a finished connection. */
export interface ConnectionRecord {
  direction: "inbound" | "outbound";
  src: SocketAddr;
  srcWorkload?: Workload;
  /** Verified peer identity (inbound) or the local pod's identity (outbound). */
  srcIdentity?: SpiffeId;
  dst: SocketAddr;
  /** The HBONE address used, when tunnelled. */
  hboneAddr?: SocketAddr;
  dstService?: Service;
  dstWorkload?: Workload;
  dstIdentity?: SpiffeId;
  /** Bytes sent to the client and received from it, from this proxy's side. */
  bytesSent: number;
  bytesRecv: number;
  durationMs: number;
  /** Why it ended, when not normally (`DENY`, `CONNECT`, ...). */
  error?: string;
}

const addr = (a: SocketAddr) => (a.ip.includes(":") ? `[${a.ip}]:${a.port}` : `${a.ip}:${a.port}`);

/** The structured fields of the "connection complete" line. */
export function accessLogFields(r: ConnectionRecord): Record<string, string | number> {
  const out: Record<string, string | number> = { "src.addr": addr(r.src) };
  if (r.srcWorkload) {
    out["src.workload"] = r.srcWorkload.name;
    out["src.namespace"] = r.srcWorkload.namespace;
  }
  if (r.srcIdentity) out["src.identity"] = r.srcIdentity.toString();
  out["dst.addr"] = addr(r.dst);
  if (r.hboneAddr) out["dst.hbone_addr"] = addr(r.hboneAddr);
  if (r.dstService) out["dst.service"] = r.dstService.hostname;
  if (r.dstWorkload) {
    out["dst.workload"] = r.dstWorkload.name;
    out["dst.namespace"] = r.dstWorkload.namespace;
  }
  if (r.dstIdentity) out["dst.identity"] = r.dstIdentity.toString();
  out.direction = r.direction;
  out.bytes_sent = r.bytesSent;
  out.bytes_recv = r.bytesRecv;
  out.duration = `${Math.round(r.durationMs)}ms`;
  if (r.error) out.error = r.error;
  return out;
}

/** Writes the "connection complete" line: at error level when the connection ended in an error. */
export function writeAccessLog(
  log: { info(o: object, msg: string): void; error(o: object, msg: string): void },
  r: ConnectionRecord,
) {
  const fields = accessLogFields(r);
  if (r.error) log.error(fields, "connection complete");
  else log.info(fields, "connection complete");
}
