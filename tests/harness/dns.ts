/**
 * A fake upstream resolver for the DNS proxy's tests: UDP and TCP on each address it is given (in any namespace),
 * answering A records from a table and NXDOMAIN otherwise, truncating UDP answers a client cannot take, as a real
 * server does. It records every query with where it arrived and from whom, so a test can count what reached it.
 */

import { inNetns } from "../../mesh/netns_linux.ts";
import {
  buildAnswer,
  type DnsRecord,
  parseQuery,
  RCODE,
  truncateForUdp,
  TYPE,
  udpLimit,
} from "../../dataplane/ztunnel/dns/wire.ts";

/** Where the fake listens: `label` names it in the query log. */
export interface ResolverBind {
  label: string;
  host: string;
  port: number;
  netns?: string;
}

/** One query the fake received. */
export interface SeenQuery {
  label: string;
  transport: "udp" | "tcp";
  from: string;
  name: string;
  type: number;
}

/** The fake resolver; dispose it to close every socket. */
export class FakeResolver implements AsyncDisposable {
  readonly seen: SeenQuery[] = [];
  #closers: (() => void)[] = [];
  #loops: Promise<void>[] = [];
  readonly records: Record<string, string[]>;
  /** The port actually bound (UDP and TCP alike), by label, for binds that asked for port 0. */
  readonly ports = new Map<string, number>();

  constructor(records: Record<string, string[]>) {
    this.records = records;
  }

  /** Starts a fake answering `records` (lower-case name → IPv4 addresses) on each bind. */
  static start(binds: ResolverBind[], records: Record<string, string[]>): FakeResolver {
    const fake = new FakeResolver(records);
    try {
      for (const b of binds) fake.#listen(b);
    } catch (error) {
      for (const c of fake.#closers) c();
      throw error;
    }
    return fake;
  }

  /** Queries seen at `label` (all when absent). */
  at(label?: string): SeenQuery[] {
    return label === undefined ? this.seen : this.seen.filter((q) => q.label === label);
  }

  #answer(message: Uint8Array, transport: "udp" | "tcp"): Uint8Array | undefined {
    let q;
    try {
      q = parseQuery(message);
    } catch {
      return undefined;
    }
    const addresses = this.records[q.name.toLowerCase()];
    if (!addresses) return buildAnswer(q, { rcode: RCODE.NXDOMAIN });
    const answers: DnsRecord[] = q.type === TYPE.A
      ? addresses.map((address) => ({ name: q.name, type: TYPE.A, ttl: 60, address }))
      : [];
    const whole = buildAnswer(q, { rcode: RCODE.NOERROR, answers }); // a recursive answer: not authoritative
    return transport === "udp" ? truncateForUdp(whole, udpLimit(q)) : whole;
  }

  #record(b: ResolverBind, transport: "udp" | "tcp", from: string, message: Uint8Array) {
    try {
      const q = parseQuery(message);
      this.seen.push({ label: b.label, transport, from, name: q.name, type: q.type });
    } catch {
      this.seen.push({ label: b.label, transport, from, name: "(malformed)", type: 0 });
    }
  }

  #listen(b: ResolverBind) {
    // TCP on the port UDP got, so a bind that asked for port 0 serves both on one port, as a resolver does.
    const make = () => {
      const udp = Deno.listenDatagram({ transport: "udp", hostname: b.host, port: b.port });
      try {
        return { udp, tcp: Deno.listen({ hostname: b.host, port: (udp.addr as Deno.NetAddr).port }) };
      } catch (error) {
        udp.close();
        throw error;
      }
    };
    const { udp, tcp } = b.netns ? inNetns(b.netns, make) : make();
    this.#closers.push(() => udp.close(), () => tcp.close());
    this.ports.set(b.label, tcp.addr.port);
    this.#loops.push(
      (async () => {
        for await (const [message, from] of udp) {
          this.#record(b, "udp", (from as Deno.NetAddr).hostname, message);
          const reply = this.#answer(message, "udp");
          if (reply) await udp.send(reply, from).catch(() => {});
        }
      })().catch(() => {}),
      (async () => {
        for await (const conn of tcp) void this.#serveTcp(b, conn);
      })().catch(() => {}),
    );
  }

  async #serveTcp(b: ResolverBind, conn: Deno.TcpConn) {
    this.#closers.push(() => {
      try {
        conn.close();
      } catch { /* closed */ }
    });
    try {
      const head = new Uint8Array(2);
      for (;;) {
        if (!(await readFull(conn, head))) break;
        const message = new Uint8Array((head[0] << 8) | head[1]);
        if (!(await readFull(conn, message))) break;
        this.#record(b, "tcp", conn.remoteAddr.hostname, message);
        const reply = this.#answer(message, "tcp");
        if (!reply) break;
        const framed = new Uint8Array(2 + reply.length);
        framed.set([reply.length >> 8, reply.length & 0xff]);
        framed.set(reply, 2);
        await conn.write(framed);
      }
    } catch { /* reset */ }
    try {
      conn.close();
    } catch { /* closed */ }
  }

  async [Symbol.asyncDispose]() {
    for (const c of this.#closers) c();
    await Promise.all(this.#loops);
  }
}

async function readFull(conn: Deno.Conn, buf: Uint8Array): Promise<boolean> {
  let off = 0;
  while (off < buf.length) {
    const n = await conn.read(buf.subarray(off));
    if (n === null) return false;
    off += n;
  }
  return true;
}

/** A DNS query message for `name` (RD set; an OPT record offering `edns` octets when given), for unit tests. */
export function queryMessage(name: string, type: number = TYPE.A, opts: { id?: number; edns?: number } = {}) {
  const out: number[] = [];
  const id = opts.id ?? 0x1234;
  out.push(id >> 8, id & 0xff, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, opts.edns === undefined ? 0 : 1);
  for (const label of name.split(".")) {
    const bytes = new TextEncoder().encode(label);
    out.push(bytes.length, ...bytes);
  }
  out.push(0, type >> 8, type & 0xff, 0, 1);
  if (opts.edns !== undefined) out.push(0, 0, 41, opts.edns >> 8, opts.edns & 0xff, 0, 0, 0, 0, 0, 0);
  return Uint8Array.from(out);
}
