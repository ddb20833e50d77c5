/**
 * V8 settings per mode (issue 18): the flags the installed launcher passes to Deno for each `skiff` mode, in
 * one table that the launcher (written by install.sh, which runs this module to read it), the `compile` task
 * and the test harness all follow. V8 reads heap flags once, when the process starts, before any of Skiff's
 * code runs (`node:v8`'s `setFlagsFromString` cannot change a heap's sizes later), so they have to come from
 * whatever starts Deno: `--v8-flags=` on `deno run`, or `deno compile --v8-flags=`, which bakes one set into
 * the binary for every mode (a compiled binary ignores `DENO_V8_FLAGS`: denort passes only the flags from its
 * metadata); so the compile task bakes none, and a compiled skiff runs every mode with V8's defaults.
 *
 * Only ztunnel gets flags. It runs on every node, mostly idle, each in its own process, so what V8 keeps
 * around for speed it does not need is paid once per node: V8's young generation may grow to two 32 MiB
 * semi-spaces (heap_size_limit shows it), which a proxy shuttling 256 KiB chunks between sockets fills with
 * short-lived objects and then keeps. docs/performance.md ("Memory per mode") has the RSS and throughput each
 * setting measured, and the command that made them. The control plane, the CA and the CNI commands keep V8's
 * defaults: the control plane builds large models where a small young generation would promote (and then
 * mark-compact) garbage it would otherwise drop for free.
 *
 * V8's flags are process-wide: the worker threads of a proxy (each a Deno Worker, an isolate of its own) get
 * them too, each isolate with its own young generation of that size.
 *
 * Run as a script, it prints a mode's flags comma-separated (the form `--v8-flags=` takes), or nothing; with
 * `--all`, a "MODE FLAGS" line for each mode that has flags (install.sh writes the launcher's table from it).
 *
 * @module
 */

/**
 * The V8 flags each mode runs with; a mode not listed runs with V8's defaults. The waypoint keeps them: its
 * request path makes many short-lived objects per request, and with `--max-semi-space-size=2` it spent 1.2× the
 * CPU per request (bench/waypoint_profile.ts: 178–185 µs against 146–151; garbage collection 19% of its time
 * against 3%), where ztunnel's byte path measured no cost.
 */
export const V8_FLAGS: Readonly<Record<string, readonly string[]>> = {
  ztunnel: ["--max-semi-space-size=2"],
};

/** The flags for `mode` (the first argument of `skiff`), as `--v8-flags=` takes them; "" for V8's defaults. */
export function v8FlagsFor(mode: string | undefined): string {
  return mode !== undefined && Object.hasOwn(V8_FLAGS, mode) ? V8_FLAGS[mode].join(",") : "";
}

// install.sh runs this with --all to write the launcher's table: one "MODE FLAGS" line per mode with flags.
if (import.meta.main) {
  if (Deno.args[0] === "--all") {
    for (const mode of Object.keys(V8_FLAGS)) if (v8FlagsFor(mode)) console.log(mode, v8FlagsFor(mode));
  } else console.log(v8FlagsFor(Deno.args[0]));
}
