/**
 * A `skiff waypoint` process for the namespace tests: its HBONE listener in the waypoint pod's namespace, its admin,
 * metrics and readiness ports on 127.0.0.1 (`base`, `base + 1`, `base + 2`), started and waited for until it
 * listens and holds its config.
 *
 * @module
 */

import { freePortBase } from "./ports.ts";
import { SkiffProcess } from "./process.ts";

/** Starts a waypoint and waits until it listens on 15008 and has synced its config; stopped again if it does not. */
export async function startWaypoint(opts: {
  namespace: string;
  /** The control plane's URL. */
  control: string;
  tokenFile: string;
  /** The waypoint pod's network namespace path. */
  netnsPath: string;
  name?: string;
  /** The admin port; metrics and readiness are the next two. */
  base?: number;
  /** More command-line arguments (`--workers=2`). */
  args?: string[];
}): Promise<SkiffProcess> {
  const base = opts.base ?? freePortBase(3);
  const waypoint = new SkiffProcess("waypoint", [
    "waypoint",
    `--name=${opts.name ?? "waypoint"}`,
    `--namespace=${opts.namespace}`,
    `--control=${opts.control}`,
    `--token-file=${opts.tokenFile}`,
    `--admin-port=${base}`,
    `--metrics-port=${base + 1}`,
    `--readiness-port=${base + 2}`,
    `--netns=${opts.netnsPath}`,
    ...opts.args ?? [],
  ]);
  try {
    await waypoint.waitForLog((l) => l.msg === "listener established" && l.listener === "hbone", 20_000);
    await waypoint.waitForLog((l) => l.msg === "config synced");
  } catch (error) {
    await waypoint[Symbol.asyncDispose]();
    throw error;
  }
  return waypoint;
}
