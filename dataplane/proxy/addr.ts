/**
 * Addresses as both proxies write and read them: an `ip:port` pair, its text form, and the parse of an HBONE
 * CONNECT `:authority` (RFC 9113 §8.5: `authority-form`, host and port only).
 *
 * @module
 */

import { canonicalIp } from "../../mesh/net.ts";

/** An address and port. */
export interface SocketAddr {
  ip: string;
  port: number;
}

declare const role: unique symbol;

/**
 * The three addresses of an outbound connection, as distinct types so that one cannot be passed for another (each
 * is a {@link SocketAddr} to read, but only its constructor makes one): where the app meant to go (the original
 * destination TPROXY preserved), where the HBONE connection opens (a pod's or waypoint's 15008), and the CONNECT
 * `:authority` (the pod's `ip:targetPort`, or the original destination when a waypoint is in between).
 */
export type OriginalDst = SocketAddr & { readonly [role]: "original-destination" };
/** Where an HBONE connection opens: see {@link OriginalDst}. */
export type HboneAddr = SocketAddr & { readonly [role]: "hbone" };
/** An HBONE CONNECT's `:authority`: see {@link OriginalDst}. */
export type Authority = SocketAddr & { readonly [role]: "authority" };

/** The address the app dialled, as the capture preserved it. */
export function asOriginalDst(a: SocketAddr): OriginalDst {
  return a as OriginalDst;
}

/** The HBONE listener at `ip:port`. */
export function asHboneAddr(ip: string, port: number): HboneAddr {
  return { ip, port } as HboneAddr;
}

/** A CONNECT `:authority`: a pod's `ip:targetPort`, or the original destination (through a waypoint). */
export function asAuthority(a: SocketAddr): Authority {
  return a as Authority;
}

/** `ip:port`, or `[ip]:port` for IPv6 (RFC 3986 §3.2.2). */
export function formatAddr(a: SocketAddr): string {
  return a.ip.includes(":") ? `[${a.ip}]:${a.port}` : `${a.ip}:${a.port}`;
}

/** Parses an authority `ip:port`, `[v6]:port` or `host:port`; undefined when it is none of them. */
export function parseAuthority(authority: string): { host: string; ip?: string; port: number } | undefined {
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(authority);
  if (!m) return undefined;
  const port = Number(m[3]);
  if (port < 1 || port > 65535) return undefined;
  if (m[1] !== undefined) {
    const ip = canonicalIp(m[1]);
    return ip && ip.includes(":") ? { host: ip, ip, port } : undefined;
  }
  const host = m[2];
  const ip = canonicalIp(host);
  if (ip) return ip.includes(":") ? undefined : { host: ip, ip, port };
  return /^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/i.test(host) && host.length <= 253
    ? { host: host.toLowerCase(), port }
    : undefined;
}
