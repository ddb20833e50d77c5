/**
 * What the control plane has published, and the deltas from one build to the next (the role of istiod's push
 * context and delta xDS generator). Each resource's version is a digest of its JSON body, so an unchanged
 * resource keeps its version across rebuilds and across a restart, and a client resuming with the versions it
 * knows is sent only what differs. Bodies are compared as text first; only a changed body is hashed, which keeps
 * a rebuild of a large mesh cheap when little changed.
 *
 * @module
 */

import { createHash } from "node:crypto";
import { encodeAuthorization, policyKey } from "../mesh/authorization.ts";
import { httpRouteKey, l7PolicyKey } from "../mesh/l7.ts";
import {
  PART_RESOURCES,
  type Removal,
  RESOURCE_KINDS,
  resourceKey,
  type ResourceKind,
  type StreamMessage,
  type StreamResource,
} from "../mesh/protocol/config_stream.ts";
import { serviceKey } from "../mesh/workload.ts";
import type { MeshModel } from "./build/mod.ts";

interface Entry {
  kind: ResourceKind;
  name: string;
  /** The object published; the builder's cache hands back the very same object when nothing changed. */
  body: unknown;
  json: string;
  version: string;
}

/** A batch of changes, as sent to subscribers. */
export type Delta = Extract<StreamMessage, { type: "delta" }>;

/** The published state and its subscribers. */
export class Publisher {
  readonly #entries = new Map<string, Entry>();
  readonly #subscribers = new Set<(d: Delta, line: Uint8Array) => void>();
  /** The snapshot for a client that knows nothing, encoded once per version and form, shared by every such client. */
  #full?: { version: number; parts: boolean; lines: Uint8Array[]; sent: number };
  #version = 0;

  /** The version of the last change published. */
  get version(): number {
    return this.#version;
  }

  /** How many resources are published. */
  get size(): number {
    return this.#entries.size;
  }

  /** How many clients are subscribed. */
  get subscribers(): number {
    return this.#subscribers.size;
  }

  /** Publishes a new build; returns the delta sent (undefined when nothing changed). */
  publish(model: Pick<MeshModel, "workloads" | "services" | "policies" | "routes" | "l7Policies">): Delta | undefined {
    const next = new Map<string, Entry>();
    // `encode` gives the wire form of a model that differs from it; `body` stays the model, compared by identity.
    const add = <T>(kind: ResourceKind, name: string, body: T, encode: (b: T) => unknown = (b) => b) => {
      const key = resourceKey({ kind, name });
      const old = this.#entries.get(key);
      if (old && old.body === body) {
        next.set(key, old);
        return;
      }
      const json = JSON.stringify(encode(body));
      next.set(key, old && old.json === json ? { ...old, body } : { kind, name, body, json, version: digest(json) });
    };
    for (const w of model.workloads) add("Workload", w.uid, w);
    for (const s of model.services) add("Service", serviceKey(s), s);
    for (const p of model.policies) add("Authorization", policyKey(p), p, encodeAuthorization);
    for (const r of model.routes) add("HttpRoute", httpRouteKey(r), r);
    for (const p of model.l7Policies) add("L7Policy", l7PolicyKey(p), p);
    const changed: Entry[] = [];
    for (const [key, e] of next) if (this.#entries.get(key)?.json !== e.json) changed.push(e);
    const removed: Removal[] = [];
    for (const [key, e] of this.#entries) if (!next.has(key)) removed.push({ kind: e.kind, name: e.name });
    if (changed.length === 0 && removed.length === 0) return undefined;
    this.#entries.clear();
    for (const [k, e] of next) this.#entries.set(k, e);
    const delta: Delta = { type: "delta", version: ++this.#version, resources: changed.map(toResource), removed };
    const line = encoder.encode(encodeLine({ type: "delta", version: delta.version, removed }, changed));
    for (const fn of this.#subscribers) fn(delta, line);
    return delta;
  }

  /**
   * The snapshot for a client that knows `known` (`kind/name` → version), as the lines of the stream that carry
   * it: one line, or with `parts` one line per {@link PART_RESOURCES} resources (config_stream.ts), so that no
   * string ever holds the whole mesh.
   */
  snapshot(
    known: Record<string, string>,
    parts = false,
  ): { lines: Uint8Array[]; sent: number; removed: number; unchanged: number } {
    const empty = Object.keys(known).length === 0;
    if (empty && this.#full?.version === this.#version && this.#full.parts === parts) {
      return { lines: this.#full.lines, sent: this.#full.sent, removed: 0, unchanged: 0 };
    }
    const changed: Entry[] = [];
    let unchanged = 0;
    for (const [key, e] of this.#entries) {
      if (known[key] === e.version) unchanged++;
      else changed.push(e);
    }
    const removed: Removal[] = [];
    for (const key of Object.keys(known)) {
      if (this.#entries.has(key)) continue;
      const slash = key.indexOf("/");
      const kind = key.slice(0, slash) as ResourceKind;
      if (RESOURCE_KINDS.includes(kind)) removed.push({ kind, name: key.slice(slash + 1) });
    }
    const version = this.#version;
    const lines: Uint8Array[] = [];
    if (!parts) lines.push(encoder.encode(encodeLine({ type: "snapshot", version, removed, unchanged }, changed)));
    else {
      const count = Math.max(1, Math.ceil(changed.length / PART_RESOURCES));
      for (let i = 0; i < count; i++) {
        const head = i === 0 ? { type: "snapshot", version, removed, unchanged } : {
          type: "snapshot",
          version,
          removed: [],
          unchanged: 0,
        };
        const slice = changed.slice(i * PART_RESOURCES, (i + 1) * PART_RESOURCES);
        lines.push(encoder.encode(encodeLine(i < count - 1 ? { ...head, more: true } : head, slice)));
      }
    }
    if (empty) this.#full = { version, parts, lines, sent: changed.length };
    return { lines, sent: changed.length, removed: removed.length, unchanged };
  }

  /** Calls `fn` with every delta from now on; returns the function that stops it. */
  subscribe(fn: (d: Delta, line: Uint8Array) => void): () => void {
    this.#subscribers.add(fn);
    return () => this.#subscribers.delete(fn);
  }
}

const encoder = new TextEncoder();

/** One line of the stream, with the resources' bodies spliced in as the JSON they were published as. */
function encodeLine(head: Record<string, unknown>, resources: Entry[]): string {
  const parts = resources.map((e) =>
    `{"kind":${JSON.stringify(e.kind)},"name":${JSON.stringify(e.name)},"version":"${e.version}","body":${e.json}}`
  );
  const json = JSON.stringify(head);
  return `${json.slice(0, -1)},"resources":[${parts.join(",")}]}\n`;
}

function toResource(e: Entry): StreamResource {
  return { kind: e.kind, name: e.name, version: e.version, body: JSON.parse(e.json) };
}

function digest(json: string): string {
  return createHash("sha256").update(json).digest("hex").slice(0, 16);
}
