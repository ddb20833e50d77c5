/**
 * ztunnel's config without a control plane (`--local-config FILE`), as upstream's `LOCAL_XDS_PATH`: a YAML
 * file of workloads, services and policies in the model's own form (mesh/workload.ts, mesh/authorization.ts).
 * For tests and single-node use; it stays after the control plane arrives.
 *
 * A bad file is an error that names the file, the line and the field (`local.yaml:12: workloads[1].addresses[0]:
 * expected an IPv4 or IPv6 address`). The caller keeps the last good config when a reload fails, so a typo
 * never takes the proxy down. Kubernetes-style YAML 1.1 booleans are read as such.
 *
 * ```yaml
 * workloads:
 *   - uid: Kubernetes//Pod/shop/web-1
 *     name: web-1
 *     namespace: shop
 *     addresses: [10.0.1.2]
 *     tunnelProtocol: HBONE
 * services: []
 * policies: []
 * ```
 *
 * @module
 */

import { LineCounter, parseDocument } from "yaml";
import { type Authorization, decodeAuthorization, policyKey } from "../../mesh/authorization.ts";
import { MeshState } from "../../mesh/store.ts";
import { lineOfField } from "../../mesh/yaml.ts";
import { Fields, ValidationError } from "../../mesh/validate.ts";
import { decodeService, decodeWorkload, type Service, serviceKey, type Workload } from "../../mesh/workload.ts";

/** Largest local config file read. */
export const MAX_LOCAL_CONFIG_BYTES = 16 * 1024 * 1024;

/** A local config file that cannot be used: file, line and field named. */
export class LocalConfigError extends Error {
  readonly code = "LOCAL_CONFIG";
  readonly file: string;
  readonly line?: number;
  readonly field?: string;
  constructor(file: string, message: string, opts: { line?: number; field?: string } = {}) {
    super(`${file}${opts.line ? `:${opts.line}` : ""}: ${message}`);
    this.name = "LocalConfigError";
    this.file = file;
    this.line = opts.line;
    this.field = opts.field;
  }
}

/** The contents of a local config file. */
export interface LocalConfig {
  workloads: Workload[];
  services: Service[];
  policies: Authorization[];
}

/**
 * Parses and validates a local config from its text.
 * @throws {LocalConfigError} naming `file`, the line and the field.
 */
export function parseLocalConfig(text: string, file: string): LocalConfig {
  const lines = new LineCounter();
  const doc = parseDocument(text, { version: "1.1", lineCounter: lines, prettyErrors: false, uniqueKeys: true });
  if (doc.errors.length > 0) {
    const e = doc.errors[0];
    throw new LocalConfigError(file, `not valid YAML: ${e.message.split("\n")[0]}`, {
      line: lines.linePos(e.pos[0]).line,
    });
  }
  const value = doc.toJS({ maxAliasCount: 100 }) ?? {};
  try {
    const f = Fields.of(value, "");
    const config: LocalConfig = {
      workloads: f.array("workloads", decodeWorkload),
      services: f.array("services", decodeService),
      policies: f.array("policies", decodeAuthorization),
    };
    f.done();
    checkUnique(config);
    return config;
  } catch (err) {
    if (err instanceof ValidationError) {
      throw new LocalConfigError(file, err.message, { line: lineOfField(doc, lines, err.field), field: err.field });
    }
    throw err;
  }
}

function checkUnique(c: LocalConfig): void {
  const once = <T>(items: T[], key: (x: T) => string, list: string) => {
    const seen = new Set<string>();
    items.forEach((x, i) => {
      const k = key(x);
      if (seen.has(k)) throw new ValidationError(`${list}[${i}]`, `${JSON.stringify(k)} is defined twice`);
      seen.add(k);
    });
  };
  once(c.workloads, (w) => w.uid, "workloads");
  once(c.services, serviceKey, "services");
  once(c.policies, policyKey, "policies");
}

/** Reads and parses a local config file. */
export async function readLocalConfig(file: string): Promise<LocalConfig> {
  return (await readLocalConfigText(file)).config;
}

/**
 * Reads and parses a local config file, and returns its text too: what ztunnel's worker threads are given (they
 * parse the same text again, as decoded objects lose their classes when posted to a thread).
 */
export async function readLocalConfigText(file: string): Promise<{ text: string; config: LocalConfig }> {
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(file);
  } catch (err) {
    throw new LocalConfigError(file, `cannot read: ${(err as Error).message}`);
  }
  if (info.size > MAX_LOCAL_CONFIG_BYTES) {
    throw new LocalConfigError(file, `is ${info.size} bytes, at most ${MAX_LOCAL_CONFIG_BYTES} are read`);
  }
  const text = await Deno.readTextFile(file);
  return { text, config: parseLocalConfig(text, file) };
}

/** A mesh state holding exactly what a local config says. */
export function stateOf(c: LocalConfig): MeshState {
  const state = new MeshState();
  for (const w of c.workloads) state.workloads.upsert(w);
  for (const s of c.services) state.services.upsert(s);
  for (const p of c.policies) state.policies.upsert(p);
  return state;
}
