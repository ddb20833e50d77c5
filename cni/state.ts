/**
 * The node agent's memory between runs: the pods the CNI plugin saw start (container, network namespace,
 * addresses, state) and the control plane's last view of the node, in one JSON file in the run directory
 * (`/var/run/skiff/cni-agent.json`: on tmpfs, so it goes with a reboot, as the pods' namespaces do). Written to
 * a temporary file and renamed, so a crash leaves the old version or the new one, never half of one. A pod
 * record that does not decode is reported and skipped, the others kept; a file that does not decode at all is
 * kept aside (`.bad`) and reported, and the agent starts with no pods rather than guess.
 *
 * @module
 */

import { decodeNodePodsView } from "../mesh/protocol/node_pods.ts";
import { canonicalIp } from "../mesh/net.ts";
import { checkString, Fields, ValidationError } from "../mesh/validate.ts";
import type { AgentState, PodRecord } from "./agent.ts";

/** Decodes a saved state; records that do not decode are left out and named in `problems`. */
export function decodeAgentState(value: unknown): { state: AgentState; problems: string[] } {
  const f = Fields.of(value, "");
  const problems: string[] = [];
  const record = (v: unknown, p: string): PodRecord => {
    const r = Fields.of(v, p);
    const out: PodRecord = {
      containerId: r.string("containerId", { nonEmpty: true, max: 256 }),
      uid: r.string("uid", { nonEmpty: true, max: 256 }),
      namespace: r.string("namespace", { nonEmpty: true, max: 63 }),
      name: r.string("name", { nonEmpty: true, max: 253 }),
      netns: r.string("netns", { nonEmpty: true, max: 1024 }),
      ips: r.array("ips", (x, q) => {
        const ip = canonicalIp(checkString(x, q, { max: 64 }));
        if (!ip) throw new ValidationError(q, "expected an IP address");
        return ip;
      }),
      serviceAccount: r.string("serviceAccount", { nonEmpty: true, max: 253 }),
      state: r.oneOf("state", ["redirected", "pending", "outside"] as const, "outside"),
      reason: r.string("reason", { default: "", max: 4096 }),
    };
    r.done();
    return out;
  };
  const pods = f.array("pods", (v, p) => {
    try {
      return [record(v, p)];
    } catch (error) {
      if (!(error instanceof ValidationError)) throw error;
      problems.push(error.message);
      return [];
    }
  }).flat();
  const view = f.optionalObject("view", (v, p) => decodeNodePodsView(v, p));
  f.done();
  return { state: view ? { pods, view } : { pods }, problems };
}

/** Reads the saved state; none (first start) is an empty state. */
export async function loadAgentState(path: string): Promise<{ state: AgentState; problem?: string }> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return { state: { pods: [] } };
    throw error;
  }
  try {
    const { state, problems } = decodeAgentState(JSON.parse(text));
    return problems.length > 0 ? { state, problem: `${path}: records left out: ${problems.join("; ")}` } : { state };
  } catch (error) {
    await Deno.rename(path, `${path}.bad`);
    return { state: { pods: [] }, problem: `${path}: ${(error as Error).message} (kept as ${path}.bad)` };
  }
}

/** Saves the state atomically. */
export async function saveAgentState(path: string, state: AgentState): Promise<void> {
  const tmp = `${path}.tmp`;
  await Deno.writeTextFile(tmp, `${JSON.stringify(state, null, 1)}\n`, { mode: 0o600 });
  await Deno.rename(tmp, path);
}
