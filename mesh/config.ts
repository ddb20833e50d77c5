/**
 * Configuration from flags and environment, read once per process, validated, and logged. Each mode declares
 * its options (flag, environment variable, parser, default); {@link readConfig} turns argv and the environment
 * into typed values, a flag winning over its variable. Errors name the flag or variable and the value:
 * `Cannot parse env var SKIFF_CA_TTL="abc": expected a duration such as 24h, 90m or 30s`.
 *
 * Written here rather than on `node:util` parseArgs so that flags and environment variables share one
 * parser, one error wording and one usage text.
 *
 * @module
 */

import { DEFAULT_TRUST_DOMAIN, trustDomainProblem } from "./identity.ts";

/** A flag or argument the command does not take: the caller prints the usage and exits 2. */
export class UsageError extends Error {
  readonly code = "USAGE";
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

/** A flag or variable with a value that cannot be used: the caller prints the message and exits 2. */
export class ConfigError extends Error {
  readonly code = "CONFIG";
  constructor(message: string) {
    super(message);
    this.name = "ConfigError";
  }
}

/** Turns the text of a flag or variable into a value; returns undefined when the text is not valid. */
export interface Parser<T> {
  /** What a valid value looks like, for error messages: "an integer from 1 to 65535". */
  expected: string;
  parse(raw: string): T | undefined;
  /** A switch: `--flag` alone means true. */
  boolean?: true;
}

/** One option of a command. */
export interface Option<T> {
  /** Long flag name without dashes. */
  flag: string;
  /** Environment variable that sets it when the flag is absent. */
  env?: string;
  help: string;
  parser: Parser<T>;
  /** Used when neither flag nor variable is given. */
  default?: T;
  /** Fails when neither flag nor variable is given. */
  required?: boolean;
  /** Never logged. */
  secret?: boolean;
}

/** The options of a command. */
export type Spec = Record<string, Option<unknown>>;

/** The values a spec yields. */
export type Values<S extends Spec> = { [K in keyof S]: S[K] extends Option<infer T> ? T : never };

/** Declares an option, keeping its value type. */
export function option<T>(o: Option<T>): Option<T> {
  return o;
}

/** Parsers for common kinds of values. */
export const parsers = {
  string(expected = "a non-empty string"): Parser<string> {
    return { expected, parse: (raw) => (raw === "" ? undefined : raw) };
  },
  int(min: number, max: number): Parser<number> {
    return {
      expected: `an integer from ${min} to ${max}`,
      parse: (raw) => {
        if (!/^-?\d+$/.test(raw)) return undefined;
        const n = Number(raw);
        return n >= min && n <= max ? n : undefined;
      },
    };
  },
  oneOf<T extends string>(values: readonly T[]): Parser<T> {
    return {
      expected: `one of ${values.join(", ")}`,
      parse: (raw) => ((values as readonly string[]).includes(raw) ? raw as T : undefined),
    };
  },
  bool(): Parser<boolean> {
    return {
      expected: "true or false",
      boolean: true,
      parse: (
        raw,
      ) => (raw === "true" || raw === "1" ? true : raw === "false" || raw === "0" ? false : undefined),
    };
  },
  /** Milliseconds from `1h30m`, `24h`, `90s`, `500ms`, or `0`. */
  duration(): Parser<number> {
    return { expected: "a duration such as 24h, 90m or 30s", parse: parseDuration };
  },
};

/** `--trust-domain` / `SKIFF_TRUST_DOMAIN`, shared by every mode that signs or checks identities. */
export const trustDomainOption: Option<string> = {
  flag: "trust-domain",
  env: "SKIFF_TRUST_DOMAIN",
  help: "the mesh trust domain",
  parser: { expected: "a trust domain such as cluster.local", parse: (s) => (trustDomainProblem(s) ? undefined : s) },
  default: DEFAULT_TRUST_DOMAIN,
};

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** Parses a Go-style duration (`1h30m`, `500ms`, `90d`) into milliseconds; undefined when invalid. */
export function parseDuration(raw: string): number | undefined {
  if (raw === "0") return 0;
  const re = /(\d+(?:\.\d+)?)(ms|s|m|h|d)/y;
  let total = 0;
  let at = 0;
  while (at < raw.length) {
    re.lastIndex = at;
    const m = re.exec(raw);
    if (!m) return undefined;
    total += Number(m[1]) * UNITS[m[2]];
    at = re.lastIndex;
  }
  return raw.length > 0 && Number.isFinite(total) ? Math.round(total) : undefined;
}

/** Formats milliseconds the way {@link parseDuration} reads them. */
export function formatDuration(ms: number): string {
  if (ms === 0) return "0";
  if (ms % 3_600_000 === 0) return `${ms / 3_600_000}h`;
  if (ms % 60_000 === 0) return `${ms / 60_000}m`;
  if (ms % 1000 === 0) return `${ms / 1000}s`;
  return `${ms}ms`;
}

/** What {@link readConfig} returns: the values, the positional arguments, and whether help was asked for. */
export interface Parsed<S extends Spec> {
  values: Values<S>;
  positionals: string[];
  help: boolean;
}

/**
 * Reads a command's options from `argv` (the arguments after the command words) and `env`.
 * @throws {UsageError} for an unknown flag, a flag without its value, or an unexpected argument.
 * @throws {ConfigError} for a value that does not parse, or a required option that is missing.
 */
export function readConfig<S extends Spec>(
  command: string,
  spec: S,
  argv: readonly string[],
  env: Record<string, string | undefined>,
  positionals: { max: number } = { max: 0 },
): Parsed<S> {
  const byFlag = new Map(Object.entries(spec).map(([k, o]) => [o.flag, [k, o] as const]));
  const fromFlags = new Map<string, string>();
  const rest: string[] = [];
  let help = false;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "-h" || arg === "--help") {
      help = true;
      continue;
    }
    if (arg === "--") {
      rest.push(...argv.slice(i + 1));
      break;
    }
    if (!arg.startsWith("-")) {
      rest.push(arg);
      continue;
    }
    const body = arg.startsWith("--") ? arg.slice(2) : "";
    const eq = body.indexOf("=");
    const name = eq < 0 ? body : body.slice(0, eq);
    const entry = byFlag.get(name);
    if (!entry) throw new UsageError(`${command}: unknown flag ${arg.split("=")[0]}`);
    const [key, opt] = entry;
    let value: string;
    if (eq >= 0) value = body.slice(eq + 1);
    else if (opt.parser.boolean) value = "true";
    else if (i + 1 < argv.length) value = argv[++i];
    else throw new UsageError(`${command}: flag --${name} needs a value (${opt.parser.expected})`);
    fromFlags.set(key, value);
  }
  if (rest.length > positionals.max) {
    throw new UsageError(`${command}: unexpected argument ${JSON.stringify(rest[positionals.max])}`);
  }
  const values: Record<string, unknown> = {};
  for (const [key, opt] of Object.entries(spec)) {
    const flagValue = fromFlags.get(key);
    const envValue = opt.env === undefined ? undefined : env[opt.env];
    let raw: string | undefined;
    let source: string;
    if (flagValue !== undefined) {
      raw = flagValue;
      source = `flag --${opt.flag}`;
    } else if (envValue !== undefined && envValue !== "") {
      raw = envValue;
      source = `env var ${opt.env}`;
    } else {
      if (opt.required && !help) {
        throw new ConfigError(
          `${command}: missing required flag --${opt.flag}${opt.env ? ` (or env var ${opt.env})` : ""}`,
        );
      }
      values[key] = opt.default;
      continue;
    }
    const parsed = opt.parser.parse(raw);
    if (parsed === undefined) {
      const shown = opt.secret ? "<redacted>" : JSON.stringify(raw);
      throw new ConfigError(`Cannot parse ${source}=${shown}: expected ${opt.parser.expected}`);
    }
    values[key] = parsed;
  }
  return { values: values as Values<S>, positionals: rest, help };
}

/** The config as it may be logged: secrets replaced. */
export function loggable<S extends Spec>(spec: S, values: Values<S>): Record<string, unknown> {
  return Object.fromEntries(
    Object.entries(values).map(([k, v]) => [k, spec[k]?.secret && v !== undefined ? "<redacted>" : v]),
  );
}

/** Usage lines for a command's options. */
export function describeOptions(spec: Spec): string {
  const rows = Object.values(spec).map((o) => {
    const left = `  --${o.flag}${o.parser.boolean ? "" : " VALUE"}`;
    const shown = typeof o.default === "number" && o.parser.expected.startsWith("a duration")
      ? formatDuration(o.default)
      : JSON.stringify(o.default);
    const def = o.default !== undefined && o.default !== false ? ` (default ${shown})` : "";
    const env = o.env ? ` [env ${o.env}]` : "";
    return `${left.padEnd(28)} ${o.help}${def}${env}`;
  });
  return rows.join("\n");
}
