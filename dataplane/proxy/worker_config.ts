/**
 * The config stream as a proxy's worker threads get it (workers.ts): the main thread applies each snapshot or
 * delta, then posts the same message to every worker, which applies it to its own `ClientConfig` and so decides
 * exactly as the main thread does (a resource refused there is refused here, and fails closed the same way). A
 * worker started later (or again, after it died) gets {@link ConfigMirror.snapshot}: every resource the stream
 * holds now, before it serves anything, which it applies with {@link applyMirrored}.
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

/** The resources the config stream holds now, as they came (refused ones too: the worker refuses them itself). */
export class ConfigMirror {
  readonly #resources = new Map<string, string>();
  #version = 0;

  /** Follows one applied message. */
  observe(m: ConfigMessage): void {
    for (const r of m.resources) this.#resources.set(resourceKey(r), JSON.stringify(r));
    for (const r of m.removed) this.#resources.delete(resourceKey(r));
    this.#version = m.version;
  }

  /** Everything held, for a new worker's `init`. */
  snapshot(): MirroredConfig {
    return { version: this.#version, resources: [...this.#resources.values()] };
  }
}

/** Applies a {@link ConfigMirror.snapshot} to a worker's config (which holds nothing yet), a part at a time. */
export function applyMirrored(config: ClientConfig, m: MirroredConfig): void {
  for (let i = 0; i < Math.max(1, m.resources.length); i += PART_RESOURCES) {
    const resources = m.resources.slice(i, i + PART_RESOURCES).map((text) => JSON.parse(text) as StreamResource);
    config.apply({ type: "snapshot", version: m.version, resources, removed: [], unchanged: 0 });
  }
}
