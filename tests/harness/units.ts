/**
 * Stand-ins for systemd units in network-namespace tests (tests/host_unit_test.ts, tests/unit_gate_test.ts): these
 * machines do not run systemd, so a "unit" is what systemd makes of one, processes in a cgroup v2 directory, in the
 * node's network namespace, running tests/apps/unit_app.py.
 */

const APP = new URL("../apps/unit_app.py", import.meta.url).pathname;

/** The cgroup v2 hierarchy: `/sys/fs/cgroup` on a unified host, `/sys/fs/cgroup/unified` on a hybrid one. */
export async function cgroup2Root(): Promise<string> {
  const mounts = await Deno.readTextFile("/proc/self/mounts");
  const line = mounts.split("\n").find((l) => l.split(" ")[2] === "cgroup2");
  if (!line) throw new Error("unit test: no cgroup2 hierarchy is mounted");
  return line.split(" ")[1];
}

/** A process in `netns`, in the cgroup directory `cgroup` when given (it enters before it runs `argv`). */
export function spawnIn(netns: string, cgroup: string | undefined, argv: string[]): Deno.ChildProcess {
  const enter = cgroup ? `echo $$ > "${cgroup}/cgroup.procs" && ` : "";
  // nsenter, not `ip netns exec`: the latter mounts a sysfs of its own, hiding the cgroup hierarchy.
  return new Deno.Command("sh", {
    args: ["-c", `${enter}exec nsenter --net=/var/run/netns/${netns} "$@"`, "sh", ...argv],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
}

/** A process of the stand-in app in `netns`, in the cgroup directory `cgroup` when given (before it runs). */
export function spawnApp(netns: string, cgroup: string | undefined, args: string[]): Deno.ChildProcess {
  return spawnIn(netns, cgroup, ["python3", "-u", APP, ...args]);
}

/** One call from `netns` (in `cgroup` when given): the answer, or `failed: …`. */
export async function call(netns: string, cgroup: string | undefined, ip: string, port: number, msg: string) {
  const out = await spawnApp(netns, cgroup, ["call", ip, String(port), msg]).output();
  return new TextDecoder().decode(out.stdout).trim() || `failed: ${new TextDecoder().decode(out.stderr).trim()}`;
}

/** A long-running server of the stand-in app; `peers` fills as it accepts. */
export async function server(netns: string, cgroup: string | undefined, name: string, addr: string, ports: number[]) {
  const child = spawnApp(netns, cgroup, ["serve", name, addr, ...ports.map(String)]);
  const peers: string[] = [];
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  const ready = (async () => {
    for (;;) {
      const { value, done } = await lines.read();
      if (done) throw new Error(`${name}: exited before it was ready`);
      buffer += value;
      if (buffer.includes("ready\n")) break;
    }
    (async () => {
      for (;;) {
        const { value, done } = await lines.read();
        if (done) return;
        buffer += value;
        const parts = buffer.split("\n");
        buffer = parts.pop()!;
        for (const p of parts) if (p.startsWith("peer ")) peers.push(p.slice(5));
      }
    })().catch(() => {});
  })();
  await ready;
  return {
    peers,
    async [Symbol.asyncDispose]() {
      try {
        child.kill("SIGKILL");
      } catch { /* gone */ }
      await child.status;
      await child.stderr.cancel().catch(() => {});
    },
  };
}
