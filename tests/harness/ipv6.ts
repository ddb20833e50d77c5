/**
 * IPv6 link-local reachability for namespaced tests. Every interface that comes up gets an `fe80::/64` address
 * (RFC 4862 §5.3) whatever the CNI configured, so any two namespaces on one link (a pod and its node on a veth,
 * two pods on a bridge) can talk IPv6 without an address plan. These helpers find that address once duplicate
 * address detection has finished, run a small HTTP app on `[::]`, and call it with curl using the address's
 * zone (`[fe80::1%25eth0]`, RFC 6874), as a neighbour on the link would.
 *
 * @module
 */

import { run } from "./netns.ts";
import { listenIn } from "./tcp.ts";

/** The link-local address of `dev` in `netns`, once it is no longer tentative (DAD done). */
export async function linkLocal(netns: string, dev = "eth0", timeoutMs = 10_000): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  let last = "";
  for (;;) {
    const out = await run(["ip", "-n", netns, "-j", "-6", "addr", "show", "dev", dev, "scope", "link"]);
    last = out.stdout.trim() || out.stderr.trim();
    if (out.code === 0 && out.stdout.trim()) {
      const links = JSON.parse(out.stdout) as { addr_info?: { local: string; tentative?: boolean }[] }[];
      const ready = links.flatMap((l) => l.addr_info ?? []).find((a) => a.local.startsWith("fe80:") && !a.tentative);
      if (ready) return ready.local;
    }
    if (Date.now() > deadline) {
      throw new Error(`linkLocal: no usable fe80:: address on ${dev} in ${netns} within ${timeoutMs} ms: ${last}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * An HTTP app listening on `[::]:port` in the namespace at `netnsPath`: it answers every request with its
 * `name` and records each caller's address in `peers`. Dispose it to close the listener and its connections.
 */
export function httpApp6(netnsPath: string, port: number, name: string) {
  const listener = listenIn(netnsPath, "::", port);
  const peers: string[] = [];
  const open = new Set<Promise<void>>();
  const serve = async (conn: Deno.TcpConn) => {
    try {
      peers.push((conn.remoteAddr as Deno.NetAddr).hostname);
      // One request, one answer: curl sends its request at once and reads until close.
      await conn.read(new Uint8Array(4096));
      const body = `${name}\n`;
      await conn.write(
        new TextEncoder().encode(
          `HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`,
        ),
      );
    } catch {
      /* the caller went away */
    } finally {
      try {
        conn.close();
      } catch { /* closed already */ }
    }
  };
  const loop = (async () => {
    try {
      for await (const conn of listener) {
        const p = serve(conn);
        open.add(p);
        p.finally(() => open.delete(p));
      }
    } catch { /* closed */ }
  })();
  return {
    peers,
    async [Symbol.asyncDispose]() {
      try {
        listener.close();
      } catch { /* closed already */ }
      await loop;
      await Promise.all(open);
    },
  };
}

/** What one curl call got: its exit code (0 = answered, 7 = refused, 28 = timed out) and the body. */
export interface Curl6 {
  code: number;
  body: string;
  stderr: string;
}

/**
 * `curl` from `netns` to `http://[addr%dev]:port/` (no zone when `dev` is undefined, as for `::1`), giving up
 * after `timeoutSeconds`.
 */
export async function curl6(
  netns: string,
  addr: string,
  dev: string | undefined,
  port: number,
  timeoutSeconds = 3,
): Promise<Curl6> {
  const url = `http://[${addr}${dev === undefined ? "" : `%25${dev}`}]:${port}/`;
  const out = await run([
    "ip",
    "netns",
    "exec",
    netns,
    "curl",
    "-g",
    "-sS",
    "--connect-timeout",
    String(timeoutSeconds),
    "--max-time",
    String(timeoutSeconds),
    url,
  ]);
  return { code: out.code, body: out.stdout, stderr: out.stderr.trim() };
}
