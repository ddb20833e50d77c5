/**
 * Sockets as ztunnel needs them in a pod, made through libc because Deno's APIs cannot set socket options:
 * listeners with IP_TRANSPARENT (so TPROXY can hand them connections for any address, and the accepted
 * socket's local address is the original destination) and SO_MARK 0x539 (so the in-pod rules never capture
 * ztunnel's own traffic), created inside the pod's network namespace (mesh/netns_linux.ts) and then handed
 * to `node:net` by fd (deno-platform.md, "Raw sockets with any option"); and connections to the app from the
 * original client's address, as upstream preserves the source IP. IPv4 for now. Linux only; needs
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
const SO_REUSEPORT = 15;
const AF_UNIX = 1;
const SOCK_DGRAM = 2;
const MSG_NOSIGNAL = 0x4000;
const SO_MARK = 36;
const SOL_IP = 0;
const IP_TRANSPARENT = 19;
const IP_FREEBIND = 15;
const SO_ERROR = 4;
const EINPROGRESS = 115;
const ETIMEDOUT = 110;
const ECANCELED = 125;
const POLLOUT = 4;
/** Upstream's connect timeout towards the app. */
export const CONNECT_TIMEOUT_MS = 10_000;

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
  connect: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  poll: { parameters: ["buffer", "u64", "i32"], result: "i32" },
  getsockopt: { parameters: ["i32", "i32", "i32", "buffer", "buffer"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  sendto: { parameters: ["i32", "buffer", "usize", "i32", "buffer", "u32"], result: "isize" },
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
  /**
   * SO_REUSEPORT, so that a second ztunnel can listen on the pod's ports beside this one during a restart (as
   * upstream's in-pod listeners, `src/inpod/config.rs`); the kernel spreads new connections between the two.
   */
  reusePort?: boolean;
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
    // Before bind(), as the kernel requires for the socket to join the port's group.
    if (opts.reusePort) opt(SOL_SOCKET, SO_REUSEPORT, 1, "setsockopt(SO_REUSEPORT)");
    if (opts.transparent) opt(SOL_IP, IP_TRANSPARENT, 1, "setsockopt(IP_TRANSPARENT) (needs CAP_NET_ADMIN)");
    if (opts.mark !== undefined) opt(SOL_SOCKET, SO_MARK, opts.mark, "setsockopt(SO_MARK) (needs CAP_NET_ADMIN)");
    const addr = sockaddrIn(opts.address, opts.port);
    check(s.bind(fd, addr, addr.length), `bind(${opts.address}:${opts.port})`, fd);
    check(s.listen(fd, opts.backlog ?? 1024), "listen()", fd);
    return fd;
  };
  return opts.netnsPath ? inNetns(opts.netnsPath, make) : make();
}

/** Options of {@link transparentConnect}. */
export interface ConnectOptions {
  /** The pod's namespace; the host's when absent. */
  netnsPath?: string;
  /** The address to connect from: the original client's, which need not exist here. */
  source: string;
  target: { ip: string; port: number };
  /** SO_MARK; ztunnel's sockets carry 0x539. */
  mark?: number;
  /** Give up after this long; default {@link CONNECT_TIMEOUT_MS}. */
  timeoutMs?: number;
  /** Gives up at once when aborted (the client went away: no dial storm from cancelled requests). */
  signal?: AbortSignal;
}

/**
 * Connects from a source address that is not this host's (IP_TRANSPARENT + IP_FREEBIND, upstream's way of
 * preserving the client IP towards the app) and resolves with the connected fd, for
 * `new net.Socket({ fd })`. The connect is non-blocking and watched with `poll()` from timers, so a
 * handshake that never completes (say, the in-pod rules that route the app's SYN-ACK back are missing)
 * never stalls the event loop; it fails with ETIMEDOUT after `timeoutMs`.
 */
export async function transparentConnect(opts: ConnectOptions): Promise<number> {
  if (!isIPv4(opts.source) || !isIPv4(opts.target.ip)) {
    throw new SocketError(`only IPv4 is built yet, got ${opts.source} -> ${opts.target.ip}`, 0);
  }
  const s = lib().symbols;
  const where = `connect(${opts.target.ip}:${opts.target.port} from ${opts.source})`;
  const start = () => {
    const fd = check(s.socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), "socket()");
    const opt = (level: number, name: number, value: number, what: string) => {
      const v = intOpt(value);
      check(s.setsockopt(fd, level, name, v, v.length), what, fd);
    };
    opt(SOL_IP, IP_TRANSPARENT, 1, "setsockopt(IP_TRANSPARENT) (needs CAP_NET_ADMIN)");
    opt(SOL_IP, IP_FREEBIND, 1, "setsockopt(IP_FREEBIND)");
    if (opts.mark !== undefined) opt(SOL_SOCKET, SO_MARK, opts.mark, "setsockopt(SO_MARK) (needs CAP_NET_ADMIN)");
    const from = sockaddrIn(opts.source, 0);
    check(s.bind(fd, from, from.length), `bind(${opts.source})`, fd);
    const to = sockaddrIn(opts.target.ip, opts.target.port);
    if (s.connect(fd, to, to.length) < 0) {
      const e = errno();
      if (e !== EINPROGRESS) {
        s.close(fd);
        throw new SocketError(`${where} failed: errno ${e}`, e);
      }
    }
    return fd;
  };
  const fd = opts.netnsPath ? inNetns(opts.netnsPath, start) : start();
  const deadline = Date.now() + (opts.timeoutMs ?? CONNECT_TIMEOUT_MS);
  const pollfd = new Uint8Array(8);
  const view = new DataView(pollfd.buffer);
  view.setInt32(0, fd, true);
  view.setInt16(4, POLLOUT, true);
  for (let wait = 1;; wait = Math.min(wait * 2, 50)) {
    view.setInt16(6, 0, true);
    if (s.poll(pollfd, 1n, 0) > 0) break;
    if (Date.now() >= deadline) {
      s.close(fd);
      throw new SocketError(`${where} timed out`, ETIMEDOUT);
    }
    if (opts.signal?.aborted) {
      s.close(fd);
      throw new SocketError(`${where} cancelled`, ECANCELED);
    }
    await new Promise((resolve) => setTimeout(resolve, wait));
  }
  const err = new Uint8Array(4);
  const len = intOpt(4);
  check(s.getsockopt(fd, SOL_SOCKET, SO_ERROR, err, len), "getsockopt(SO_ERROR)", fd);
  const e = new DataView(err.buffer).getInt32(0, true);
  if (e !== 0) {
    s.close(fd);
    throw new SocketError(`${where} failed: errno ${e}`, e);
  }
  return fd;
}

/** Closes a socket made here that was never handed to `node:net` (tests: a listener that never accepts). */
export function closeSocket(fd: number): void {
  check(lib().symbols.close(fd), "close()");
}

/**
 * Turns on `net.ipv4.tcp_migrate_req` in the network namespace at `netnsPath`: when a listener of a SO_REUSEPORT
 * group closes, the connections still in its accept queue (and those mid-handshake) move to another listener of
 * the group instead of being reset (kernel 5.14+, Documentation/networking/ip-sysctl.rst). It is what lets the old
 * ztunnel stop accepting once the new one listens without losing the connections the kernel had already queued for
 * it. The sysctl is per namespace; the file is opened while this thread is in the pod's namespace.
 */
export function enableListenerMigration(netnsPath: string): void {
  inNetns(netnsPath, () => Deno.writeTextFileSync("/proc/sys/net/ipv4/tcp_migrate_req", "1"));
}

/**
 * Sends `state` (such as `MAINPID=123`) to systemd's notification socket, `$NOTIFY_SOCKET` (sd_notify(3)); does
 * nothing when it is unset (not under systemd). An abstract socket is named with a leading `@`.
 */
export function notifySystemd(state: string, socketPath = Deno.env.get("NOTIFY_SOCKET")): boolean {
  if (!socketPath) return false;
  const s = lib().symbols;
  const path = new TextEncoder().encode(socketPath);
  if (path.length > 107) throw new SocketError(`sd_notify: NOTIFY_SOCKET is too long: ${socketPath}`, 0);
  const addr = new Uint8Array(2 + 108);
  new DataView(addr.buffer).setUint16(0, AF_UNIX, true);
  addr.set(path, 2);
  if (socketPath.startsWith("@")) addr[2] = 0;
  const fd = check(s.socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0), "socket(AF_UNIX)");
  try {
    const msg = new TextEncoder().encode(state);
    const sent = s.sendto(fd, msg, BigInt(msg.length), MSG_NOSIGNAL, addr, 2 + path.length);
    if (Number(sent) < 0) {
      const e = errno();
      throw new SocketError(`sd_notify(${state}) failed: errno ${e}`, e);
    }
    return true;
  } finally {
    s.close(fd);
  }
}
