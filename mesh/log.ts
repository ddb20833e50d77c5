/**
 * Structured logging on pino, shared by every role. Each line carries a `component` field (`ca`, `ztunnel`,
 * `control`, ...). `LOG_LEVEL` (trace, debug, info, warn, error, fatal, silent; default info) and `LOG_FORMAT`
 * (`json`, or `plain` for people; default plain on a terminal, json otherwise) are read once, when the first
 * logger is made, and a bad value is a {@link LogConfigError} naming the variable and its value.
 *
 * Lines go to stderr through a buffered sonic-boom destination. Deno's `Deno.exit()` drops whatever is still
 * buffered (deno-platform.md), so every exit goes through {@link exitProcess}, which flushes first; an `exit`
 * hook flushes too, for paths that end through `process.exit` directly.
 *
 * @module
 */

import process from "node:process";
import pino from "pino";

/** A logger: pino's, with `component` bound. */
export type Logger = pino.Logger;

const LEVELS = ["trace", "debug", "info", "warn", "error", "fatal", "silent"] as const;
const FORMATS = ["json", "plain"] as const;

/** A logging variable with a value it cannot use. */
export class LogConfigError extends Error {
  readonly code = "LOG_CONFIG";
  constructor(message: string) {
    super(message);
    this.name = "LogConfigError";
  }
}

/** Resolved logging settings. */
export interface LogSettings {
  level: (typeof LEVELS)[number];
  format: (typeof FORMATS)[number];
}

/** Reads `LOG_LEVEL` and `LOG_FORMAT` from `env`; `isTerminal` picks the default format. */
export function readLogSettings(env: Record<string, string | undefined>, isTerminal: boolean): LogSettings {
  const level = (env.LOG_LEVEL || "info").toLowerCase();
  if (!(LEVELS as readonly string[]).includes(level)) {
    throw new LogConfigError(
      `Cannot use env var LOG_LEVEL=${JSON.stringify(env.LOG_LEVEL)}: expected one of ${LEVELS.join(", ")}`,
    );
  }
  const format = (env.LOG_FORMAT || (isTerminal ? "plain" : "json")).toLowerCase();
  if (!(FORMATS as readonly string[]).includes(format)) {
    throw new LogConfigError(
      `Cannot use env var LOG_FORMAT=${JSON.stringify(env.LOG_FORMAT)}: expected one of ${FORMATS.join(", ")}`,
    );
  }
  return { level: level as LogSettings["level"], format: format as LogSettings["format"] };
}

const LEVEL_NAMES: Record<number, string> = {
  10: "TRACE",
  20: "DEBUG",
  30: "INFO",
  40: "WARN",
  50: "ERROR",
  60: "FATAL",
};

/** Renders one pino JSON line as `time LEVEL component: msg key=value ...`. */
export function formatPlain(line: string): string {
  let rec: Record<string, unknown>;
  try {
    rec = JSON.parse(line);
  } catch {
    return line;
  }
  const { time, level, component, msg, pid: _pid, hostname: _host, ...rest } = rec;
  const when = typeof time === "number" ? new Date(time).toISOString() : String(time ?? "");
  const fields = Object.entries(rest).map(([k, v]) =>
    `${k}=${typeof v === "string" && !/\s/.test(v) ? v : JSON.stringify(v)}`
  );
  const head = `${when} ${(LEVEL_NAMES[level as number] ?? String(level)).padEnd(5)} ${component ?? "skiff"}: ${
    msg ?? ""
  }`;
  return `${[head, ...fields].join(" ")}\n`;
}

interface Root {
  logger: pino.Logger;
  destination: ReturnType<typeof pino.destination>;
}

let root: Root | undefined;
/** Fields every line of this thread carries ({@link logFromThreads}). */
let threadFields: Record<string, unknown> = {};
/** This thread's whole-lines destination, once {@link logFromThreads} was called. */
let wholeLines: WholeLines | undefined;

/** Linux's PIPE_BUF: a write to a pipe of at most this many bytes is never split or interleaved (pipe(7)). */
const PIPE_BUF = 4096;

/**
 * Lines to stderr, written asynchronously as sonic-boom's are (a slow reader of stderr never stalls the event
 * loop; lines wait in memory meanwhile), but each write(2) holds only whole lines, at most PIPE_BUF bytes of them,
 * so no other thread's write can land inside a line. A line longer than PIPE_BUF goes alone, and may be split.
 */
class WholeLines {
  readonly #queue: Uint8Array[] = [];
  readonly #encoder = new TextEncoder();
  #writing = false;
  /** Who waits for the queue to be written out ({@link WholeLines.flushed}). */
  #idle: (() => void)[] = [];

  write(s: string): boolean {
    this.#queue.push(this.#encoder.encode(s));
    if (!this.#writing) void this.#drain();
    return true;
  }

  /**
   * Resolves once every line queued so far is written, in order. A thread that ends (a worker about to be
   * terminated) waits for this: {@link WholeLines.flushSync} cannot wait for a write already under way, so lines
   * it writes may land before that write's.
   */
  flushed(): Promise<void> {
    if (!this.#writing && this.#queue.length === 0) return Promise.resolve();
    return new Promise((resolve) => this.#idle.push(resolve));
  }

  /** Writes what is queued at once, for a process about to exit (`exitProcess`). */
  flushSync(): void {
    while (this.#queue.length > 0) {
      const chunk = this.#next();
      for (let off = 0; off < chunk.length;) off += Deno.stderr.writeSync(chunk.subarray(off));
    }
  }

  /** The next write: whole lines up to PIPE_BUF bytes, or one longer line. */
  #next(): Uint8Array {
    let n = 0;
    let size = 0;
    while (n < this.#queue.length && (n === 0 || size + this.#queue[n].length <= PIPE_BUF)) {
      size += this.#queue[n++].length;
    }
    const parts = this.#queue.splice(0, n);
    if (parts.length === 1) return parts[0];
    const out = new Uint8Array(size);
    let off = 0;
    for (const p of parts) {
      out.set(p, off);
      off += p.length;
    }
    return out;
  }

  async #drain(): Promise<void> {
    this.#writing = true;
    try {
      while (this.#queue.length > 0) {
        const chunk = this.#next();
        for (let off = 0; off < chunk.length;) off += await Deno.stderr.write(chunk.subarray(off));
      }
    } catch {
      this.#queue.length = 0; // stderr is closed: nothing more can be written
    } finally {
      this.#writing = false;
      for (const resolve of this.#idle.splice(0)) resolve();
    }
  }
}

function makeRoot(): Root {
  const settings = readLogSettings(process.env, Deno.stderr.isTerminal());
  // No minLength: a daemon's lines (access logs above all) must appear when they happen, not 4 KiB later.
  const destination = pino.destination({ dest: 2, sync: false });
  const write = (s: string) => (wholeLines ?? destination).write(s);
  const stream = { write: settings.format === "plain" ? (s: string) => write(formatPlain(s)) : write };
  const logger = pino({
    level: settings.level,
    base: undefined,
    // A new object each time: pino merges the line's own fields into what mixin returns.
    mixin: () => ({ ...threadFields }),
    timestamp: pino.stdTimeFunctions.epochTime,
    formatters: { level: (_label: string, number: number) => ({ level: number }) },
    serializers: { err: pino.stdSerializers.err },
  }, stream);
  process.on("exit", () => flushLogs());
  return { logger, destination };
}

function flush(destination: { flushSync(): void }): void {
  try {
    destination.flushSync();
  } catch {
    // Nothing buffered yet, or stderr already closed: nothing more can be written.
  }
}

/**
 * The logger for a component. The first call reads `LOG_LEVEL` and `LOG_FORMAT`.
 * @throws {LogConfigError} when either variable has a value it cannot use.
 */
export function logger(component: string): Logger {
  root ??= makeRoot();
  return root.logger.child({ component });
}

/**
 * For a process whose threads all log to stderr (a proxy's worker threads, dataplane/proxy/workers.ts): every line
 * of this thread carries `fields` (`{ worker: 1 }`), and is written whole from now on ({@link WholeLines}).
 * Each thread has its own destination on fd 2, and sonic-boom writes whatever accumulated in one write of up to
 * 16 KiB (strace shows 15–16 KB writes under a burst); a pipe keeps a write whole only up to PIPE_BUF (4096
 * bytes): a longer one "may be interleaved, on arbitrary byte boundaries, with data written by other processes"
 * (pipe(7)), which could put another thread's line in the middle of one. Writing each line synchronously would
 * keep lines whole too, but stalls the thread whenever stderr's reader lags (a proxy under a load of 200
 * connections a second at debug level stopped answering in tests/ztunnel_restart_test.ts). Call it in every
 * thread, the main one included.
 */
export function logFromThreads(fields: Record<string, unknown>): void {
  threadFields = { ...fields };
  if (wholeLines) return;
  flushLogs();
  wholeLines = new WholeLines();
}

/** Writes out every buffered log line now. */
export function flushLogs(): void {
  if (root) flush(root.destination);
  if (wholeLines) flush(wholeLines);
}

/**
 * Waits until every buffered log line is written, in order: what a worker thread does before it ends (the
 * synchronous {@link flushLogs} may put its lines ahead of a write already under way).
 */
export async function flushLogsAsync(): Promise<void> {
  if (root) flush(root.destination);
  await wholeLines?.flushed();
}

/** Flushes the logs, then ends the process with `code`. Use this, never `Deno.exit`. */
export function exitProcess(code: number): never {
  flushLogs();
  process.exit(code);
}
