/**
 * `deno task bench`: runs every benchmark under bench/ and writes the results, with the command that made
 * them and the machine they ran on, to docs/benchmarks.md. Numbers are for comparing runs on one kind of
 * machine; the suite never asserts on time.
 *
 * @module
 */

const COMMAND = ["bench", "--allow-all", "--no-check", "bench/"];

const out = await new Deno.Command(Deno.execPath(), {
  args: COMMAND,
  env: { RUST_BACKTRACE: "0", NO_COLOR: "1" },
  stdout: "piped",
  stderr: "inherit",
}).output();
const text = new TextDecoder().decode(out.stdout); // NO_COLOR: plain text
console.log(text);
if (!out.success) {
  console.error(`deno ${COMMAND.join(" ")} failed with exit ${out.code}`);
  Deno.exit(out.code);
}
const cores = navigator.hardwareConcurrency;
const memGiB = (Deno.systemMemoryInfo().total / 2 ** 30).toFixed(0);
const doc = `# Benchmarks

Made by \`deno task bench\` (which runs \`deno ${COMMAND.join(" ")}\` and writes this file) on
${new Date().toISOString().slice(0, 10)}, Deno ${Deno.version.deno}, ${cores} cores, ${memGiB} GiB. Shared
machines vary run to run: compare ratios within one run, not absolute numbers across runs.

\`\`\`
${text.trim()}
\`\`\`
`;
await Deno.writeTextFile(new URL("../docs/benchmarks.md", import.meta.url), doc);
console.log("wrote docs/benchmarks.md");
