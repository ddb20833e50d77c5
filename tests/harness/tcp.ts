/**
 * TCP helpers for namespaced tests: listen or dial from inside a pod's network namespace, and a
 * one-connection echo exchange. Sockets are made with setns (mesh/netns_linux.ts), so no helper process is
 * needed and every socket is closed by the caller's `using`/`finally`.
 *
 * @module
 */

import { inNetns } from "../../mesh/netns_linux.ts";

/** Listens on `address:port` inside the namespace at `netnsPath`. */
export function listenIn(netnsPath: string, address: string, port: number): Deno.TcpListener {
  return inNetns(netnsPath, () => Deno.listen({ hostname: address, port, transport: "tcp" }));
}

/** Dials `address:port` from inside the namespace at `netnsPath`. */
export function dialFrom(netnsPath: string, address: string, port: number): Promise<Deno.TcpConn> {
  return inNetns(netnsPath, () => Deno.connect({ hostname: address, port, transport: "tcp" }));
}

/** Reads until `n` bytes arrived or the peer closed. */
export async function readN(conn: Deno.Conn, n: number): Promise<Uint8Array> {
  const out = new Uint8Array(n);
  let got = 0;
  while (got < n) {
    const r = await conn.read(out.subarray(got));
    if (r === null) break;
    got += r;
  }
  return out.subarray(0, got);
}

/**
 * Sends `message` from a client in `from` to a listener in `to` and returns what the listener received and
 * the address it saw the client at.
 */
export async function exchange(
  from: { netnsPath: string },
  to: { netnsPath: string; address: string },
  port: number,
  message: string,
): Promise<{ received: string; peer: Deno.NetAddr }> {
  using listener = listenIn(to.netnsPath, to.address, port);
  const accepted = listener.accept();
  using client = await dialFrom(from.netnsPath, to.address, port);
  using server = await accepted;
  const bytes = new TextEncoder().encode(message);
  await client.write(bytes);
  const received = new TextDecoder().decode(await readN(server, bytes.length));
  return { received, peer: server.remoteAddr as Deno.NetAddr };
}
