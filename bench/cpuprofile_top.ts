/**
 * The bottom-up summary of a V8 `.cpuprofile` (as `deno run --cpu-prof` writes): self time per function, the
 * heaviest first, with its share of the samples. For "Where the CPU goes" in docs/benchmarks.md.
 *
 * ```sh
 * deno run --allow-all --cpu-prof --cpu-prof-dir=/tmp/prof bench/hbone_profile.ts 500 1
 * deno run --allow-read bench/cpuprofile_top.ts /tmp/prof/*.cpuprofile [top=25]
 * ```
 *
 * @module
 */

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
}

interface Profile {
  nodes: ProfileNode[];
  samples: number[];
}

/** Self samples per function (name and source location), heaviest first. */
export function selfTime(profile: Profile): { name: string; samples: number }[] {
  const byNode = new Map<number, ProfileNode>(profile.nodes.map((n) => [n.id, n]));
  const counts = new Map<string, number>();
  for (const id of profile.samples) {
    const { functionName, url, lineNumber } = byNode.get(id)!.callFrame;
    const file = url.replace(/^.*\/(ext|node|main|dataplane|tests)\//, "$1/");
    const key = `${functionName || "(anonymous)"} ${file ? `${file}:${lineNumber + 1}` : ""}`.trim();
    counts.set(key, (counts.get(key) ?? 0) + 1);
  }
  return [...counts].map(([name, samples]) => ({ name, samples })).sort((a, b) => b.samples - a.samples);
}

if (import.meta.main) {
  const files = Deno.args.filter((a) => a.endsWith(".cpuprofile"));
  const top = Number(Deno.args.find((a) => /^\d+$/.test(a)) ?? 25);
  for (const file of files) {
    const rows = selfTime(JSON.parse(Deno.readTextFileSync(file)));
    const all = rows.reduce((s, r) => s + r.samples, 0);
    console.log(`${file}: ${all} samples`);
    for (const r of rows.slice(0, top)) {
      console.log(`${(100 * r.samples / all).toFixed(1).padStart(5)}%  ${r.name}`);
    }
  }
}
