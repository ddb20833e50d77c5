/**
 * The process edge shared by every mode: the top-level usage text, and the one place where errors become
 * exit codes. Usage and configuration errors print their message (and the usage, for usage errors) and exit
 * 2; any other failure is logged and exits 1. Every exit flushes the logs first.
 *
 * @module
 */

import denoJson from "../deno.json" with { type: "json" };
import { ConfigError, UsageError } from "./config.ts";
import { exitProcess, LogConfigError, logger } from "./log.ts";
import { ValidationError } from "./validate.ts";

/** Skiff's version, from deno.json. */
export const VERSION: string = denoJson.version;

/** The top-level usage text. */
export const USAGE = `Skiff ${VERSION}: a sidecarless service mesh (Istio ambient mode) in one binary.

Usage: skiff <mode> [flags]

Modes:
  control      control plane: sources, workload model, config stream, CA service
  ca           certificate authority: 'ca init', 'ca issue' (standalone service: 'ca serve')
  cni-agent    node agent: in-pod redirection for enrolled pods, handoff to ztunnel
  unit-gate    a meshed systemd unit's ExecStartPre=: start only once its capture is in place
  ztunnel      node L4 proxy: capture, HBONE, L4 authorization, telemetry
  waypoint     L7 proxy: HTTP routing and authorization
  demo         a whole demo cluster on this machine
  version      print the version
  help         print this text

Run 'skiff <mode> --help' for a mode's flags. Started with CNI_COMMAND set, skiff runs as the CNI plugin.
Environment: LOG_LEVEL (trace|debug|info|warn|error|fatal|silent), LOG_FORMAT (json|plain).`;

/** Runs a mode and ends the process with its exit code, mapping errors to codes in this one place. */
export async function runAndExit(usage: string, body: () => Promise<number>): Promise<never> {
  let code: number;
  try {
    code = await body();
  } catch (err) {
    code = report(err, usage);
  }
  return exitProcess(code);
}

function report(err: unknown, usage: string): number {
  if (err instanceof UsageError) {
    console.error(`skiff: ${err.message}\n\n${usage}`);
    return 2;
  }
  if (err instanceof ConfigError || err instanceof LogConfigError || err instanceof ValidationError) {
    console.error(`skiff: ${err.message}`);
    return 2;
  }
  try {
    logger("skiff").error({ err }, "failed");
  } catch {
    // Logging itself is misconfigured: fall through to the plain message.
  }
  console.error(`skiff: ${err instanceof Error ? err.message : String(err)}`);
  return 1;
}
