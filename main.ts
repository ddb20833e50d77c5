/**
 * Skiff's entry point: picks the role from argv (or the CNI plugin, when the runtime set CNI_COMMAND) and
 * hands over to it. Nothing else happens here; each role loads only its own modules, so short-lived commands
 * such as the CNI plugin start fast.
 *
 * @module
 */

import process from "node:process";
import { runAndExit, USAGE, VERSION } from "./mesh/cli.ts";
import { UsageError } from "./mesh/config.ts";

type Mode = (argv: string[]) => Promise<number>;

// Each role is imported only when chosen, so a short-lived command loads only what it runs.
const MODES: Record<string, Mode> = {
  control: async (argv) => (await import("./control/mod.ts")).runControl(argv),
  ca: async (argv) => (await import("./certs/cli.ts")).runCaCommand(argv),
  "cni-agent": async (argv) => (await import("./cni/mod.ts")).runCniAgent(argv),
  "unit-gate": async (argv) => (await import("./cni/unit_gate.ts")).runUnitGate(argv),
  // Each proxy straight from its own module, not through dataplane/mod.ts, which holds both: a ztunnel that
  // loaded the waypoint's HTTP stack (and a waypoint ztunnel's YAML reader) held it in memory for nothing.
  ztunnel: async (argv) => (await import("./dataplane/ztunnel/mod.ts")).runZtunnel(argv),
  waypoint: async (argv) => (await import("./dataplane/waypoint/mod.ts")).runWaypoint(argv),
  demo: async (argv) => (await import("./demo/mod.ts")).runDemo(argv),
  version: () => {
    console.log(`skiff ${VERSION} (deno ${Deno.version.deno})`);
    return Promise.resolve(0);
  },
  help: () => {
    console.log(USAGE);
    return Promise.resolve(0);
  },
};

if (import.meta.main) {
  const argv = Deno.args;
  await runAndExit(USAGE, () => {
    if (process.env.CNI_COMMAND !== undefined) return import("./cni/plugin.ts").then((m) => m.runCniPlugin());
    const [mode, ...rest] = argv;
    if (mode === undefined) throw new UsageError("no mode given");
    if (mode === "--help" || mode === "-h") return MODES.help(rest);
    if (mode === "--version") return MODES.version(rest);
    const run = Object.hasOwn(MODES, mode) ? MODES[mode] : undefined;
    if (!run) {
      throw new UsageError(
        mode.startsWith("-") ? `unknown flag ${mode}` : `unknown mode ${JSON.stringify(mode)}`,
      );
    }
    return run(rest);
  });
}
