/**
 * IP addresses and CIDR ranges as the model carries them: canonical text (`10.0.0.1`, `fd00::1`), so that the
 * same address always has the same index key, and ranges checked for host bits.
 *
 * @module
 */

import { hostname, networkInterfaces } from "node:os";
import { isIP } from "node:net";
import { type Check, checkString, show, ValidationError } from "./validate.ts";

/** An address with the network it lives on; the index key of workloads and services is `network/ip`. */
export interface NetworkAddress {
  /** Network name; empty for the default network. */
  network: string;
  /** Canonical IP text. */
  address: string;
}

/** An IP range: canonical address and prefix length. */
export interface Cidr {
  address: string;
  length: number;
}

/** Returns the canonical text of an IP address, or undefined when `text` is not one. */
export function canonicalIp(text: string): string | undefined {
  const family = isIP(text);
  if (family === 4) return text.split(".").map((o) => String(Number(o))).join(".");
  if (family === 6) {
    // The URL parser compresses and lowercases IPv6 per RFC 5952.
    try {
      return new URL(`http://[${text}]/`).hostname.slice(1, -1);
    } catch {
      return undefined;
    }
  }
  return undefined;
}

/** Check for {@link checkString}: an IPv4 or IPv6 address. */
export const ipAddress: Check<string> = (v) =>
  canonicalIp(v) === undefined ? "expected an IPv4 or IPv6 address" : undefined;

/** Decodes an IP address field to its canonical text. */
export function decodeIp(value: unknown, path: string): string {
  return canonicalIp(checkString(value, path, { check: ipAddress }))!;
}

/** Decodes `addr/len` (or a bare address, meaning a single host) into a {@link Cidr}. */
export function decodeCidr(value: unknown, path: string): Cidr {
  const text = checkString(value, path, { nonEmpty: true, max: 64 });
  const [addr, len, ...extra] = text.split("/");
  const address = canonicalIp(addr);
  if (address === undefined || extra.length > 0) {
    throw new ValidationError(
      path,
      `expected an IP address or CIDR range such as 10.0.0.0/8, got ${show(text)}`,
    );
  }
  const bits = isIP(address) === 4 ? 32 : 128;
  if (len === undefined) return { address, length: bits };
  if (!/^\d{1,3}$/.test(len) || Number(len) > bits) {
    throw new ValidationError(path, `expected a prefix length from 0 to ${bits}, got ${show(text)}`);
  }
  const length = Number(len);
  const bytes = ipBytes(address);
  if (!hostBitsZero(bytes, length)) {
    throw new ValidationError(path, `has host bits set after /${length}, got ${show(text)}`);
  }
  return { address, length };
}

/** Formats a range as `addr/len`. */
export function formatCidr(c: Cidr): string {
  return `${c.address}/${c.length}`;
}

/** The raw bytes of a canonical IP address (4 or 16). */
export function ipBytes(ip: string): Uint8Array {
  if (isIP(ip) === 4) return Uint8Array.from(ip.split(".").map(Number));
  const out = new Uint8Array(16);
  const [head, tail] = ip.includes("::") ? ip.split("::") : [ip, undefined];
  const groups = (s: string | undefined) => (s ? s.split(":") : []);
  const expand = (g: string[]): number[] => {
    // An embedded IPv4 tail (::ffff:1.2.3.4) counts as two groups.
    const last = g.at(-1);
    if (last?.includes(".")) {
      const [a, b, c, d] = last.split(".").map(Number);
      return [...g.slice(0, -1).map((x) => parseInt(x, 16)), (a << 8) | b, (c << 8) | d];
    }
    return g.map((x) => parseInt(x, 16));
  };
  const h = expand(groups(head));
  const t = tail === undefined ? [] : expand(groups(tail));
  const all = [...h, ...new Array(8 - h.length - t.length).fill(0), ...t];
  all.forEach((g, i) => {
    out[i * 2] = g >> 8;
    out[i * 2 + 1] = g & 0xff;
  });
  return out;
}

function hostBitsZero(bytes: Uint8Array, length: number): boolean {
  for (let bit = length; bit < bytes.length * 8; bit++) {
    if (bytes[bit >> 3] & (0x80 >> (bit & 7))) return false;
  }
  return true;
}

/** Whether `ip` (canonical text) lies in `cidr`; addresses of the other family never do. */
export function cidrContains(cidr: Cidr, ip: string): boolean {
  const a = ipBytes(cidr.address);
  const b = ipBytes(ip);
  if (a.length !== b.length) return false;
  const full = cidr.length >> 3;
  for (let i = 0; i < full; i++) if (a[i] !== b[i]) return false;
  const rem = cidr.length & 7;
  if (rem === 0) return true;
  const mask = (0xff << (8 - rem)) & 0xff;
  return (a[full] & mask) === (b[full] & mask);
}

/** The index key of an address: `network/ip`. */
export function addressKey(a: NetworkAddress): string {
  return `${a.network}/${a.address}`;
}

/**
 * The names a server's HTTPS certificate carries so that clients can dial it however they know it: the extra ones
 * asked for (comma-separated), the host name, localhost, and every local address.
 */
export function servingNames(extra: string): string[] {
  const names = extra.split(",").map((s) => s.trim()).filter((s) => s !== "");
  names.push(hostname(), "localhost");
  for (const list of Object.values(networkInterfaces())) {
    for (const a of list ?? []) if (a.family === "IPv4" || !a.address.startsWith("fe80")) names.push(a.address);
  }
  return [...new Set(names)];
}
