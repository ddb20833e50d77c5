/**
 * The config stream as a proxy's worker threads get it (workers.ts): the main thread applies each snapshot or
 * delta, then posts the same message to every worker, which applies it to its own `ClientConfig` and so decides
 * exactly as the main thread does (a resource refused there is refused here, and fails closed the same way). A
 * worker started later (or again, after it died) gets {@link ConfigMirror.snapshot}: every resource the stream
 * holds now, as one snapshot, before it serves anything.
 *
 * @module
 */

import { resourceKey, type StreamMessage, type StreamResource } from "../../mesh/protocol/config_stream.ts";

/** A config stream message a worker applies. */
export type ConfigMessage = Exclude<StreamMessage, { type: "ping" }>;

/** The resources the config stream holds now, as they came (refused ones too: the worker refuses them itself). */
export class ConfigMirror {
  readonly #resources = new Map<string, StreamResource>();
  #version = 0;

  /** Follows one applied message. */
  observe(m: ConfigMessage): void {
    for (const r of m.resources) this.#resources.set(resourceKey(r), r);
    for (const r of m.removed) this.#resources.delete(resourceKey(r));
    this.#version = m.version;
  }

  /** Everything held, as the snapshot a new worker applies first. */
  snapshot(): ConfigMessage {
    return {
      type: "snapshot",
      version: this.#version,
      resources: [...this.#resources.values()],
      removed: [],
      unchanged: 0,
    };
  }
}
