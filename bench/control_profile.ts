/**
 * Where the control plane's memory and per-change time go at bench/control.ts's scale (10,000 pods, 1,000
 * services, 100 policies), measured in process with the control plane's own pieces, one at a time: the manifests
 * set, the build (and its cache), the publisher, the node views, the cached snapshots. Each heap figure is
 * what the piece keeps after a full GC (so run with `--v8-flags=--expose-gc`); each time is the median of the
 * changes bench/control.ts makes (one namespace-wide policy rewritten in its own file).
 *
 * ```sh
 * deno run --allow-all --v8-flags=--expose-gc bench/control_profile.ts [changes=30]
 * ```
 *
 * For docs/performance.md, "The control plane at 10k".
 *
 * @module
 */

import { join } from "node:path";
import { BuildCache, buildMesh, type DeclaredObject } from "../control/build/mod.ts";
import { DEFAULT_SETTINGS } from "../control/build/common.ts";
import { NodeViews } from "../control/node_views.ts";
import { Publisher } from "../control/push.ts";
import { loadManifestDir, ManifestSet, objectKey } from "../control/sources/manifests.ts";
import { ControlStore } from "../control/store.ts";
import { meshManifests } from "./mesh_manifests.ts";

const CHANGES = Number(Deno.args[0] ?? 30);
const gc = (globalThis as { gc?: () => void }).gc;
if (!gc) throw new Error("control_profile: run with --v8-flags=--expose-gc");

const heapMiB = () => {
  gc!();
  gc!();
  return Deno.memoryUsage().heapUsed / 2 ** 20;
};
const rows: [string, string][] = [];
let last = heapMiB();
const step = (what: string) => {
  const now = heapMiB();
  const m = Deno.memoryUsage();
  rows.push([
    what,
    `${(now - last).toFixed(1)} MiB (heap ${now.toFixed(0)} of ${(m.heapTotal / 2 ** 20).toFixed(0)} MiB, RSS ${
      (m.rss / 2 ** 20).toFixed(0)
    } MiB)`,
  ]);
  last = now;
};

const dir = await Deno.makeTempDir({ prefix: "skiff-profile-" });
try {
  const manifests = join(dir, "manifests");
  await Deno.mkdir(manifests);
  for (
    const [name, text] of Object.entries(
      meshManifests({ pods: 10_000, services: 1_000, policies: 100, nodes: 10, namespaces: 20 }),
    )
  ) {
    await Deno.writeTextFile(join(manifests, name), text);
  }
  const store = ControlStore.open(join(dir, "data"));
  step("start (modules, store)");

  const set = new ManifestSet();
  let t = performance.now();
  await loadManifestDir(manifests, set);
  const loadMs = performance.now() - t;
  step(`manifests set (${set.objects().size} objects; read and parsed in ${loadMs.toFixed(0)} ms)`);

  const cache = new BuildCache();
  const input = () => ({
    objects: [...set.objects().values()] as DeclaredObject[],
    registrations: store.registrations(),
    vips: store.addresses(),
    settings: DEFAULT_SETTINGS,
  });
  t = performance.now();
  let model = buildMesh(input(), cache);
  const buildMs = performance.now() - t;
  step(`model and build cache (first build ${buildMs.toFixed(0)} ms)`);

  const publisher = new Publisher();
  t = performance.now();
  publisher.publish(model);
  const publishMs = performance.now() - t;
  step(`publisher entries (${publisher.size}; first publish ${publishMs.toFixed(0)} ms)`);

  const views = new NodeViews();
  views.update(model);
  step("node views");

  const objects = [...set.objects().values()];
  store.saveObjects(objects.map((o) => ({ key: objectKey(o), file: o.file, line: o.line, json: o.digest })), []);
  step("store (objects saved)");

  const parts = publisher.snapshot({}, true);
  step(
    `cached snapshot, in parts (${parts.lines.length} lines, ${
      (parts.lines.reduce((n, l) => n + l.length, 0) / 2 ** 20).toFixed(1)
    } MiB)`,
  );
  const one = publisher.snapshot({}, false);
  step(`cached snapshot, one line (${(one.lines[0].length / 2 ** 20).toFixed(1)} MiB; replaces the parts form)`);

  // Per change: what bench/control.ts does, one step at a time.
  const times: Record<string, number[]> = { reload: [], build: [], publish: [], nodeViews: [], persist: [] };
  for (let u = 0; u < CHANGES; u++) {
    await Deno.writeTextFile(
      join(manifests, "bench-change.yaml"),
      `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: changing, namespace: ns-0 }
spec:
  action: DENY
  rules: [{ from: [{ source: { principals: [cluster.local/ns/ns-1/sa/update-${u}] } }] }]
`,
    );
    let t0 = performance.now();
    const changed = await loadManifestDir(manifests, set);
    let t1 = performance.now();
    times.reload.push(t1 - t0);
    t0 = t1;
    model = buildMesh(input(), cache);
    t1 = performance.now();
    times.build.push(t1 - t0);
    t0 = t1;
    publisher.publish(model);
    t1 = performance.now();
    times.publish.push(t1 - t0);
    t0 = t1;
    views.update(model);
    t1 = performance.now();
    times.nodeViews.push(t1 - t0);
    t0 = t1;
    const inForce = set.objects();
    store.saveObjects(
      [...changed].flatMap((k) => {
        const o = inForce.get(k);
        return o ? [{ key: k, file: o.file, line: o.line, json: o.digest }] : [];
      }),
      [],
    );
    times.persist.push(performance.now() - t0);
  }
  step(`after ${CHANGES} changes`);
  store.close();

  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  console.log("What each piece keeps (heap after a full GC):");
  for (const [what, size] of rows) console.log(`  ${what}: ${size}`);
  console.log(`Per change (median of ${CHANGES}):`);
  for (const [what, xs] of Object.entries(times)) console.log(`  ${what}: ${median(xs).toFixed(1)} ms`);
  const m = Deno.memoryUsage();
  console.log(`RSS ${(m.rss / 2 ** 20).toFixed(0)} MiB, external ${(m.external / 2 ** 20).toFixed(0)} MiB`);
} finally {
  await Deno.remove(dir, { recursive: true });
}
