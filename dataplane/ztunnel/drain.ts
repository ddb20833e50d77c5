/**
 * How ztunnel stops without losing traffic, as upstream's drain (`src/drain.rs`, `DrainMode::Graceful`): on SIGTERM
 * it stops accepting (each pod's listeners close; a pod a newer ztunnel already took was released earlier, see
 * `inpod.ts`), keeps the connections it has until they end or the drain deadline (`CONNECTION_TERMINATION_DEADLINE`,
 * 30 s by default: Kubernetes' default grace period, which upstream's deadline is derived from), then closes what is
 * left and exits.
 *
 * And how it upgrades itself, as haproxy's reload does: on SIGHUP (`systemctl reload`) it starts its successor with
 * its own command line, so a binary or sources installed since are what runs. The successor connects to the node
 * agent, which hands it every pod and has this ztunnel release each one as soon as the successor acknowledges it;
 * once ready, the successor tells systemd it is the service's main process now (`MAINPID=`, sd_notify(3)) and sends
 * this one SIGTERM, so it drains and exits. A successor that fails to start changes nothing: this one serves on.
 *
 * @module
 */

import type { Logger } from "../../mesh/log.ts";
import { notifySystemd } from "../sockets_linux.ts";

/** Upstream's default drain period (Kubernetes' default terminationGracePeriodSeconds). */
export const DEFAULT_DRAIN_DEADLINE_MS = 30_000;
/** Set in a successor's environment: the pid of the ztunnel that started it, to be stopped once it is ready. */
export const PREDECESSOR_ENV = "SKIFF_ZTUNNEL_PREDECESSOR";

/** The program and arguments that started this process, from `/proc/self/cmdline` (NUL-separated). */
export function successorCommand(cmdline: string, execPath: string): { program: string; args: string[] } {
  const argv = cmdline.split("\0");
  if (argv.at(-1) === "") argv.pop();
  if (argv.length === 0) throw new Error("reload: /proc/self/cmdline is empty");
  // A relative argv[0] was resolved through PATH or the working directory, which may differ now: use our own binary.
  // An absolute one is kept, so a binary replaced at that path since (an upgrade) is the one that runs.
  const program = argv[0].startsWith("/") ? argv[0] : execPath;
  return { program, args: argv.slice(1) };
}

/** The parent pid from `/proc/self/stat` (the field after the state, which follows the parenthesized name). */
export function parentPid(stat: string): number {
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  const ppid = Number(fields[1]);
  if (!Number.isInteger(ppid) || ppid <= 0) throw new Error(`cannot read the parent pid from /proc/self/stat: ${stat}`);
  return ppid;
}

/** What the drain does next: wait, or end because nothing is left open, or because the deadline passed. */
export function drainStep(open: number, now: number, deadline: number): "wait" | "drained" | "deadline" {
  if (open === 0) return "drained";
  return now >= deadline ? "deadline" : "wait";
}

/** Waits until `open()` is 0 or `deadlineMs` passed (or `cut` aborts); says which. */
export async function drainConnections(
  open: () => number | Promise<number>,
  deadlineMs: number,
  cut: AbortSignal,
): Promise<"drained" | "deadline"> {
  const deadline = performance.now() + deadlineMs;
  for (;;) {
    const step = cut.aborted ? "deadline" : drainStep(await open(), performance.now(), deadline);
    if (step !== "wait") return step;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/**
 * Starts this ztunnel's successor (SIGHUP): the same command line and environment, plus {@link PREDECESSOR_ENV}.
 * Its output goes where ours does (the journal). Resolves when it exits, with its exit code.
 */
export function startSuccessor(log: Logger): { pid: number; exited: Promise<number> } {
  const { program, args } = successorCommand(Deno.readTextFileSync("/proc/self/cmdline"), Deno.execPath());
  const child = new Deno.Command(program, {
    args,
    env: { [PREDECESSOR_ENV]: String(Deno.pid) },
    stdin: "null",
    stdout: "inherit",
    stderr: "inherit",
  }).spawn();
  child.unref();
  log.info({ pid: child.pid, program }, "reload: successor started; draining once it serves the pods");
  return { pid: child.pid, exited: child.status.then((s) => s.code) };
}

/**
 * Called by a ready ztunnel: when it was started by a predecessor (SIGHUP), it takes over as systemd's main
 * process and sends the predecessor SIGTERM. The predecessor must still be our parent, so a pid reused since is
 * never signalled.
 */
export function takeOverFromPredecessor(log: Logger): void {
  const predecessor = Number(Deno.env.get(PREDECESSOR_ENV));
  if (!predecessor) return;
  Deno.env.delete(PREDECESSOR_ENV); // our own successor gets our pid instead
  try {
    if (parentPid(Deno.readTextFileSync("/proc/self/stat")) !== predecessor) {
      log.warn({ predecessor }, "reload: the ztunnel that started this one is gone; nothing to stop");
      return;
    }
    if (notifySystemd(`MAINPID=${Deno.pid}`)) log.info({ pid: Deno.pid }, "reload: told systemd this is the main pid");
    Deno.kill(predecessor, "SIGTERM");
    log.info({ predecessor }, "reload: the previous ztunnel was told to drain");
  } catch (error) {
    log.error({ predecessor, error: (error as Error).message }, "reload: could not stop the previous ztunnel");
  }
}
