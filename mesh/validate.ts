/**
 * Runtime validation for documents that cross a boundary: the control-plane stream, local config files, the
 * node-agent handoff, manifests. Every failure is a {@link ValidationError} that names the field by its path
 * (`workload.addresses[1]`), so an operator sees what to fix; nothing here throws anything else on bad input.
 *
 * Written here rather than taken from a schema library: the model's decoders also fill Istio's defaults
 * (empty trust domain → `cluster.local`, capacity 1, ...) and canonicalize addresses, and the CNI plugin mode
 * must start without loading more than it needs. The helper is small; the decoders read like the proto.
 *
 * @module
 */

/** A document that does not fit the model; `field` is the path of the offending value. */
export class ValidationError extends Error {
  /** Stable code for callers that map errors (always `INVALID`). */
  readonly code = "INVALID";
  /** Path of the field at fault, e.g. `service.ports[0].targetPort`. */
  readonly field: string;
  /** What is wrong with it, e.g. `expected an integer from 1 to 65535, got 70000`. */
  readonly problem: string;

  constructor(field: string, problem: string) {
    super(`${field}: ${problem}`);
    this.name = "ValidationError";
    this.field = field;
    this.problem = problem;
  }
}

/** Shows a bad value in an error message, shortened so a huge document cannot flood the log. */
export function show(value: unknown): string {
  let text: string;
  try {
    text = typeof value === "string" ? JSON.stringify(value) : JSON.stringify(value) ?? String(value);
  } catch {
    text = String(value);
  }
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
}

/** Joins a path and a key the way the error messages print them. */
export function fieldPath(path: string, key: string | number): string {
  if (typeof key === "number") return `${path}[${key}]`;
  return /^[A-Za-z_][A-Za-z0-9_]*$/.test(key) ? (path ? `${path}.${key}` : key) : `${path}[${JSON.stringify(key)}]`;
}

/**
 * Reads the fields of one JSON object, each read checked and named by its path. Call {@link Fields.done} last:
 * a key nobody read is reported, so a misspelt field is an error rather than a silently ignored setting.
 */
export class Fields {
  readonly path: string;
  readonly #value: Record<string, unknown>;
  readonly #read = new Set<string>();

  private constructor(value: Record<string, unknown>, path: string) {
    this.#value = value;
    this.path = path;
  }

  /** Starts reading `value`, which must be a plain object. */
  static of(value: unknown, path: string): Fields {
    if (typeof value !== "object" || value === null || Array.isArray(value)) {
      throw new ValidationError(path, `expected an object, got ${show(value)}`);
    }
    return new Fields(value as Record<string, unknown>, path);
  }

  /** Whether the key is present (not undefined or null). */
  has(key: string): boolean {
    return this.#value[key] !== undefined && this.#value[key] !== null;
  }

  /** The raw value under `key`, marked as read. */
  raw(key: string): unknown {
    this.#read.add(key);
    const v = this.#value[key];
    return v === null ? undefined : v;
  }

  /** Path of a key, for nested decoders. */
  at(key: string): string {
    return fieldPath(this.path, key);
  }

  /** A required string; `pattern` (with its description) constrains it. */
  string(
    key: string,
    opts: { default?: string; nonEmpty?: boolean; max?: number; check?: Check<string> } = {},
  ): string {
    const v = this.raw(key);
    if (v === undefined) {
      if (opts.default !== undefined) return opts.default;
      throw new ValidationError(this.at(key), "is required");
    }
    return checkString(v, this.at(key), opts);
  }

  /** An optional string: undefined when absent or empty. */
  optionalString(key: string, opts: { max?: number; check?: Check<string> } = {}): string | undefined {
    const v = this.raw(key);
    if (v === undefined || v === "") return undefined;
    return checkString(v, this.at(key), opts);
  }

  /** An integer within [min, max]. */
  int(key: string, opts: { min: number; max: number; default?: number }): number {
    const v = this.raw(key);
    if (v === undefined) {
      if (opts.default !== undefined) return opts.default;
      throw new ValidationError(this.at(key), "is required");
    }
    return checkInt(v, this.at(key), opts.min, opts.max);
  }

  /** A boolean, `fallback` when absent. */
  bool(key: string, fallback: boolean): boolean {
    const v = this.raw(key);
    if (v === undefined) return fallback;
    if (typeof v !== "boolean") {
      throw new ValidationError(this.at(key), `expected true or false, got ${show(v)}`);
    }
    return v;
  }

  /** One of a fixed set of strings, `fallback` when absent. */
  oneOf<T extends string>(key: string, values: readonly T[], fallback: T): T {
    const v = this.raw(key);
    if (v === undefined || v === "") return fallback;
    return checkOneOf(v, this.at(key), values);
  }

  /** An array whose items are decoded by `item`; empty when absent. */
  array<T>(key: string, item: (value: unknown, path: string) => T, opts: { max?: number } = {}): T[] {
    const v = this.raw(key);
    if (v === undefined) return [];
    const path = this.at(key);
    if (!Array.isArray(v)) throw new ValidationError(path, `expected a list, got ${show(v)}`);
    if (opts.max !== undefined && v.length > opts.max) {
      throw new ValidationError(path, `has ${v.length} items, at most ${opts.max} are allowed`);
    }
    return v.map((x, i) => item(x, fieldPath(path, i)));
  }

  /** An object decoded by `decode`; undefined when absent. */
  optionalObject<T>(key: string, decode: (value: unknown, path: string) => T): T | undefined {
    const v = this.raw(key);
    return v === undefined ? undefined : decode(v, this.at(key));
  }

  /** A map from string keys to decoded values; empty when absent. */
  record<T>(key: string, decode: (value: unknown, path: string, key: string) => T): Record<string, T> {
    const v = this.raw(key);
    const out: Record<string, T> = {};
    if (v === undefined) return out;
    const f = Fields.of(v, this.at(key));
    for (const k of Object.keys(v as object)) out[k] = decode(f.raw(k), f.at(k), k);
    return out;
  }

  /** Fails on any key that was never read, naming it. */
  done(): void {
    for (const k of Object.keys(this.#value)) {
      if (!this.#read.has(k)) throw new ValidationError(fieldPath(this.path, k), "is not a known field");
    }
  }
}

/** A further check on a value: returns a problem description, or undefined when the value is fine. */
export type Check<T> = (value: T) => string | undefined;

/** Checks that `v` is a string, within `max` characters, non-empty if asked, and passes `check`. */
export function checkString(
  v: unknown,
  path: string,
  opts: { nonEmpty?: boolean; max?: number; check?: Check<string> } = {},
): string {
  if (typeof v !== "string") throw new ValidationError(path, `expected a string, got ${show(v)}`);
  if (opts.nonEmpty && v === "") throw new ValidationError(path, "must not be empty");
  const max = opts.max ?? 4096;
  if (v.length > max) {
    throw new ValidationError(path, `is ${v.length} characters long, at most ${max} are allowed`);
  }
  const problem = opts.check?.(v);
  if (problem) throw new ValidationError(path, `${problem}, got ${show(v)}`);
  return v;
}

/** Checks that `v` is one of a fixed set of strings. */
export function checkOneOf<T extends string>(v: unknown, path: string, values: readonly T[]): T {
  if (typeof v !== "string" || !(values as readonly string[]).includes(v)) {
    throw new ValidationError(path, `expected one of ${values.join(", ")}, got ${show(v)}`);
  }
  return v as T;
}

/** Checks that `v` is an integer in [min, max]. */
export function checkInt(v: unknown, path: string, min: number, max: number): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max) {
    throw new ValidationError(path, `expected an integer from ${min} to ${max}, got ${show(v)}`);
  }
  return v;
}

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

/** Kubernetes DNS-1123 label (namespaces, most names): at most 63 lowercase alphanumerics and '-'. */
export const dnsLabel: Check<string> = (v) =>
  v.length <= 63 && DNS_LABEL.test(v)
    ? undefined
    : "expected a DNS label (lowercase letters, digits and '-', at most 63 characters)";

/** Kubernetes DNS-1123 subdomain (service accounts, hostnames): dot-separated labels, at most 253 characters. */
export const dnsSubdomain: Check<string> = (v) =>
  v.length <= 253 && v.split(".").every((l) => l.length <= 63 && DNS_LABEL.test(l))
    ? undefined
    : "expected a DNS subdomain (dot-separated lowercase labels, at most 253 characters)";
