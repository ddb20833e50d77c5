/**
 * `deno task bench`: runs every benchmark and writes the results, with the commands that made them and the
 * machine they ran on, to docs/benchmarks.md. The micro-benchmarks under bench/ run with `deno bench`; the
 * data-plane benchmark (bench/dataplane.ts) is a script, since it builds network namespaces and starts
 * ztunnel and stunnel processes (it says why when it cannot run, and it needs root); so is the waypoint's
 * (bench/waypoint.ts: wrk through a waypoint, directly and through haproxy), the proxies' memory per mode
 * (bench/memory.ts: RSS of a real ztunnel and waypoint, with their V8 flags and without), and the control plane's
 * (bench/control.ts), which starts `skiff control` over ten thousand pods; the churn test (tests/churn_test.ts)
 * runs for its counts. Numbers are for comparing
 * runs on one kind of machine; the test suite never asserts on time.
 *
 * @module
 */

const RUNS: { title: string; args: string[] }[] = [
  { title: "Micro-benchmarks", args: ["bench", "--allow-all", "--no-check", "bench/"] },
  {
    title: "Data plane: direct TCP, Skiff (two ztunnels, HBONE), stunnel, bare node:tls pair",
    args: ["run", "--allow-all", "bench/dataplane.ts"],
  },
  {
    title: "Waypoint: HTTP/1.1 through skiff waypoint vs direct vs haproxy",
    args: ["run", "--allow-all", "bench/waypoint.ts"],
  },
  {
    title: "Memory per mode: ztunnel and waypoint RSS, with the modes' V8 flags and with V8's defaults",
    args: ["run", "--allow-all", "bench/memory.ts"],
  },
  {
    title: "Control plane at scale: 10,000 workloads, 1,000 services, 10 subscribed nodes",
    args: ["run", "--allow-all", "bench/control.ts"],
  },
  {
    title: "One node's ztunnel holding a large mesh: 10,000 and 100,000 workloads",
    args: ["run", "--allow-all", "bench/sync.ts"],
  },
  // Counts, not timings: the churn test asserts they are all 0 and prints them, so they are written down here.
  {
    title: "Live traffic under config churn (counts)",
    args: ["test", "--allow-all", "tests/churn_test.ts"],
  },
  // Counts again: new connections lost while a ztunnel is replaced (a second one, then SIGTERM; and SIGHUP's reload).
  {
    title: "ztunnel restart and reload under load (counts)",
    args: ["test", "--allow-all", "tests/ztunnel_restart_test.ts"],
  },
];

const sections: string[] = [];
for (const run of RUNS) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: run.args,
    env: { RUST_BACKTRACE: "0", NO_COLOR: "1" },
    stdout: "piped",
    stderr: "inherit",
  }).output();
  const text = new TextDecoder().decode(out.stdout); // NO_COLOR: plain text
  console.log(text);
  if (!out.success) {
    console.error(`deno ${run.args.join(" ")} failed with exit ${out.code}`);
    Deno.exit(out.code);
  }
  sections.push(`## ${run.title}\n\n\`deno ${run.args.join(" ")}\`\n\n\`\`\`\n${text.trim()}\n\`\`\`\n`);
}

const cores = navigator.hardwareConcurrency;
const memGiB = (Deno.systemMemoryInfo().total / 2 ** 30).toFixed(0);
const doc = `# Benchmarks

Made by \`deno task bench\` (which runs the commands below and writes this file) on
${new Date().toISOString().slice(0, 10)}, Deno ${Deno.version.deno}, ${cores} cores, ${memGiB} GiB. Shared
machines vary run to run: compare ratios within one run, not absolute numbers across runs. Each target is printed
as met or MISSED; the profiles behind the misses are in docs/performance.md, which is written by hand.

${sections.join("\n")}`;
await Deno.writeTextFile(new URL("../docs/benchmarks.md", import.meta.url), doc);
console.log("wrote docs/benchmarks.md");
