/**
 * `skiff unit-gate`: what a meshed systemd unit runs as `ExecStartPre=` (the drop-in
 * deploy/systemd/skiff-mesh.conf), so that it starts only with its capture in place. systemd makes the unit's
 * cgroup anew at each start and runs ExecStartPre= inside it before the main process; the node agent's capture
 * rule (`-m cgroup --path`) holds the cgroup that was at the path when the rule was written, not the new one
 * (cni/host_units.ts). The gate reads its own cgroup from /proc/self/cgroup (the unit's new one) and asks the
 * agent on its socket to have the unit's rules hold it; it exits 0 only once the agent says they do and that
 * ztunnel holds the unit. Anything else (the cgroup is no meshed unit's, the agent or ztunnel away past the
 * timeout) exits 1, and systemd does not start the unit: fail closed, as the CNI plugin's ADD does for a pod.
 *
 * This runs at every start of a meshed unit, so it loads only the agent's wire types and the plugin's client.
 *
 * @module
 */

import { join } from "node:path";
import { describeOptions, option, parsers, readConfig } from "../mesh/config.ts";
import { AGENT_PATHS, CNI_CODES, type UnitGateAnswer } from "../mesh/protocol/cni.ts";
import { type AgentAnswer, realPluginDeps } from "./plugin.ts";

export const UNIT_GATE_OPTIONS = {
  runDir: option({
    flag: "run-dir",
    env: "SKIFF_RUN_DIR",
    help: "the node agent's run directory (its socket is cni.sock there)",
    parser: parsers.string("a directory path"),
    default: "/var/run/skiff",
  }),
  timeout: option({
    flag: "timeout",
    env: "SKIFF_UNIT_GATE_TIMEOUT",
    help: "how long to wait for the agent and ztunnel before refusing the unit's start",
    parser: parsers.duration(),
    default: 30_000,
  }),
};

export const UNIT_GATE_USAGE = `Usage: skiff unit-gate [options]
${describeOptions(UNIT_GATE_OPTIONS)}

Run by systemd as a meshed unit's ExecStartPre=+ (deploy/systemd/skiff-mesh.conf), in the unit's cgroup: exits 0
once the node agent's capture holds that cgroup and ztunnel holds the unit, 1 otherwise (the unit does not start).`;

/** How long to wait between two asks while the agent says try again later or cannot be reached. */
const RETRY_MS = 200;
/** How long one ask may take (the agent may be writing rules). */
const ASK_TIMEOUT_MS = 10_000;

/**
 * The cgroup v2 path in a `/proc/PID/cgroup` text: the `0::` line's, without its leading slash (the agent's
 * unit paths are below the hierarchy's root); undefined when there is none (no cgroup v2, or the root). Pure.
 */
export function cgroupV2Path(procCgroup: string): string | undefined {
  const line = procCgroup.split("\n").find((l) => l.startsWith("0::"));
  const path = line?.slice(3).trim().replace(/^\/+/, "");
  return path ? path : undefined;
}

/** What one answer of the agent means for the gate. */
export type GateStep =
  | { kind: "open"; answer: UnitGateAnswer }
  | { kind: "retry"; reason: string }
  | { kind: "refused"; reason: string };

/** Decides what an answer means: 200 opens, try-again-later (503) waits, anything else refuses. Pure. */
export function gateStep(answer: AgentAnswer): GateStep {
  const body = (answer.body ?? {}) as Record<string, unknown>;
  const msg = typeof body.msg === "string" ? body.msg : JSON.stringify(answer.body);
  if (answer.status === 200 && typeof body.inode === "number") return { kind: "open", answer: body as never };
  if (answer.status === 503 || body.code === CNI_CODES.tryAgainLater) return { kind: "retry", reason: msg };
  return { kind: "refused", reason: `the node agent refused: ${msg}` };
}

/** One ask's timeout: {@link ASK_TIMEOUT_MS}, cut to what is left before the deadline (but never under 1 s). */
const askTimeout = (deadline: number) => Math.max(1000, Math.min(ASK_TIMEOUT_MS, deadline - Date.now()));

/** Runs `skiff unit-gate`; returns the exit code. */
export async function runUnitGate(argv: string[]): Promise<number> {
  const { values, help } = readConfig("unit-gate", UNIT_GATE_OPTIONS, argv, Deno.env.toObject());
  if (help) {
    console.log(UNIT_GATE_USAGE);
    return 0;
  }
  const cgroup = cgroupV2Path(await Deno.readTextFile("/proc/self/cgroup"));
  if (!cgroup) {
    console.error("skiff unit-gate: refused: this process is in no cgroup v2 below the root; run it as ExecStartPre=");
    return 1;
  }
  const socket = join(values.runDir, "cni.sock");
  const deadline = Date.now() + values.timeout;
  let last = "not asked yet";
  for (;;) {
    let step: GateStep;
    try {
      step = gateStep(
        await realPluginDeps.agent(socket, "POST", AGENT_PATHS.unitGate, { cgroup }, askTimeout(deadline)),
      );
    } catch (error) {
      step = { kind: "retry", reason: `the node agent is not reachable on ${socket}: ${(error as Error).message}` };
    }
    if (step.kind === "open") {
      const a = step.answer;
      console.error(`skiff unit-gate: ${a.unit} (${a.entry}) captured in cgroup ${a.cgroup} (inode ${a.inode})`);
      return 0;
    }
    if (step.kind === "refused") {
      console.error(`skiff unit-gate: cgroup ${cgroup} not started: ${step.reason}`);
      return 1;
    }
    last = step.reason;
    if (Date.now() + RETRY_MS > deadline) {
      console.error(
        `skiff unit-gate: cgroup ${cgroup} not started: ${last} (still so after ${values.timeout} ms; ` +
          "the unit's traffic would not be captured)",
      );
      return 1;
    }
    await new Promise((r) => setTimeout(r, RETRY_MS));
  }
}
