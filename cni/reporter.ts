/**
 * Reports the node's pods to the control plane (`PUT /v1/registrations`, the whole list each time, which
 * replaces the node's earlier one): their addresses and whether their traffic is redirected, which is what makes
 * the control plane mark a workload HBONE. Only the latest list matters, so reports made while one is in flight
 * are merged into the next; a failed report is retried with backoff (100 ms doubling to 15 s) until one lands,
 * and the list is sent again whenever the control-plane connection comes back.
 *
 * @module
 */

import type { ControlConnection } from "../mesh/control_client.ts";
import type { Logger } from "../mesh/log.ts";
import { REGISTRATIONS_PATH } from "../mesh/protocol/config_stream.ts";
import type { PodReport } from "./agent.ts";

const RETRY_MIN_MS = 100;
const RETRY_MAX_MS = 15_000;

/** Sends the latest list of pods, retrying until it lands. */
export class Reporter {
  readonly #connection: Pick<ControlConnection, "request">;
  readonly #log: Logger;
  readonly #signal: AbortSignal;
  #latest?: PodReport[];
  #sent?: string;
  #running?: Promise<void>;

  constructor(connection: Pick<ControlConnection, "request">, log: Logger, signal: AbortSignal) {
    this.#connection = connection;
    this.#log = log;
    this.#signal = signal;
  }

  /** Schedules `pods` to be reported (unchanged lists are not sent again unless `force`). */
  report(pods: PodReport[], force = false): void {
    this.#latest = pods;
    if (force) this.#sent = undefined;
    this.#running ??= this.#run().finally(() => (this.#running = undefined));
  }

  /** Sends the last list again (the control plane came back). */
  resend(): void {
    if (this.#latest) this.report(this.#latest, true);
  }

  /** Settles when nothing is waiting to be sent. */
  async idle(): Promise<void> {
    while (this.#running) await this.#running;
  }

  async #run(): Promise<void> {
    let delay = RETRY_MIN_MS;
    while (!this.#signal.aborted && this.#latest) {
      const pods = this.#latest;
      const body = JSON.stringify({ pods });
      if (body === this.#sent) return;
      try {
        const response = await this.#connection.request("PUT", REGISTRATIONS_PATH, { pods }, this.#signal);
        await response.body?.cancel();
        this.#sent = body;
        this.#log.info({ pods: pods.length, redirected: pods.filter((p) => p.redirected).length }, "pods reported");
        delay = RETRY_MIN_MS;
      } catch (error) {
        if (this.#signal.aborted) return;
        this.#log.warn({ error: (error as Error).message, retryInMs: delay }, "could not report the pods");
        await new Promise<void>((resolve) => {
          const done = () => {
            clearTimeout(timer);
            this.#signal.removeEventListener("abort", done);
            resolve();
          };
          const timer = setTimeout(done, delay);
          this.#signal.addEventListener("abort", done, { once: true });
        });
        delay = Math.min(delay * 2, RETRY_MAX_MS);
      }
    }
  }
}
