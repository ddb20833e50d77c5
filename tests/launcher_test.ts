/**
 * The launcher install.sh writes as /usr/local/bin/skiff where `deno compile` cannot run: it passes each mode
 * its V8 flags (mesh/v8_flags.ts) and leaves the others, and the CNI plugin, on V8's defaults. Run for real:
 * the launcher `install.sh --print-launcher` prints, pointed at a library whose main.ts reports the heap
 * limit V8 set up and the arguments it got, compared with Deno run directly with the table's flags.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { v8FlagsFor } from "../mesh/v8_flags.ts";
import { run } from "./harness/netns.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const LIB = "/usr/local/lib/skiff";

/** Reports what V8 was started with, as far as a script can see it: the heap limit its flags set. */
const PROBE = `import v8 from "node:v8";
console.log(JSON.stringify({ args: Deno.args, heapLimit: v8.getHeapStatistics().heap_size_limit }));
`;

interface Report {
  args: string[];
  heapLimit: number;
}

function parse(what: string, out: { code: number; stdout: string; stderr: string }): Report {
  assert.equal(out.code, 0, `${what}: ${out.stderr}`);
  return JSON.parse(out.stdout);
}

Deno.test("the launcher passes each mode its V8 flags, and the others none", async (t) => {
  const printed = await run(["bash", `${ROOT}install.sh`, "--print-launcher"]);
  assert.equal(printed.code, 0, printed.stderr);
  assert.ok(printed.stdout.includes(LIB), printed.stdout);
  const lib = await Deno.makeTempDir({ prefix: "skiff-launcher-" });
  try {
    // The library the launcher runs: the checkout's config and lock, the probe as main.ts, an empty cache.
    for (const f of ["deno.json", "deno.lock"]) await Deno.copyFile(join(ROOT, f), join(lib, f));
    await Deno.writeTextFile(join(lib, "main.ts"), PROBE);
    await Deno.mkdir(join(lib, "deno-dir"));
    const launcher = join(lib, "skiff");
    await Deno.writeTextFile(launcher, printed.stdout.replaceAll(LIB, lib), { mode: 0o755 });

    const direct = async (flags: string) =>
      parse(
        `deno run --v8-flags=${flags}`,
        await run([
          Deno.execPath(),
          "run",
          "--quiet",
          "--allow-all",
          ...(flags ? [`--v8-flags=${flags}`] : []),
          join(lib, "main.ts"),
        ]),
      );
    const defaults = await direct("");
    for (const mode of ["ztunnel", "waypoint", "control", "ca", "cni-agent", undefined]) {
      await t.step(`skiff ${mode ?? "(no mode: the CNI plugin)"}`, async () => {
        const args = mode === undefined ? [] : [mode, "--flag=1", "two words"];
        const got = parse(`launcher ${mode}`, await run([launcher, ...args]));
        assert.deepEqual(got.args, args, "the launcher hands main.ts its arguments unchanged");
        const flags = v8FlagsFor(mode);
        assert.equal(got.heapLimit, (await direct(flags)).heapLimit, `V8 started as with --v8-flags=${flags}`);
        if (flags) assert.notEqual(got.heapLimit, defaults.heapLimit, `${mode}'s flags change the heap it gets`);
      });
    }
    await t.step("ztunnel has flags; the compile task bakes none, as one binary runs every mode", async () => {
      assert.ok(v8FlagsFor("ztunnel"), "mesh/v8_flags.ts lists ztunnel");
      assert.equal(v8FlagsFor("waypoint"), "", "the waypoint keeps V8's defaults (mesh/v8_flags.ts says why)");
      // deno compile cannot run here (deno-platform.md): this checks the task and install.sh bake no flags.
      const config = JSON.parse(await Deno.readTextFile(join(ROOT, "deno.json")));
      assert.doesNotMatch(config.tasks.compile, /--v8-flags/);
      assert.doesNotMatch(await Deno.readTextFile(join(ROOT, "install.sh")), /deno compile[^\n]*--v8-flags/);
    });
  } finally {
    await Deno.remove(lib, { recursive: true });
  }
});
