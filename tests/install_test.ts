/**
 * What `install.sh` puts on a machine: the product set (what Skiff needs at run time, `skiff demo` included) and
 * nothing else; the test and benchmark tools only with `--dev`, which the README's test command (and so
 * .ci/run) uses. Read through `install.sh --print-packages`, its dry run, so the lists tested are the ones it
 * installs. The commands Skiff's own code runs (found in main.ts's module graph) must come from the product set
 * or from Debian's essential packages, which every Debian machine has.
 */

import assert from "node:assert/strict";
import { run } from "./harness/netns.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const INSTALL = `${ROOT}install.sh`;

/** The product set, exactly: a package added here is a package on every VM, so it is a decision, not a habit. */
const PRODUCT = ["iptables", "iproute2", "procps", "ca-certificates", "containernetworking-plugins", "curl"];

/** Tools that only tests and benchmarks use: never in the product set, always with --dev. */
const TEST_TOOLS = [
  "haproxy",
  "wrk",
  "stunnel4",
  "nghttp2-client",
  "python3-h2",
  "python3-grpcio",
  "openssl",
  "systemd",
  "podman",
  "runc",
  "busybox-static",
  "dnsutils",
];

/**
 * Each command Skiff's own code runs, and the Debian package it comes from. A command missing here fails the
 * test below: add it with its package, and that package to the product set unless it is essential.
 */
const COMMANDS: Record<string, string> = {
  ip: "iproute2",
  iptables: "iptables",
  "iptables-save": "iptables",
  "iptables-restore": "iptables",
  ip6tables: "iptables",
  "ip6tables-save": "iptables",
  "ip6tables-restore": "iptables",
  sysctl: "procps",
  curl: "curl",
  nsenter: "util-linux",
  setsid: "util-linux",
  env: "coreutils",
};

async function packages(...flags: string[]): Promise<string[]> {
  const out = await run(["bash", INSTALL, ...flags, "--print-packages"]);
  assert.equal(out.code, 0, `install.sh ${flags.join(" ")} --print-packages: ${out.stderr}`);
  return out.stdout.trim().split("\n");
}

Deno.test("install.sh installs the product set and nothing else; --dev adds the test tools", async (t) => {
  const product = await packages();
  const dev = await packages("--dev");
  await t.step("the product set is exactly the packages Skiff needs", () => {
    assert.deepEqual([...product].sort(), [...PRODUCT].sort());
  });
  for (const tool of TEST_TOOLS) {
    await t.step(`${tool}: only with --dev`, () => {
      assert.ok(!product.includes(tool), `${tool} is a test tool: it belongs in TEST_PACKAGES`);
      assert.ok(dev.includes(tool), `bash install.sh --dev must install ${tool}`);
    });
  }
  await t.step("--dev installs the product set too", () => {
    for (const p of product) assert.ok(dev.includes(p), p);
  });
});

Deno.test("install.sh: a flag it does not know stops it before anything is done", async () => {
  const out = await run(["bash", INSTALL, "--devel", "--print-packages"]);
  assert.equal(out.code, 1);
  assert.match(out.stderr, /unknown flag --devel/);
  assert.equal(out.stdout, "");
});

Deno.test("the README: set-up installs the product only, the test command installs --dev", async () => {
  const readme = await Deno.readTextFile(`${ROOT}README.md`);
  const test = readme.match(/<!-- test-command:begin -->([\s\S]*?)<!-- test-command:end -->/)?.[1] ?? "";
  const command = test.split("\n").find((l) => /^(sudo )?bash /.test(l));
  assert.ok(command, "a test command between the README's markers");
  assert.match(command, /^bash install\.sh --dev && /);
  assert.ok(readme.includes("```sh\nbash install.sh && skiff demo\n```"), "the demo's set-up: product only");
});

/** The local modules of main.ts's graph (its lazily loaded modes included): Skiff's own code. */
async function productSources(): Promise<Map<string, string>> {
  const out = await run(["deno", "info", "--json", `${ROOT}main.ts`]);
  assert.equal(out.code, 0, out.stderr);
  const info = JSON.parse(out.stdout) as { modules: { specifier: string }[] };
  const files = new Map<string, string>();
  for (const m of info.modules) {
    if (!m.specifier.startsWith("file://")) continue;
    const path = new URL(m.specifier).pathname;
    files.set(path.slice(ROOT.length), await Deno.readTextFile(path));
  }
  return files;
}

Deno.test("every command Skiff's code runs comes from the product set or an essential package", async (t) => {
  const sources = await productSources();
  assert.ok(sources.has("cni/redirect_linux.ts") && sources.has("demo/mod.ts"), [...sources.keys()].join(" "));
  // A command is the first literal of an argument vector handed to a runner, or a program named in a table.
  const patterns = [
    /\bnew Deno\.Command\(\s*"([\w.-]+)"/g,
    /\b(?:sh|must|run|mustInNs)\(\s*\[\s*"([\w.-]+)"/g,
    /\b(?:inNs|mustInNs)\([^,()]+,\s*\[\s*"([\w.-]+)"/g,
    /\b(?:iptables|save|restore):\s*"([\w.-]+)"/g,
    /\[\s*"(nsenter)"/g,
  ];
  const found = new Map<string, string>();
  for (const [file, text] of sources) {
    for (const re of patterns) for (const m of text.matchAll(re)) found.set(m[1], file);
  }
  assert.ok(found.has("iptables-restore") && found.has("curl"), `found: ${[...found.keys()]}`);
  const product = await packages();
  for (const [command, file] of [...found].sort()) {
    await t.step(command, async () => {
      const pkg = COMMANDS[command];
      assert.ok(pkg, `${file} runs ${command}: say in COMMANDS which Debian package has it`);
      if (product.includes(pkg)) return;
      const essential = await run(["dpkg-query", "-W", "-f=${Essential}", pkg]);
      assert.equal(
        essential.stdout,
        "yes",
        `${command} (${pkg}, from ${file}) is neither in the product set nor essential`,
      );
    });
  }
});
