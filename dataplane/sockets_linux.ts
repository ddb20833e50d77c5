/**
 * Sockets as ztunnel needs them in a pod, made through libc because Deno's APIs cannot set socket options:
 * listeners with IP_TRANSPARENT (so TPROXY can hand them connections for any address, and the accepted
 * socket's local address is the original destination) and SO_MARK 0x539 (so the in-pod rules never capture
 * ztunnel's own traffic), created inside the pod's network namespace (mesh/netns_linux.ts) and then handed
 * to `node:net` by fd (deno-platform.md, "Raw sockets with any option"). IPv4 for now. Linux only; needs
 * `--allow-ffi` and CAP_NET_ADMIN.
 *
 * @module
 */

import { isIPv4 } from "node:net";
import { inNetns } from "../mesh/netns_linux.ts";

const AF_INET = 2;
const SOCK_STREAM = 1;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;
const SOL_SOCKET = 1;
const SO_REUSEADDR = 2;
const SO_MARK = 36;
const SOL_IP = 0;
const IP_TRANSPARENT = 19;

/** A failed socket call, with its errno. */
export class SocketError extends Error {
  readonly code = "SOCKET";
  readonly errno: number;
  constructor(message: string, errno: number) {
    super(message);
    this.name = "SocketError";
    this.errno = errno;
  }
}

const SYMBOLS = {
  socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
  setsockopt: { parameters: ["i32", "i32", "i32", "buffer", "u32"], result: "i32" },
  bind: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  listen: { parameters: ["i32", "i32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  __errno_location: { parameters: [], result: "pointer" },
} as const;

let libc: Deno.DynamicLibrary<typeof SYMBOLS> | undefined;

function lib(): Deno.DynamicLibrary<typeof SYMBOLS> {
  libc ??= Deno.dlopen("libc.so.6", SYMBOLS);
  return libc;
}

/** Loads libc now (see `loadNetnsSupport`): tests call it at module load for the resource sanitizer. */
export function loadSocketSupport(): void {
  lib();
}

function errno(): number {
  const p = lib().symbols.__errno_location();
  return p === null ? 0 : new Deno.UnsafePointerView(p).getInt32();
}

function check(ret: number, what: string, fd?: number): number {
  if (ret < 0) {
    const e = errno();
    if (fd !== undefined) lib().symbols.close(fd);
    throw new SocketError(`${what} failed: errno ${e}`, e);
  }
  return ret;
}

function intOpt(value: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setInt32(0, value, true);
  return b;
}

/** A `struct sockaddr_in` for `ip:port`. */
function sockaddrIn(ip: string, port: number): Uint8Array {
  const b = new Uint8Array(16);
  const v = new DataView(b.buffer);
  v.setUint16(0, AF_INET, true);
  v.setUint16(2, port, false);
  ip.split(".").forEach((o, i) => (b[4 + i] = Number(o)));
  return b;
}

/** Options of {@link transparentListenerFd}. */
export interface ListenerOptions {
  /** The pod's namespace; the host's when absent. */
  netnsPath?: string;
  address: string;
  port: number;
  /** SO_MARK; ztunnel's sockets carry 0x539. */
  mark?: number;
  /** IP_TRANSPARENT, for TPROXY capture listeners. */
  transparent?: boolean;
  backlog?: number;
}

/**
 * Creates a listening TCP socket with the given options and returns its fd, for
 * `net.createServer().listen({ fd })`. The socket is made inside `netnsPath` and stays there.
 */
export function transparentListenerFd(opts: ListenerOptions): number {
  if (!isIPv4(opts.address)) throw new SocketError(`only IPv4 listeners are built yet, got ${opts.address}`, 0);
  const make = () => {
    const s = lib().symbols;
    const fd = check(s.socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), "socket()");
    const opt = (level: number, name: number, value: number, what: string) => {
      const v = intOpt(value);
      check(s.setsockopt(fd, level, name, v, v.length), what, fd);
    };
    opt(SOL_SOCKET, SO_REUSEADDR, 1, "setsockopt(SO_REUSEADDR)");
    if (opts.transparent) opt(SOL_IP, IP_TRANSPARENT, 1, "setsockopt(IP_TRANSPARENT) (needs CAP_NET_ADMIN)");
    if (opts.mark !== undefined) opt(SOL_SOCKET, SO_MARK, opts.mark, "setsockopt(SO_MARK) (needs CAP_NET_ADMIN)");
    const addr = sockaddrIn(opts.address, opts.port);
    check(s.bind(fd, addr, addr.length), `bind(${opts.address}:${opts.port})`, fd);
    check(s.listen(fd, opts.backlog ?? 1024), "listen()", fd);
    return fd;
  };
  return opts.netnsPath ? inNetns(opts.netnsPath, make) : make();
}
