import assert from "node:assert/strict";
import { cgroup2Mount } from "./unit.ts";

Deno.test("cgroup2Mount() finds the cgroup v2 hierarchy on unified, hybrid and v1-only hosts", async (t) => {
  const cases: [string, string, string | undefined][] = [
    ["unified", "sysfs /sys sysfs rw 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n", "/sys/fs/cgroup"],
    [
      "hybrid",
      "tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n" +
      "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n",
      "/sys/fs/cgroup/unified",
    ],
    ["v1 only", "tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n", undefined],
    ["a path that only names cgroup2", "tmpfs /srv/cgroup2 tmpfs rw 0 0\n", undefined],
    ["empty", "", undefined],
  ];
  for (const [name, mounts, want] of cases) await t.step(name, () => assert.equal(cgroup2Mount(mounts), want));
});
