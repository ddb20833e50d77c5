/**
 * Skiff's entry point: picks the role from argv (or the CNI plugin, when the runtime set CNI_COMMAND) and
 * hands over to it. Nothing else happens here; each role loads only its own modules, so short-lived commands
 * such as the CNI plugin start fast.
 *
 * @module
 */

import process from "node:process";
import { NotBuiltError, runAndExit, USAGE, VERSION } from "./mesh/cli.ts";
import { UsageError } from "./mesh/config.ts";

type Mode = (argv: string[]) => Promise<number>;

const notBuilt = (what: string): Mode => () => Promise.reject(new NotBuiltError(what));

const MODES: Record<string, Mode> = {
  control: notBuilt("skiff control"),
  ca: async (argv) => (await import("./certs/cli.ts")).runCaCommand(argv),
  "cni-agent": notBuilt("skiff cni-agent"),
  ztunnel: notBuilt("skiff ztunnel"),
  waypoint: notBuilt("skiff waypoint"),
  demo: notBuilt("skiff demo"),
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
    if (process.env.CNI_COMMAND !== undefined) return cniPlugin();
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

/**
 * The CNI plugin is not built yet. The runtime reads a CNI error from stdout, so say it in that form
 * (code 50: the plugin is not available) as well as in plain words on stderr.
 */
function cniPlugin(): Promise<number> {
  console.log(JSON.stringify({ cniVersion: "1.1.0", code: 50, msg: "skiff cni plugin: not built yet" }));
  console.error("skiff cni plugin: not built yet");
  return Promise.resolve(1);
}
