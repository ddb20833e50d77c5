/**
 * The layering rule, checked on every `.ts` file's imports: a role (the node agent `cni/`, the control plane
 * `control/`, the two proxies `dataplane/ztunnel/` and `dataplane/waypoint/`, the `demo/`) never imports another
 * role; what two roles share lives in a shared layer (`dataplane/proxy/`, `dataplane/h2/`, `dataplane/hbone/`,
 * `dataplane/http1/`, `mesh/`, `certs/`), and a shared layer imports no role. Only the entry points (`main.ts`,
 * `dataplane/mod.ts`) and the system tests and benchmarks (`tests/`, `bench/`) may import anything, as ztunnel's
 * `proxy.rs` is imported by both its inbound and outbound halves but imports neither. No root needed.
 */

import assert from "node:assert/strict";
import { dirname, join, normalize, relative } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = normalize(join(dirname(fileURLToPath(import.meta.url)), ".."));

/** The role folders: none may import another. */
const ROLES = ["cni/", "control/", "dataplane/ztunnel/", "dataplane/waypoint/", "demo/"];
/** Shared layers: any role may import them; they import no role. */
const SHARED = ["dataplane/proxy/", "dataplane/h2/", "dataplane/hbone/", "dataplane/http1/", "mesh/", "certs/"];
/** Files and folders outside the rule: the entry points, system tests, benchmarks. */
const FREE = ["main.ts", "dataplane/mod.ts", "tests/", "bench/"];

/** The folder (role or shared layer) a repository-relative path belongs to, or undefined when the rule skips it. */
export function layerOf(path: string): { kind: "role" | "shared"; name: string } | undefined {
  if (FREE.some((f) => path === f || (f.endsWith("/") && path.startsWith(f)))) return undefined;
  const role = ROLES.find((r) => path.startsWith(r));
  if (role) return { kind: "role", name: role };
  const shared = SHARED.find((s) => path.startsWith(s));
  if (shared) return { kind: "shared", name: shared };
  // Anything else under dataplane/ (e.g. sockets_linux.ts) is shared by both proxies.
  if (path.startsWith("dataplane/")) return { kind: "shared", name: "dataplane/" };
  return undefined;
}

/** The relative module specifiers a source imports or re-exports, static or dynamic. */
export function importsOf(source: string): string[] {
  const found: string[] = [];
  const patterns = [
    /\b(?:import|export)\b[^;'"]*?\bfrom\s*["']([^"']+)["']/g,
    /\bimport\s*["']([^"']+)["']/g,
    /\bimport\s*\(\s*["']([^"']+)["']\s*\)/g,
  ];
  for (const re of patterns) {
    for (const m of source.matchAll(re)) if (m[1].startsWith(".")) found.push(m[1]);
  }
  return found;
}

/** Why importing `to` from `from` (both repository-relative) breaks the rule, or undefined when it is allowed. */
export function violation(from: string, to: string): string | undefined {
  const a = layerOf(from);
  const b = layerOf(to);
  if (!a || !b || a.name === b.name) return undefined;
  if (b.kind === "role") return `${from} imports ${to}: ${a.kind} ${a.name} must not import role ${b.name}`;
  return undefined;
}

async function* sources(dir: string): AsyncGenerator<string> {
  for await (const entry of Deno.readDir(dir)) {
    if (entry.name.startsWith(".") || entry.name === "node_modules" || entry.name === "dist") continue;
    const path = join(dir, entry.name);
    if (entry.isDirectory) yield* sources(path);
    else if (entry.isFile && entry.name.endsWith(".ts")) yield path;
  }
}

Deno.test("layering: the rule's pure parts", async (t) => {
  const cases: [string, string, string, boolean][] = [
    ["waypoint imports ztunnel", "dataplane/waypoint/tcp.ts", "dataplane/ztunnel/relay.ts", true],
    ["ztunnel imports cni", "dataplane/ztunnel/inpod.ts", "cni/redirect_linux.ts", true],
    ["demo imports control", "demo/manifests_test.ts", "control/build/nodes.ts", true],
    ["shared imports a role", "mesh/x.ts", "control/plane.ts", true],
    ["waypoint imports proxy", "dataplane/waypoint/tcp.ts", "dataplane/proxy/relay.ts", false],
    ["role imports itself", "control/build/nodes.ts", "control/plane.ts", false],
    ["ztunnel imports sockets", "dataplane/ztunnel/inpod.ts", "dataplane/sockets_linux.ts", false],
    ["main imports roles", "main.ts", "cni/mod.ts", false],
    ["entry point", "dataplane/mod.ts", "dataplane/ztunnel/mod.ts", false],
    ["system test", "tests/ztunnel_test.ts", "cni/redirect_linux.ts", false],
  ];
  for (const [name, from, to, bad] of cases) {
    await t.step(name, () => assert.equal(violation(from, to) !== undefined, bad));
  }
  await t.step("import forms", () => {
    const src = `import { a } from "./a.ts";\nimport type { B } from "../b.ts";\nexport { c } from "./c.ts";\n` +
      `export * from "./d.ts";\nimport "./e.ts";\nconst f = await import("./f.ts");\nimport x from "node:fs";\n` +
      `import {\n  g,\n  h,\n} from "./g.ts";\n`;
    assert.deepEqual(importsOf(src).sort(), ["../b.ts", "./a.ts", "./c.ts", "./d.ts", "./e.ts", "./f.ts", "./g.ts"]);
  });
});

Deno.test("layering: no role imports another role, no shared layer imports a role", async () => {
  const problems: string[] = [];
  let files = 0;
  for await (const file of sources(ROOT)) {
    files++;
    const from = relative(ROOT, file);
    for (const spec of importsOf(await Deno.readTextFile(file))) {
      const to = relative(ROOT, normalize(join(dirname(file), spec)));
      const why = violation(from, to);
      if (why) problems.push(why);
    }
  }
  assert.ok(files > 100, `layering: found only ${files} .ts files under ${ROOT}`);
  assert.deepEqual(problems, []);
});
