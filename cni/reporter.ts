/**
 * Reports the node's pods to the control plane (`PUT /v1/registrations`, the whole list each time, which
 * replaces the node's earlier one): their addresses and whether their traffic is redirected, which is what makes
 * the control plane mark a workload HBONE. Only the latest list matters, so reports made while one is in flight
 * are merged into the next; a failed report is retried with backoff (100 ms doubling to 15 s) until one lands,
 * and the list is sent again whenever the control-plane connection comes back.
 *
 * The control plane may refuse some pods of a list and take the others (a 403 naming each refused pod and why,
 * control/reports.ts): each refused pod is logged by name, and the list is retried with the same backoff, since
 * a pod refused because the control plane had not yet seen it scheduled here is taken once it has.
 *
 * @module
 */

import { type ControlConnection, ControlError } from "../mesh/control_client.ts";
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
        const refusal = refusalOf(error);
        if (refusal) {
          for (const r of refusal.refused) {
            this.#log.warn({ pod: r.pod, problems: r.problems, retryInMs: delay }, "pod refused by the control plane");
          }
          this.#log.info(
            { pods: pods.length, accepted: refusal.accepted, refused: refusal.refused.length },
            "pods reported, some refused",
          );
        } else {
          this.#log.warn({ error: (error as Error).message, retryInMs: delay }, "could not report the pods");
        }
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

/** What a refusal of some pods of a report says (control/server.ts), or undefined when the error is not one. */
function refusalOf(
  error: unknown,
): { accepted: number; refused: { pod: string; problems: string[] }[] } | undefined {
  if (!(error instanceof ControlError) || error.status !== 403) return undefined;
  const body = error.body as { accepted?: unknown; refused?: unknown } | undefined;
  if (!Array.isArray(body?.refused)) return undefined;
  return {
    accepted: Number(body.accepted ?? 0),
    refused: body.refused.map((r) => ({
      pod: `${r?.namespace}/${r?.name}`,
      problems: Array.isArray(r?.problems) ? r.problems.map(String) : [],
    })),
  };
}
