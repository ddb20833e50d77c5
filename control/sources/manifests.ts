/**
 * The manifests source of `skiff control`: a directory of Kubernetes-shaped YAML (default `/etc/skiff/manifests`),
 * read the way `kubectl apply -f DIR` reads one: the `.yaml`, `.yml` and `.json` files directly in it, in name
 * order, each holding one or more `---`-separated documents. Hidden files (editor swap files, the `..data` links of
 * a mounted ConfigMap) are skipped.
 *
 * This module reads the envelope every object shares (apiVersion, kind, metadata), has each kind's reader
 * (control/build) decode the spec, and says which objects a file declares. A bad document is reported with its file, line and
 * field, and never costs anything else: the other documents of the file still count, and {@link ManifestSet}
 * keeps the last good version of an object whose new version is broken.
 *
 * @module
 */

import { join } from "node:path";
import { Composer, type Document, LineCounter, Parser } from "yaml";
import { dnsLabel, dnsSubdomain, Fields, ValidationError } from "../../mesh/validate.ts";
import { lineOfField } from "../../mesh/yaml.ts";
import type { Origin } from "../build/common.ts";
import { readSpec } from "../build/mod.ts";

/** Largest manifest file read; a larger one is reported and its objects are kept as they were. */
export const MAX_MANIFEST_BYTES = 8 * 1024 * 1024;

/** The kinds Skiff reads, by `apiVersion/kind`, and whether they live in a namespace. */
export const MANIFEST_KINDS: Readonly<Record<string, { namespaced: boolean }>> = {
  "v1/Namespace": { namespaced: false },
  "v1/Node": { namespaced: false },
  "v1/Pod": { namespaced: true },
  "v1/Service": { namespaced: true },
  "v1/ServiceAccount": { namespaced: true },
  "networking.istio.io/v1/WorkloadEntry": { namespaced: true },
  "networking.istio.io/v1beta1/WorkloadEntry": { namespaced: true },
  "security.istio.io/v1/AuthorizationPolicy": { namespaced: true },
  "security.istio.io/v1beta1/AuthorizationPolicy": { namespaced: true },
  "security.istio.io/v1/PeerAuthentication": { namespaced: true },
  "security.istio.io/v1beta1/PeerAuthentication": { namespaced: true },
  "gateway.networking.k8s.io/v1/Gateway": { namespaced: true },
  "gateway.networking.k8s.io/v1beta1/Gateway": { namespaced: true },
  "gateway.networking.k8s.io/v1/HTTPRoute": { namespaced: true },
  "gateway.networking.k8s.io/v1beta1/HTTPRoute": { namespaced: true },
};

/** One object declared in a manifest file. */
export interface ManifestObject {
  apiVersion: string;
  kind: string;
  /** Empty for cluster-scoped kinds (Namespace). */
  namespace: string;
  name: string;
  labels: Record<string, string>;
  annotations: Record<string, string>;
  /** The kind's spec as its reader decoded it (control/build). */
  spec: unknown;
  /** Where it was declared. */
  file: string;
  line: number;
  /**
   * The whole document as JSON: equal digests, unchanged object. The parsed document itself is not kept (the
   * spec is), which matters with ten thousand pods.
   */
  digest: string;
}

/** A document that could not be used: file, line and field named. */
export interface ManifestProblem {
  file: string;
  line?: number;
  field?: string;
  message: string;
  /** The object the document declares, when that much could be read (its last good version stays). */
  key?: string;
}

/** `kind/namespace/name`: the identity of an object across reloads (Kubernetes' own). */
export function objectKey(o: { kind: string; namespace: string; name: string }): string {
  return `${o.kind}/${o.namespace}/${o.name}`;
}

/** Formats a problem the way logs and the status endpoint show it: `file:line: field: message`. */
export function formatProblem(p: ManifestProblem): string {
  return `${p.file}${p.line ? `:${p.line}` : ""}: ${p.field ? `${p.field}: ` : ""}${p.message}`;
}

/** What one file declares. `complete` is false when some document's identity could not be read at all. */
export interface ParsedFile {
  objects: ManifestObject[];
  problems: ManifestProblem[];
  complete: boolean;
}

/** Parses one manifest file's text. Never throws on bad input. */
export function parseManifestFile(text: string, file: string): ParsedFile {
  const lines = new LineCounter();
  const out: ParsedFile = { objects: [], problems: [], complete: true };
  // What `parseAllDocuments` does, one document at a time: a file of 500 pods never has the parse trees of all of
  // them at once (a whole file's trees were most of the control plane's peak memory at start).
  const composer = new Composer({ version: "1.1", prettyErrors: false, uniqueKeys: true });
  const docs = composer.compose(new Parser(lines.addNewLine).parse(text));
  for (;;) {
    let next: IteratorResult<Document.Parsed>;
    try {
      next = docs.next();
    } catch (error) {
      return {
        objects: [],
        problems: [{ file, message: `not valid YAML: ${(error as Error).message.split("\n")[0]}` }],
        complete: false,
      };
    }
    if (next.done) return out;
    readDocument(next.value, lines, file, out);
  }
}

/** Reads one parsed document of `file` into `out`. */
function readDocument(doc: Document.Parsed, lines: LineCounter, file: string, out: ParsedFile): void {
  const line = (pos: number) => lines.linePos(pos).line;
  const start = doc.contents?.range?.[0] ?? doc.range[0];
  if (doc.errors.length > 0) {
    const e = doc.errors[0];
    out.problems.push({ file, line: line(e.pos[0]), message: `not valid YAML: ${e.message.split("\n")[0]}` });
    out.complete = false;
    return;
  }
  let value: unknown;
  try {
    value = doc.toJS({ maxAliasCount: 100 });
  } catch (error) {
    out.problems.push({ file, line: line(start), message: (error as Error).message.split("\n")[0] });
    out.complete = false;
    return;
  }
  if (value === null || value === undefined) return; // an empty document (a trailing `---`, comments only)
  const read = readObject(value, file, line(start), (field) => lineOfField(doc, lines, field));
  if ("object" in read) {
    out.objects.push(read.object);
  } else {
    out.problems.push(read.problem);
    if (read.problem.key === undefined) out.complete = false;
  }
}

/**
 * Reads one object (its envelope, then its kind's spec) from a document's value. `lineOf` maps a field path to
 * its line, where the source has lines; `origin` is the source (the Kubernetes source passes its own). Never
 * throws on bad input.
 */
export function readObject(
  value: unknown,
  file: string,
  line: number,
  lineOf: (field: string) => number | undefined = () => undefined,
  origin: Origin = "manifests",
): { object: ManifestObject } | { problem: ManifestProblem } {
  const envelope = readEnvelope(value);
  if ("problem" in envelope) {
    const { field, problem, key } = envelope;
    return { problem: { file, line: lineOf(field) ?? line, field, message: problem, key } };
  }
  const document = value as Record<string, unknown>;
  try {
    const spec = readSpec(envelope.kind, document, origin);
    return { object: { ...envelope, spec, file, line, digest: JSON.stringify(document) } };
  } catch (error) {
    if (!(error instanceof ValidationError)) throw error;
    return {
      problem: {
        file,
        line: lineOf(error.field) ?? line,
        field: error.field,
        message: error.problem,
        key: objectKey(envelope),
      },
    };
  }
}

type Envelope = Omit<ManifestObject, "spec" | "file" | "line" | "digest">;

function readEnvelope(value: unknown): Envelope | { field: string; problem: string; key?: string } {
  let key: string | undefined;
  try {
    const f = Fields.of(value, "");
    const apiVersion = f.string("apiVersion");
    const kind = f.string("kind");
    const type = MANIFEST_KINDS[`${apiVersion}/${kind}`];
    if (!type) {
      const known = [...new Set(Object.keys(MANIFEST_KINDS).map((k) => k.slice(k.lastIndexOf("/") + 1)))];
      throw new ValidationError(
        "kind",
        `${apiVersion}/${kind} is not a kind Skiff reads (it reads ${known.join(", ")})`,
      );
    }
    const m = Fields.of(f.raw("metadata"), "metadata");
    const name = m.string("name", { max: 253, check: kind === "Namespace" ? dnsLabel : dnsSubdomain });
    const namespace = type.namespaced ? m.optionalString("namespace", { check: dnsLabel }) ?? "default" : "";
    if (!type.namespaced && m.has("namespace")) {
      throw new ValidationError("metadata.namespace", `a ${kind} is not namespaced`);
    }
    key = objectKey({ kind, namespace, name });
    const labels = m.record("labels", stringValue);
    const annotations = m.record("annotations", stringValue);
    // Other metadata (uid, resourceVersion, ownerReferences, ...) is Kubernetes' bookkeeping: read, not used.
    return { apiVersion, kind, namespace, name, labels, annotations };
  } catch (error) {
    if (error instanceof ValidationError) return { field: error.field, problem: error.problem, key };
    throw error;
  }
}

function stringValue(value: unknown, path: string): string {
  if (typeof value !== "string") {
    throw new ValidationError(path, `expected a string (quote numbers and booleans), got ${JSON.stringify(value)}`);
  }
  return value;
}

/**
 * The objects the manifests declare now, with the rule that a broken document loses nothing: an object whose new
 * version is broken keeps its last good version, and when a file has a document whose identity cannot be read
 * (bad YAML, no kind), every object the file declared before stays until the file is good again, since a removal
 * cannot be told from a breakage. An object declared in two files belongs to the file that declared it first.
 */
export class ManifestSet {
  #byFile = new Map<string, Map<string, ManifestObject>>();
  #problems = new Map<string, ManifestProblem[]>();
  /** {@link objects}, kept until a file changes: every build asks for it, and most reloads change nothing. */
  #objects?: Map<string, ManifestObject>;
  /** Per file, the stat signature of the version last read, so an unchanged file is not parsed again. */
  readonly signatures = new Map<string, string>();

  /** Starts from objects known good before (the store's, at start-up); they stay until their files say otherwise. */
  seed(objects: ManifestObject[]): void {
    this.#objects = undefined;
    for (const o of objects) {
      const m = this.#byFile.get(o.file) ?? new Map<string, ManifestObject>();
      if (!this.#owner(objectKey(o))) m.set(objectKey(o), o);
      this.#byFile.set(o.file, m);
    }
  }

  /** Applies a file's new contents; returns the keys whose object changed, appeared or went away. */
  update(file: string, parsed: ParsedFile): Set<string> {
    this.#objects = undefined;
    const before = this.#byFile.get(file) ?? new Map<string, ManifestObject>();
    const next = new Map<string, ManifestObject>();
    const problems = [...parsed.problems];
    for (const o of parsed.objects) {
      const key = objectKey(o);
      const owner = this.#owner(key);
      if (next.has(key)) {
        problems.push({ file, line: o.line, message: `${key} is declared twice in this file`, key });
      } else if (owner !== undefined && owner.file !== file) {
        problems.push({
          file,
          line: o.line,
          message: `${key} is already declared in ${owner.file}:${owner.line}`,
          key,
        });
      } else {
        next.set(key, o);
      }
    }
    for (const p of problems) {
      const old = p.key !== undefined ? before.get(p.key) : undefined;
      if (old && !next.has(p.key!)) next.set(p.key!, old);
    }
    if (!parsed.complete) { for (const [key, old] of before) if (!next.has(key)) next.set(key, old); }
    this.#problems.set(file, problems);
    if (next.size > 0) this.#byFile.set(file, next);
    else this.#byFile.delete(file);
    return changedKeys(before, next);
  }

  /** Records that a file could not be read at all; its objects stay as they were. */
  unreadable(file: string, message: string) {
    this.#problems.set(file, [{ file, message }]);
  }

  /** Forgets a file that was removed; returns the keys that went away. */
  remove(file: string): Set<string> {
    this.#objects = undefined;
    const before = this.#byFile.get(file) ?? new Map();
    this.#byFile.delete(file);
    this.#problems.delete(file);
    this.signatures.delete(file);
    return changedKeys(before, new Map());
  }

  /** Every object in force, keyed by `kind/namespace/name`; the same map until a file changes. */
  objects(): ReadonlyMap<string, ManifestObject> {
    if (this.#objects) return this.#objects;
    const out = new Map<string, ManifestObject>();
    for (const objects of this.#byFile.values()) for (const [k, o] of objects) out.set(k, o);
    return this.#objects = out;
  }

  /** The files read so far. */
  files(): string[] {
    return [...new Set([...this.#byFile.keys(), ...this.#problems.keys()])].sort();
  }

  /** Every current problem, file by file. */
  problems(): ManifestProblem[] {
    return [...this.#problems.values()].flat();
  }

  #owner(key: string): ManifestObject | undefined {
    for (const objects of this.#byFile.values()) {
      const o = objects.get(key);
      if (o) return o;
    }
    return undefined;
  }
}

function changedKeys(before: Map<string, ManifestObject>, after: Map<string, ManifestObject>): Set<string> {
  const changed = new Set<string>();
  for (const [k, o] of after) if (before.get(k)?.digest !== o.digest) changed.add(k);
  for (const k of before.keys()) if (!after.has(k)) changed.add(k);
  return changed;
}

/** The manifest files of a directory, as `kubectl apply -f DIR` picks them: not recursive, hidden files skipped. */
export async function manifestFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  for await (const entry of Deno.readDir(dir)) {
    if (entry.name.startsWith(".") || entry.isDirectory) continue;
    if (/\.(ya?ml|json)$/.test(entry.name)) out.push(join(dir, entry.name));
  }
  return out.sort();
}

/**
 * Reads every manifest file of `dir` into `set` (files gone since the last read are removed); returns changed keys.
 * A file whose size, times and inode are those of its last read is not parsed again.
 */
export async function loadManifestDir(dir: string, set: ManifestSet): Promise<Set<string>> {
  const files = await manifestFiles(dir);
  const changed = new Set<string>();
  for (const file of set.files()) {
    if (!files.includes(file)) { for (const k of set.remove(file)) changed.add(k); }
  }
  for (const file of files) {
    let text: string;
    try {
      const info = await Deno.stat(file);
      const signature = `${info.ino}:${info.size}:${info.mtime?.getTime()}:${info.ctime?.getTime()}`;
      if (set.signatures.get(file) === signature) continue;
      set.signatures.set(file, signature);
      if (info.size > MAX_MANIFEST_BYTES) {
        set.unreadable(file, `is ${info.size} bytes, at most ${MAX_MANIFEST_BYTES} are read`);
        continue;
      }
      text = await Deno.readTextFile(file);
    } catch (error) {
      if (error instanceof Deno.errors.NotFound) {
        for (const k of set.remove(file)) changed.add(k);
      } else {
        set.unreadable(file, `cannot read: ${(error as Error).message}`);
      }
      continue;
    }
    for (const k of set.update(file, parseManifestFile(text, file))) changed.add(k);
  }
  return changed;
}
