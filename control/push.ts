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
  /** `kind/name`, the key of {@link Publisher}'s entries. */
  key: string;
  /** The object published; the builder's cache hands back the very same object when nothing changed. */
  body: unknown;
  json: string;
  version: string;
  /** The publish that last saw it in the model (removals are the entries a publish did not see). */
  seen: number;
}

/** A batch of changes, as sent to subscribers. */
export type Delta = Extract<StreamMessage, { type: "delta" }>;

/** The published state and its subscribers. */
export class Publisher {
  readonly #entries = new Map<string, Entry>();
  /**
   * Each published body's entry, by the body's identity: the builder's cache hands back the very objects of the
   * namespaces a change did not touch, and this finds their entries without making their keys again (a
   * 10,000-workload mesh made 11,000 key strings and a new map of them per change, half the publish).
   */
  readonly #byBody = new WeakMap<object, Entry>();
  readonly #subscribers = new Set<(d: Delta, line: Uint8Array) => void>();
  /**
   * The snapshot for a client that knows nothing, encoded once per version and form, shared by every such client.
   * One form at a time, and dropped by the next change rather than kept until the next such client comes.
   */
  #full?: { version: number; parts: boolean; lines: Uint8Array[]; sent: number };
  #version = 0;
  #publishes = 0;

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
    const pass = ++this.#publishes;
    const entries = this.#entries;
    /** The model's entries in its order: the order of the next snapshot when keys came or went. */
    const order: Entry[] = [];
    const changed = new Map<string, Entry>();
    let added = false;
    // `encode` gives the wire form of a model that differs from it; `body` stays the model, compared by identity.
    const add = <T>(kind: ResourceKind, body: T, nameOf: (b: T) => string, encode: (b: T) => unknown = (b) => b) => {
      const same = this.#byBody.get(body as object);
      // An entry another publish replaced is no longer in force: its body must be compared again.
      if (same && same.kind === kind && entries.get(same.key) === same) {
        same.seen = pass;
        order.push(same);
        return;
      }
      const name = nameOf(body);
      const key = resourceKey({ kind, name });
      const old = entries.get(key);
      const json = JSON.stringify(encode(body));
      let e: Entry;
      if (old && old.json === json) {
        old.body = body;
        e = old;
      } else {
        e = { kind, name, key, body, json, version: digest(json), seen: pass };
        if (!old) added = true;
        entries.set(key, e);
        changed.set(key, e);
      }
      e.seen = pass;
      this.#byBody.set(body as object, e);
      order.push(e);
    };
    for (const w of model.workloads) add("Workload", w, (w) => w.uid);
    for (const s of model.services) add("Service", s, serviceKey);
    for (const p of model.policies) add("Authorization", p, policyKey, encodeAuthorization);
    for (const r of model.routes) add("HttpRoute", r, httpRouteKey);
    for (const p of model.l7Policies) add("L7Policy", p, l7PolicyKey);
    const removed: Removal[] = [];
    for (const [key, e] of entries) {
      if (e.seen === pass) continue;
      removed.push({ kind: e.kind, name: e.name });
      entries.delete(key);
    }
    if (changed.size === 0 && removed.length === 0) return undefined;
    if (added) {
      // New keys went to the end of the map: put it back in the model's order, so that a snapshot of the same
      // state lists the same resources in the same parts whatever came before.
      entries.clear();
      for (const e of order) entries.set(e.key, e);
    }
    this.#full = undefined;
    const resources = [...changed.values()];
    const delta: Delta = { type: "delta", version: ++this.#version, resources: resources.map(toResource), removed };
    // The first build of a large mesh has no subscriber yet: its whole-mesh line would be garbage at once.
    if (this.#subscribers.size === 0) return delta;
    const line = encoder.encode(encodeLine({ type: "delta", version: delta.version, removed }, resources));
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

/**
 * A delta's resource; its body is the wire form, decoded when first read: the stream sends the JSON itself, and
 * decoding every body of a first build up front was a second copy of the mesh, read by no one.
 */
function toResource(e: Entry): StreamResource {
  let body: unknown;
  return {
    kind: e.kind,
    name: e.name,
    version: e.version,
    get body() {
      return body ??= JSON.parse(e.json);
    },
  };
}

function digest(json: string): string {
  return createHash("sha256").update(json).digest("hex").slice(0, 16);
}
