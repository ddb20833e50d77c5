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

/**
 * Writes `message` on `conn` and returns the first reply: its text, "closed" when the peer closed, or
 * "error: NAME" when the connection failed. Gives up (closing `conn`) after `timeoutMs`.
 */
export async function roundTrip(conn: Deno.TcpConn, message: string, timeoutMs = 5000): Promise<string> {
  const timer = setTimeout(() => conn.close(), timeoutMs);
  try {
    await conn.write(new TextEncoder().encode(message));
    const buf = new Uint8Array(4096);
    const n = await conn.read(buf);
    return n === null ? "closed" : new TextDecoder().decode(buf.subarray(0, n));
  } catch (error) {
    return `error: ${(error as Error).name}`;
  } finally {
    clearTimeout(timer);
  }
}

/** One exchange on a new connection from the namespace at `netnsPath`: {@link roundTrip}'s answer, or "refused: …". */
export async function call(netnsPath: string, ip: string, port: number, message: string, timeoutMs = 5000) {
  let conn: Deno.TcpConn;
  try {
    conn = await dialFrom(netnsPath, ip, port);
  } catch (error) {
    return `refused: ${(error as Error).message}`;
  }
  try {
    return await roundTrip(conn, message, timeoutMs);
  } finally {
    try {
      conn.close();
    } catch { /* closed by the timer */ }
  }
}
