/**
 * The config stream as a proxy's worker threads get it (workers.ts): the main thread applies each snapshot or
 * delta, then posts the same message to every worker, which applies it to its own `ClientConfig` and so decides
 * exactly as the main thread does (a resource refused there is refused here, and fails closed the same way). A
 * worker started later (or again, after it died) gets {@link ConfigMirror.snapshot}: every resource the stream
 * holds now, before it serves anything, which it applies with {@link applyMirrored}.
 *
 * Refused resources: the main thread keeps the version it held beside a refused update (mesh/control_client.ts:
 * the deny-all of a refused policy or workload stands beside it, and the version held may cover what the update
 * does not). So the mirror keeps, by name, the version the main thread holds and, apart, the update it refused,
 * and a worker applies the refused ones after the rest: it then holds both, as the main thread does. A worker
 * started with only the refused text held a deny-all over the update's scope and nothing of the DENY held before,
 * and a workload whose update was refused was outside the mesh there (its connections passed through).
 *
 * Memory: the mirror keeps each resource as its JSON text, not as objects (a third of the size or less), and the
 * snapshot crosses to the worker as those strings, which the worker parses and applies a part at a time, so
 * neither thread ever holds a second copy of the whole mesh as objects. Measured with bench/sync.ts at 100k
 * workloads: a ztunnel with two threads held 697 MiB with the mirror keeping objects and one snapshot object
 * cloned to the worker.
 *
 * @module
 */

import type { ClientConfig } from "../../mesh/control_client.ts";
import {
  PART_RESOURCES,
  resourceKey,
  type StreamMessage,
  type StreamResource,
} from "../../mesh/protocol/config_stream.ts";

/** A config stream message a worker applies. */
export type ConfigMessage = Exclude<StreamMessage, { type: "ping" }>;

/** What a worker starts from: every resource held, each as its JSON text. */
export interface MirroredConfig {
  version: number;
  resources: string[];
}

/** What the mirror asks of the main thread's config: the version it holds of `kind/name`, if one decoded. */
export interface HeldVersions {
  versionOf(key: string): string | undefined;
}

/**
 * The resources the config stream holds now, as they came: those the main thread holds, and apart the updates it
 * refused (the worker refuses them itself, beside the version held). Without `held` every resource counts as held.
 */
export class ConfigMirror {
  readonly #resources = new Map<string, string>();
  readonly #refused = new Map<string, string>();
  readonly #held: HeldVersions | undefined;
  #version = 0;

  /** `held`: the main thread's config, read after it applied each message. */
  constructor(held?: HeldVersions) {
    this.#held = held;
  }

  /** Follows one message the main thread applied. */
  observe(m: ConfigMessage): void {
    for (const r of m.resources) {
      const key = resourceKey(r);
      if (this.#held === undefined || this.#held.versionOf(key) === r.version) {
        this.#resources.set(key, JSON.stringify(r));
        this.#refused.delete(key);
      } else this.#refused.set(key, JSON.stringify(r));
    }
    for (const r of m.removed) {
      this.#resources.delete(resourceKey(r));
      this.#refused.delete(resourceKey(r));
    }
    if (m.type === "snapshot") {
      // As ClientConfig.apply: a refusal the snapshot does not resend is over (gone, or back to the version held).
      const sent = new Set(m.resources.map(resourceKey));
      for (const key of [...this.#refused.keys()]) if (!sent.has(key)) this.#refused.delete(key);
    }
    this.#version = m.version;
  }

  /** Everything held, then the refused updates, for a new worker's `init`. */
  snapshot(): MirroredConfig {
    return { version: this.#version, resources: [...this.#resources.values(), ...this.#refused.values()] };
  }
}

/**
 * Applies a {@link ConfigMirror.snapshot} to a worker's config (which holds nothing yet), a part at a time. Each
 * part is applied as a delta: a snapshot ends every refusal it does not resend, so applying the parts as
 * snapshots ended, at the next part, the deny-all of a policy refused in an earlier one (past 1,000 resources a
 * worker allowed what the main thread denied).
 */
export function applyMirrored(config: ClientConfig, m: MirroredConfig): void {
  for (let i = 0; i < Math.max(1, m.resources.length); i += PART_RESOURCES) {
    const resources = m.resources.slice(i, i + PART_RESOURCES).map((text) => JSON.parse(text) as StreamResource);
    config.apply({ type: "delta", version: m.version, resources, removed: [] });
  }
}
