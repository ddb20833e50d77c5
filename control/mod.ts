/**
 * The control plane (`skiff control`): reads manifests and the Kubernetes API, builds the workload model with
 * one pure builder per kind, streams it to the proxies on 15012, and serves the CA. Not built yet: the
 * control-plane issue builds it here, behind this entry point.
 *
 * @module
 */

import { NotBuiltError } from "../mesh/cli.ts";

/** Runs `skiff control`; returns the exit code. */
export function runControl(_argv: string[]): Promise<number> {
  return Promise.reject(new NotBuiltError("skiff control"));
}
