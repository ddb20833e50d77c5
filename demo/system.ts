/**
 * What the demo asks of the machine: commands (in the host's or a namespace's network), `skiff` itself as a
 * command line, and processes that outlive `skiff demo` (the cluster stays up) yet are stopped by their pid
 * alone. Every process the demo starts writes its pid to `DIR/pids/NAME.pid` before it runs, so `skiff demo
 * down` finds them even after a crash of `skiff demo` itself, and stops only a pid whose command line is still
 * skiff's or the app's it started.
 *
 * @module
 */

import { inNs } from "../mesh/inpod.ts";

/** Where the demo keeps its state, logs and data. */
export const DEMO_DIR = "/var/lib/skiff-demo";
/** Every network namespace the demo makes starts with this. */
export const NETNS_PREFIX = "skd-";

/** A command failed. */
export class DemoError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "DemoError";
  }
}

/** Runs `cmd` (inside `netns`, a name, when given); returns its code and output. */
export function sh(cmd: string[], netns?: string, stdin?: string) {
  return inNs(netns === undefined ? undefined : `/var/run/netns/${netns}`, cmd, stdin);
}

/** {@link sh}, throwing a {@link DemoError} with the command's stderr when it fails. */
export async function must(cmd: string[], netns?: string, stdin?: string): Promise<string> {
  const r = await sh(cmd, netns, stdin);
  if (r.code !== 0) {
    throw new DemoError(`${netns ? `in ${netns}: ` : ""}${cmd.join(" ")} failed (exit ${r.code}): ${r.stderr.trim()}`);
  }
  return r.stdout;
}

/**
 * `skiff` as a command line: the compiled binary itself, or Deno running this checkout's main.ts with every
 * permission (what the launcher install.sh writes does).
 */
export function selfCommand(): string[] {
  const main = new URL("../main.ts", import.meta.url);
  if (main.protocol === "file:") {
    try {
      Deno.statSync(main);
      // Deno finds deno.json from the working directory, not the script's: name it, so the import map and the
      // lock are the ones beside main.ts wherever the demo is run from (DENO_DIR, when set, is inherited).
      const config = new URL("../deno.json", import.meta.url).pathname;
      return [Deno.execPath(), "run", "--allow-all", "--config", config, main.pathname];
    } catch { /* compiled: main.ts is inside the binary */ }
  }
  return [Deno.execPath()];
}

/** Network namespaces whose name starts with the demo's prefix. */
export async function demoNamespaces(): Promise<string[]> {
  const out = await must(["ip", "-j", "netns", "list"]);
  const list = out.trim() ? JSON.parse(out) as { name: string }[] : [];
  return list.map((n) => n.name).filter((n) => n.startsWith(NETNS_PREFIX));
}

/**
 * Starts `cmd` in its own session, detached from this process, output appended to `log`, and returns its pid
 * once it is written to `pidFile` (the pid of `cmd` itself: the shell execs it).
 */
export async function spawnDetached(
  cmd: string[],
  opts: { log: string; pidFile: string; env: Record<string, string>; cgroup?: string },
): Promise<number> {
  await Deno.remove(opts.pidFile).catch(() => {});
  // With `cgroup` (a cgroup v2 directory), the shell moves itself there before it execs, as systemd places a
  // unit's main process before exec: every socket `cmd` opens is the cgroup's from its first one. A failed move
  // leaves no pid file, and the reason in the log.
  const script = 'exec >>"$LOG" 2>&1 </dev/null; [ -z "$CGROUP" ] || echo $$ > "$CGROUP/cgroup.procs" || exit 1; ' +
    'echo $$ > "$0"; exec "$@"';
  const child = new Deno.Command("setsid", {
    args: ["-f", "bash", "-c", script, opts.pidFile, ...cmd],
    env: {
      ...opts.env,
      LOG: opts.log,
      CGROUP: opts.cgroup ?? "",
      RUST_BACKTRACE: "0",
      DENO_NO_UPDATE_CHECK: "1",
    },
    stdin: "null",
    stdout: "null",
    stderr: "null",
  });
  const status = await child.output();
  if (!status.success) throw new DemoError(`could not start ${cmd.join(" ")}`);
  for (let i = 0; i < 100; i++) {
    const text = await Deno.readTextFile(opts.pidFile).catch(() => "");
    if (/^\d+\s*$/.test(text)) return Number(text);
    await sleep(20);
  }
  throw new DemoError(`${cmd.join(" ")} did not start (no pid in ${opts.pidFile}; log: ${opts.log})`);
}

/** The variable every process of one demo run carries, `SKIFF_DEMO_RUN=<id>`: how `down` knows its own. */
export const RUN_VARIABLE = "SKIFF_DEMO_RUN";

/**
 * Whether `pid` is a process of the demo run `marker` (`SKIFF_DEMO_RUN=<id>` in its environment). A pid file
 * whose pid now belongs to anything else (after a reboot, say, or to a systemd-run skiff) does not match.
 */
export async function runs(pid: number, marker: string): Promise<boolean> {
  if (!pid) return false;
  const environ = await Deno.readTextFile(`/proc/${pid}/environ`).catch(() => "");
  return environ.split("\0").includes(marker);
}

/**
 * Whether `pid` still runs (exists and is not a zombie), whatever it is. Its environment can read empty for a
 * moment while it execs, so this, not {@link runs}, tells whether a process just started has exited.
 */
export async function alive(pid: number): Promise<boolean> {
  const stat = await Deno.readTextFile(`/proc/${pid}/stat`).catch(() => "");
  const state = stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
  return stat !== "" && state !== "Z" && state !== "X";
}

/** Stops `pid` (SIGTERM, then SIGKILL after 5 s) if it is still `marker`'s; returns whether it was running. */
export async function stop(pid: number, marker: string): Promise<boolean> {
  if (!(await runs(pid, marker))) return false;
  try {
    Deno.kill(pid, "SIGTERM");
  } catch {
    return false;
  }
  for (let i = 0; i < 100; i++) {
    if (!(await runs(pid, marker))) return true;
    await sleep(50);
  }
  try {
    Deno.kill(pid, "SIGKILL");
  } catch { /* gone */ }
  return true;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Polls `fn` until it returns a value other than undefined; throws `what` after `timeoutMs`. */
export async function until<T>(what: string, timeoutMs: number, fn: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    // A DemoError says waiting cannot help (the process exited): it ends the wait at once.
    const v = await fn().catch((error) => {
      if (error instanceof DemoError) throw error;
      return undefined;
    });
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new DemoError(`${what}: still not after ${Math.round(timeoutMs / 1000)} s`);
    await sleep(100);
  }
}
