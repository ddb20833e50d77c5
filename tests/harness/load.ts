/**
 * A steady load of new connections from inside a pod, for restart tests and benchmarks: `perSecond` connections
 * a second, each one a small exchange with an echo app (`tests/harness/ztunnel.ts`'s `echoApp`), each outcome
 * counted. In-flight connections are bounded, so a stalled path shows up as failures, not as memory.
 *
 * @module
 */

import { dialFrom } from "./tcp.ts";

/** Outcomes of the connections made so far. */
export interface LoadCounts {
  /** Connections started. */
  total: number;
  /** Answered with the expected echo. */
  ok: number;
  /** connect() failed (ECONNREFUSED, unreachable...). */
  refused: number;
  /** Reset by the peer after connecting. */
  reset: number;
  /** Closed (FIN) before any answer. */
  closed: number;
  /** No answer within the timeout. */
  timeout: number;
  /** Answered with something else, or another error. */
  other: number;
  /** The first few failures, for the report. */
  examples: string[];
}

/** Options of {@link newConnectionLoad}. */
export interface LoadOptions {
  netnsPath: string;
  ip: string;
  port: number;
  perSecond: number;
  /** Give a connection up after this long; default 5 s. */
  timeoutMs?: number;
  /** At most this many in flight; a tick that finds it full counts its connections as timed out. Default 1000. */
  maxInFlight?: number;
  /** The echo app's prefix before the echoed bytes; default "server:". */
  prefix?: string;
}

/** Starts the load; `stop()` ends it, waits for the connections in flight and returns the counts. */
export function newConnectionLoad(opts: LoadOptions): { counts: LoadCounts; stop(): Promise<LoadCounts> } {
  const counts: LoadCounts = { total: 0, ok: 0, refused: 0, reset: 0, closed: 0, timeout: 0, other: 0, examples: [] };
  const inFlight = new Set<Promise<void>>();
  const max = opts.maxInFlight ?? 1000;
  const timeoutMs = opts.timeoutMs ?? 5_000;
  const prefix = opts.prefix ?? "server:";
  const fail = (kind: "refused" | "reset" | "closed" | "timeout" | "other", what: string) => {
    counts[kind]++;
    if (counts.examples.length < 5) counts.examples.push(`${kind}: ${what}`);
  };
  const one = async (n: number) => {
    const message = `m${n}`;
    let conn: Deno.TcpConn;
    try {
      conn = await dialFrom(opts.netnsPath, opts.ip, opts.port);
    } catch (error) {
      return fail("refused", (error as Error).message);
    }
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      conn.close();
    }, timeoutMs);
    try {
      await conn.write(new TextEncoder().encode(message));
      const want = prefix + message;
      const buf = new Uint8Array(256);
      let got = "";
      while (got.length < want.length) {
        const r = await conn.read(buf.subarray(0));
        if (r === null) break;
        got += new TextDecoder().decode(buf.subarray(0, r));
      }
      if (got === want) counts.ok++;
      else if (got === "") fail("closed", "no answer");
      else fail("other", `answered ${JSON.stringify(got.slice(0, 60))}`);
    } catch (error) {
      const name = (error as Error).name;
      if (timedOut) fail("timeout", `after ${timeoutMs} ms`);
      else if (name === "ConnectionReset" || name === "BrokenPipe") fail("reset", (error as Error).message);
      else fail("other", `${name}: ${(error as Error).message}`);
    } finally {
      clearTimeout(timer);
      if (!timedOut) {
        try {
          conn.close();
        } catch { /* closed */ }
      }
    }
  };
  // Ticks of 20 ms; each starts the connections due since the start, so a late tick catches up.
  const started = performance.now();
  const timer = setInterval(() => {
    const due = Math.floor(((performance.now() - started) / 1000) * opts.perSecond);
    while (counts.total < due) {
      const n = counts.total++;
      if (inFlight.size >= max) {
        fail("timeout", "too many connections in flight");
        continue;
      }
      const p = one(n).finally(() => inFlight.delete(p));
      inFlight.add(p);
    }
  }, 20);
  let stopped: Promise<LoadCounts> | undefined;
  return {
    counts,
    stop() {
      stopped ??= (async () => {
        clearInterval(timer);
        while (inFlight.size > 0) await Promise.all([...inFlight]);
        return counts;
      })();
      return stopped;
    },
  };
}
