/**
 * In-pod redirection: the CNI plugin (`skiff` started with CNI_COMMAND set, chained after the primary plugin,
 * failing closed) and the node agent (`skiff cni-agent`, which installs the in-pod rules and hands pods to
 * ztunnel). Not built yet: the CNI issue builds them here, behind these entry points.
 *
 * @module
 */

import { NotBuiltError } from "../mesh/cli.ts";

/** Runs `skiff cni-agent`; returns the exit code. */
export function runCniAgent(_argv: string[]): Promise<number> {
  return Promise.reject(new NotBuiltError("skiff cni-agent"));
}

/**
 * Runs the CNI plugin. The runtime reads a CNI error from stdout, so the not-built answer is given in that
 * form (code 50: the plugin is not available) as well as in plain words on stderr.
 */
export function runCniPlugin(): Promise<number> {
  console.log(JSON.stringify({ cniVersion: "1.1.0", code: 50, msg: "skiff cni plugin: not built yet" }));
  console.error("skiff cni plugin: not built yet");
  return Promise.resolve(1);
}
