/**
 * The single-command demo cluster (`skiff demo`): nodes and pods in network namespaces on one machine, with
 * every role running. Not built yet: the demo issue builds it here, behind this entry point.
 *
 * @module
 */

import { NotBuiltError } from "../mesh/cli.ts";

/** Runs `skiff demo`; returns the exit code. */
export function runDemo(_argv: string[]): Promise<number> {
  return Promise.reject(new NotBuiltError("skiff demo"));
}
