/**
 * Forwarding what the mesh does not answer to the node's resolvers (upstream's `src/dns/forwarder.rs`, which wraps
 * hickory with the system's `resolv.conf`), from ztunnel's own network namespace, never the pod's: the node's
 * resolver is what a VM or a pod without cluster DNS would have used, and a query ztunnel sends is not captured
 * again.
 *
 * Each upstream query goes out on a fresh socket with a fresh random id (RFC 5452 §9.2: port and id both
 * unpredictable), over the transport the client used: a UDP question whose answer comes back truncated reaches the
 * client truncated, and the client asks again over TCP, which we forward over TCP. A response is accepted only
 * from the server asked, with the id sent and the question asked (RFC 5452 §9.1); anything else is dropped and the
 * wait goes on. Servers are tried in `resolv.conf` order, each for its `options timeout:` (5 s by default, as
 * glibc's), and all failing is SERVFAIL to the client, as upstream answers a forwarding error.
 *
 * Answers are cached by (name lower-cased, type, class, transport, CD), for their smallest TTL capped at 5 minutes, at
 * most {@link DEFAULT_CACHE_ENTRIES} entries (hickory's default 4096 in upstream), the least recently used evicted.
 * Truncated answers and SERVFAIL are never cached.
 *
 * @module
 */

import net from "node:net";
import { parseResponse, withId } from "./wire.ts";

/** Most entries the cache keeps (upstream hickory's `cache_size`). */
export const DEFAULT_CACHE_ENTRIES = 4096;
/** Longest a forwarded answer is cached, whatever its TTL says. */
export const MAX_CACHE_TTL_SECONDS = 300;
/** glibc's default per-server timeout (`resolv.conf(5)`, `options timeout:`). */
export const DEFAULT_TIMEOUT_MS = 5_000;
/** At most this many upstream queries in flight per ztunnel; past it, SERVFAIL at once. */
export const MAX_IN_FLIGHT = 256;
/**
 * At most this many of them for one pod: a pod asking for names its resolver never answers (each held up to three
 * servers' timeouts) would otherwise take all {@link MAX_IN_FLIGHT} and every other pod on the node would get
 * SERVFAIL. A quarter: it takes four such pods, not one, to fill the node's share.
 */
export const MAX_IN_FLIGHT_PER_CLIENT = MAX_IN_FLIGHT / 4;
/** glibc reads at most three `nameserver` lines (`MAXNS`). */
const MAXNS = 3;

/** The resolvers and timeout read from a `resolv.conf`. */
export interface UpstreamConfig {
  /** IPv4 addresses of the servers, port 53, in file order. */
  servers: string[];
  timeoutMs: number;
  /** The servers' port: 53 (resolv.conf cannot say another); tests on loopback set their own. */
  port?: number;
}

/** A forwarding failure (no server answered, or none is configured). */
export class DnsForwardError extends Error {
  readonly code = "DNS_FORWARD";
  constructor(message: string) {
    super(message);
    this.name = "DnsForwardError";
  }
}

/**
 * Reads `resolv.conf` text: `nameserver` lines (IPv4 only: ztunnel forwards from an IPv4 socket; the first three,
 * as glibc) and `options timeout:N` (seconds, 1..30). `search` and `ndots` are not used: the client's own resolver
 * already applied them to the name it asks (as upstream drops them before building its forwarder).
 */
export function parseResolvConf(text: string): UpstreamConfig {
  const servers: string[] = [];
  let timeoutMs = DEFAULT_TIMEOUT_MS;
  for (const raw of text.split("\n")) {
    const line = raw.replace(/[#;].*$/, "").trim();
    const [key, ...rest] = line.split(/\s+/);
    if (key === "nameserver" && rest[0] && /^\d{1,3}(\.\d{1,3}){3}$/.test(rest[0])) {
      if (servers.length < MAXNS) servers.push(rest[0]);
    } else if (key === "options") {
      for (const o of rest) {
        const m = /^timeout:(\d+)$/.exec(o);
        if (m) timeoutMs = Math.min(30, Math.max(1, Number(m[1]))) * 1000;
      }
    }
  }
  return { servers, timeoutMs };
}

/** A bounded LRU of forwarded answers, each until its expiry. */
export class AnswerCache {
  #entries = new Map<string, { response: Uint8Array; expires: number }>();
  readonly max: number;
  #now: () => number;

  constructor(max = DEFAULT_CACHE_ENTRIES, now: () => number = Date.now) {
    this.max = max;
    this.#now = now;
  }

  get size(): number {
    return this.#entries.size;
  }

  /** The cached answer (id as stored: the caller sets its own), or undefined when absent or expired. */
  get(key: string): Uint8Array | undefined {
    const e = this.#entries.get(key);
    if (!e) return undefined;
    this.#entries.delete(key);
    if (e.expires <= this.#now()) return undefined;
    this.#entries.set(key, e); // most recently used last
    return e.response;
  }

  /** Keeps `response` for `ttlSeconds` (capped); a TTL of 0 is not kept. Evicts the least recently used. */
  set(key: string, response: Uint8Array, ttlSeconds: number): void {
    const ttl = Math.min(ttlSeconds, MAX_CACHE_TTL_SECONDS);
    if (ttl <= 0 || this.max <= 0) return;
    this.#entries.delete(key);
    this.#entries.set(key, { response, expires: this.#now() + ttl * 1000 });
    while (this.#entries.size > this.max) this.#entries.delete(this.#entries.keys().next().value!);
  }
}

/**
 * The cache key of a question. CD is part of it: a validating resolver answers a CD query with data that failed
 * DNSSEC validation (RFC 4035 §3.2.2), which must not reach a client that asked for validated data.
 */
export function cacheKey(
  name: string,
  type: number,
  klass: number,
  transport: "udp" | "tcp",
  checkingDisabled = false,
): string {
  return `${name.toLowerCase()}\0${type}\0${klass}\0${transport}${checkingDisabled ? "\0cd" : ""}`;
}

/** Sends questions upstream and caches the answers. */
export class Forwarder {
  #upstream: () => UpstreamConfig;
  readonly cache: AnswerCache;
  #inFlight = 0;
  readonly #inFlightBy = new Map<string, number>();
  /** Queries sent upstream, for tests and metrics (`istio_dns_upstream_requests_total`). */
  upstreamRequests = 0;
  upstreamFailures = 0;

  constructor(opts: { upstream: () => UpstreamConfig; cacheEntries?: number }) {
    this.#upstream = opts.upstream;
    this.cache = new AnswerCache(opts.cacheEntries);
  }

  /**
   * Forwards `query` (the client's bytes) and returns the answer with the client's id. `question` is the
   * query's question section, `key` its {@link cacheKey}, `client` the pod asking (bounded by
   * {@link MAX_IN_FLIGHT_PER_CLIENT}).
   */
  async forward(
    query: Uint8Array,
    question: Uint8Array,
    key: string,
    transport: "udp" | "tcp",
    client = "",
  ): Promise<Uint8Array> {
    const clientId = (query[0] << 8) | query[1];
    const cached = this.cache.get(key);
    if (cached && sameShape(cached, question)) {
      // The question as this client wrote it: a 0x20 resolver checks its own case comes back; the answers'
      // owner names, compressed to point at it, follow.
      const answer = withId(cached, clientId);
      answer.set(question, 12);
      return answer;
    }
    const { servers, timeoutMs, port = 53 } = this.#upstream();
    if (servers.length === 0) throw new DnsForwardError("forward DNS query: no IPv4 nameserver in resolv.conf");
    if (this.#inFlight >= MAX_IN_FLIGHT) {
      throw new DnsForwardError(`forward DNS query: ${MAX_IN_FLIGHT} upstream queries already in flight`);
    }
    const mine = this.#inFlightBy.get(client) ?? 0;
    if (mine >= MAX_IN_FLIGHT_PER_CLIENT) {
      throw new DnsForwardError(
        `forward DNS query: ${MAX_IN_FLIGHT_PER_CLIENT} upstream queries of this pod already in flight`,
      );
    }
    this.#inFlight++;
    this.#inFlightBy.set(client, mine + 1);
    try {
      const errors: string[] = [];
      for (const server of servers) {
        const id = crypto.getRandomValues(new Uint16Array(1))[0];
        this.upstreamRequests++;
        try {
          const message = withId(query, id);
          const response = transport === "udp"
            ? await udpExchange(server, port, message, question, id, timeoutMs)
            : await tcpExchange(server, port, message, question, id, timeoutMs);
          const facts = parseResponse(response, question);
          if (!facts.truncated && facts.rcode !== 2 && facts.minTtl !== undefined) {
            this.cache.set(key, response, facts.minTtl);
          }
          return withId(response, clientId);
        } catch (error) {
          this.upstreamFailures++;
          errors.push(`${server}: ${(error as Error).message}`);
        }
      }
      throw new DnsForwardError(`forward DNS query: no server answered (${errors.join("; ")})`);
    } finally {
      this.#inFlight--;
      const left = this.#inFlightBy.get(client)! - 1;
      if (left === 0) this.#inFlightBy.delete(client);
      else this.#inFlightBy.set(client, left);
    }
  }
}

/** Whether `response`'s question is `question` but for case (so as long); another spelling of the name is a miss. */
function sameShape(response: Uint8Array, question: Uint8Array): boolean {
  try {
    parseResponse(response, question);
    return true;
  } catch {
    return false;
  }
}

/** One UDP exchange on a fresh socket: responses from elsewhere, or to another id or question, are ignored. */
async function udpExchange(
  server: string,
  port: number,
  message: Uint8Array,
  question: Uint8Array,
  id: number,
  timeoutMs: number,
): Promise<Uint8Array> {
  const conn = Deno.listenDatagram({ transport: "udp", hostname: "0.0.0.0", port: 0 });
  const timer = setTimeout(() => conn.close(), timeoutMs);
  try {
    await conn.send(message, { transport: "udp", hostname: server, port });
    for (;;) {
      let got: [Uint8Array, Deno.Addr];
      try {
        got = await conn.receive();
      } catch (error) {
        // Closed by the timer, or the server's port unreachable (ICMP), which Linux reports on the next receive.
        const why = (error as Error).name === "BadResource"
          ? `within ${timeoutMs} ms`
          : `(${(error as Error).message})`;
        throw new DnsForwardError(`no answer over UDP ${why}`);
      }
      const [data, from] = got;
      if (from.transport !== "udp" || from.hostname !== server || from.port !== port) continue;
      if (data.length < 12 || ((data[0] << 8) | data[1]) !== id) continue;
      try {
        parseResponse(data, question);
      } catch {
        continue;
      }
      return data;
    }
  } finally {
    clearTimeout(timer);
    try {
      conn.close();
    } catch { /* closed by the timer */ }
  }
}

/** One TCP exchange: 2-octet length, the message; then the same framing back (RFC 1035 §4.2.2). */
function tcpExchange(
  server: string,
  port: number,
  message: Uint8Array,
  question: Uint8Array,
  id: number,
  timeoutMs: number,
): Promise<Uint8Array> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: server, port });
    let buffered = new Uint8Array(0);
    const done = (error: Error | undefined, value?: Uint8Array) => {
      clearTimeout(timer);
      socket.destroy();
      if (error) reject(error);
      else resolve(value!);
    };
    const timer = setTimeout(() => done(new DnsForwardError(`no answer over TCP within ${timeoutMs} ms`)), timeoutMs);
    socket.on("error", (e) => done(new DnsForwardError(`TCP: ${e.message}`)));
    socket.on("close", () => done(new DnsForwardError("TCP: closed before a whole answer")));
    socket.on("connect", () => {
      const framed = new Uint8Array(2 + message.length);
      framed[0] = message.length >> 8;
      framed[1] = message.length & 0xff;
      framed.set(message, 2);
      socket.write(framed);
    });
    socket.on("data", (chunk: Uint8Array) => {
      const next = new Uint8Array(buffered.length + chunk.length);
      next.set(buffered);
      next.set(chunk, buffered.length);
      buffered = next;
      if (buffered.length < 2) return;
      const length = (buffered[0] << 8) | buffered[1];
      if (buffered.length < 2 + length) return;
      const data = buffered.slice(2, 2 + length);
      if (((data[0] << 8) | data[1]) !== id) return done(new DnsForwardError("TCP: answer with another id"));
      try {
        parseResponse(data, question);
      } catch (error) {
        return done(new DnsForwardError(`TCP: ${(error as Error).message}`));
      }
      done(undefined, data);
    });
  });
}
