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

function makeRoot(): Root {
  const settings = readLogSettings(process.env, Deno.stderr.isTerminal());
  // No minLength: a daemon's lines (access logs above all) must appear when they happen, not 4 KiB later.
  const destination = pino.destination({ dest: 2, sync: false });
  const stream = settings.format === "plain"
    ? { write: (s: string) => destination.write(formatPlain(s)) }
    : destination;
  const logger = pino({
    level: settings.level,
    base: undefined,
    timestamp: pino.stdTimeFunctions.epochTime,
    formatters: { level: (_label: string, number: number) => ({ level: number }) },
    serializers: { err: pino.stdSerializers.err },
  }, stream);
  process.on("exit", () => flush(destination));
  return { logger, destination };
}

function flush(destination: Root["destination"]): void {
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

/** Writes out every buffered log line now. */
export function flushLogs(): void {
  if (root) flush(root.destination);
}

/** Flushes the logs, then ends the process with `code`. Use this, never `Deno.exit`. */
export function exitProcess(code: number): never {
  flushLogs();
  process.exit(code);
}
