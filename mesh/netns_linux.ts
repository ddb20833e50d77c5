/**
 * Running code inside another network namespace, for sockets that must live in a pod: open the namespace
 * file, `setns(fd, CLONE_NEWNET)` on the JavaScript thread, create the socket with a synchronous call, and
 * switch back before anything else runs (deno-platform.md, "Linux plumbing"). JavaScript is single-threaded,
 * so no other code sees the switched namespace; use IP literals while switched, since name resolution runs
 * on other threads. Linux only; needs `--allow-ffi` and CAP_SYS_ADMIN.
 *
 * @module
 */

const CLONE_NEWNET = 0x40000000;
const O_RDONLY = 0;
const O_CLOEXEC = 0o2000000;

/** A failed system call, with its errno. */
export class NetnsError extends Error {
  readonly code = "NETNS";
  readonly errno: number;
  constructor(message: string, errno: number) {
    super(message);
    this.name = "NetnsError";
    this.errno = errno;
  }
}

const SYMBOLS = {
  open: { parameters: ["buffer", "i32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  setns: { parameters: ["i32", "i32"], result: "i32" },
  __errno_location: { parameters: [], result: "pointer" },
} as const;

let libc: Deno.DynamicLibrary<typeof SYMBOLS> | undefined;
let hostFd = -1;

function lib(): Deno.DynamicLibrary<typeof SYMBOLS> {
  libc ??= Deno.dlopen("libc.so.6", SYMBOLS);
  return libc;
}

/**
 * Loads libc now rather than at the first switch. The handle lives as long as the process; tests call this
 * at module load so the resource sanitizer does not count it against the first test.
 */
export function loadNetnsSupport(): void {
  lib();
}

function errno(): number {
  const p = lib().symbols.__errno_location();
  return p === null ? 0 : new Deno.UnsafePointerView(p).getInt32();
}

function openNs(path: string): number {
  const fd = lib().symbols.open(new TextEncoder().encode(`${path}\0`), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const e = errno();
    throw new NetnsError(`Cannot open network namespace ${path}: errno ${e}`, e);
  }
  return fd;
}

function enter(fd: number, what: string): void {
  if (lib().symbols.setns(fd, CLONE_NEWNET) !== 0) {
    const e = errno();
    throw new NetnsError(`Cannot enter network namespace ${what}: errno ${e} (needs CAP_SYS_ADMIN)`, e);
  }
}

/** The path of a named namespace made by `ip netns add NAME`. */
export function netnsPath(name: string): string {
  return `/var/run/netns/${name}`;
}

/**
 * Runs `fn` with the calling thread in the network namespace at `path` (`/var/run/netns/NAME` or
 * `/proc/PID/ns/net`), then returns to the namespace the thread started in, even when `fn` throws. `fn` must
 * be synchronous: a socket created by it stays in the target namespace.
 */
export function inNetns<T>(path: string, fn: () => T): T {
  // The calling thread's own namespace, not `/proc/self`'s (the main thread's): with worker threads
  // (dataplane/proxy/workers.ts) the main thread may be switched into a pod at this very moment, and a worker
  // that took that for its host would return into the pod after every later switch, its dials and listeners
  // landing in the wrong namespace (connections timed out when a second two-thread ztunnel started under load).
  if (hostFd < 0) hostFd = openNs("/proc/thread-self/ns/net");
  const fd = openNs(path);
  try {
    enter(fd, path);
    try {
      return fn();
    } finally {
      // Failing to return would leave every later socket in the pod: that is not recoverable.
      enter(hostFd, "of the host (returning)");
    }
  } finally {
    lib().symbols.close(fd);
  }
}
