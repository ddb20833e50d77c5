/**
 * The data plane roles: ztunnel (`skiff ztunnel`, the node L4 proxy with per-pod listeners, HBONE, L4
 * authorization and telemetry) and the waypoint (`skiff waypoint`, the L7 proxy, not built yet), on Skiff's own
 * HTTP/2 (`h2/`) and HBONE (`hbone/`).
 *
 * @module
 */

import { NotBuiltError } from "../mesh/cli.ts";

export { runZtunnel } from "./ztunnel/mod.ts";

/** Runs `skiff waypoint`; returns the exit code. */
export function runWaypoint(_argv: string[]): Promise<number> {
  return Promise.reject(new NotBuiltError("skiff waypoint"));
}
