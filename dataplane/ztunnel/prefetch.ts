/**
 * Which certificates ztunnel fetches ahead of need, as upstream's cert fetcher (`src/cert_fetcher.rs`): the
 * identity of every workload on this node that is reached over HBONE, as soon as the config names it (so the
 * first connection does not wait for the CA), and forgotten when no such workload is left and no pod served
 * here still uses it. Pure; the ztunnel mode applies the plan to the rotation manager.
 *
 * @module
 */

import { SpiffeId } from "../../mesh/identity.ts";
import type { Workload } from "../../mesh/workload.ts";

/** The identities of the HBONE workloads in `onNode` that belong to `trustDomain`. */
export function nodeIdentities(onNode: Iterable<Workload>, trustDomain: string): Set<string> {
  const out = new Set<string>();
  for (const w of onNode) {
    if (w.tunnelProtocol !== "HBONE" || w.trustDomain !== trustDomain) continue;
    out.add(SpiffeId.of(w.trustDomain, w.namespace, w.serviceAccount).toString());
  }
  return out;
}

/** What to prefetch and what to forget, given what is wanted, what was prefetched and what pods use. */
export function prefetchPlan(
  wanted: ReadonlySet<string>,
  prefetched: ReadonlySet<string>,
  usedByPod: (identity: string) => boolean,
): { prefetch: string[]; forget: string[]; release: string[] } {
  const prefetch = [...wanted].filter((id) => !prefetched.has(id)).sort();
  const release = [...prefetched].filter((id) => !wanted.has(id)).sort();
  return { prefetch, release, forget: release.filter((id) => !usedByPod(id)) };
}
