/**
 * The data plane roles: ztunnel (`skiff ztunnel`, the node L4 proxy with per-pod listeners, HBONE, L4
 * authorization and telemetry) and the waypoint (`skiff waypoint`, the L7 proxy), on Skiff's own HTTP/2. Not
 * built yet: the ztunnel and waypoint issues build them here, behind these entry points.
 *
 * @module
 */

import { NotBuiltError } from "../mesh/cli.ts";

/** Runs `skiff ztunnel`; returns the exit code. */
export function runZtunnel(_argv: string[]): Promise<number> {
  return Promise.reject(new NotBuiltError("skiff ztunnel"));
}

/** Runs `skiff waypoint`; returns the exit code. */
export function runWaypoint(_argv: string[]): Promise<number> {
  return Promise.reject(new NotBuiltError("skiff waypoint"));
}
