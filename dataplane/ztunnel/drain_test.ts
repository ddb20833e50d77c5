import assert from "node:assert/strict";
import { drainConnections, drainStep, parentPid, successorCommand } from "./drain.ts";

Deno.test("successorCommand() reruns this process's command line, an absolute program kept as named", async (t) => {
  const cases: [string, string, { program: string; args: string[] }][] = [
    [
      "/usr/bin/deno\0run\0--allow-all\0/usr/local/lib/skiff/main.ts\0ztunnel\0",
      "/usr/bin/deno (deleted)",
      { program: "/usr/bin/deno", args: ["run", "--allow-all", "/usr/local/lib/skiff/main.ts", "ztunnel"] },
    ],
    [
      "/usr/local/bin/skiff\0ztunnel\0--drain-deadline=3s\0",
      "/usr/local/bin/skiff",
      { program: "/usr/local/bin/skiff", args: ["ztunnel", "--drain-deadline=3s"] },
    ],
    ["deno\0run\0main.ts\0ztunnel\0", "/root/.deno/bin/deno", {
      program: "/root/.deno/bin/deno",
      args: ["run", "main.ts", "ztunnel"],
    }],
    ["skiff\0ztunnel\0--admin-port=\0", "/opt/skiff", { program: "/opt/skiff", args: ["ztunnel", "--admin-port="] }],
  ];
  for (const [cmdline, exec, want] of cases) {
    await t.step(JSON.stringify(cmdline), () => assert.deepEqual(successorCommand(cmdline, exec), want));
  }
  await t.step("an empty command line", () => assert.throws(() => successorCommand("", "/x"), /cmdline is empty/));
});

Deno.test("parentPid() reads the field after the state, whatever the process name holds", async (t) => {
  const cases: [string, number][] = [
    ["4242 (deno) S 4100 4242 4100 0 -1 4194560", 4100],
    ["77 (a) b) c) R 1 77 77 0 -1", 1],
    ["9 (skiff ztunnel) S 8 9 9", 8],
  ];
  for (const [stat, want] of cases) await t.step(stat, () => assert.equal(parentPid(stat), want));
  await t.step("garbage", () => assert.throws(() => parentPid("nonsense"), /parent pid/));
});

Deno.test("drainStep() ends when nothing is open, or at the deadline, and not before", async (t) => {
  const cases: [number, number, number, string][] = [
    [0, 0, 1000, "drained"],
    [0, 5000, 1000, "drained"],
    [3, 999, 1000, "wait"],
    [3, 1000, 1000, "deadline"],
    [1, 2000, 1000, "deadline"],
  ];
  for (const [open, now, deadline, want] of cases) {
    await t.step(
      `${open} open at ${now} (deadline ${deadline})`,
      () => assert.equal(drainStep(open, now, deadline), want),
    );
  }
});

Deno.test("drainConnections() waits for the last connection, and a second signal cuts it short", async () => {
  let open = 2;
  const timer = setTimeout(() => open = 0, 150);
  assert.equal(await drainConnections(() => open, 60_000, new AbortController().signal), "drained");
  clearTimeout(timer);
  const cut = new AbortController();
  const cutter = setTimeout(() => cut.abort(), 150);
  assert.equal(await drainConnections(() => 1, 60_000, cut.signal), "deadline");
  clearTimeout(cutter);
  assert.equal(await drainConnections(() => 1, 0, new AbortController().signal), "deadline");
});
