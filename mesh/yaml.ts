/**
 * Where a field of a YAML document sits, so errors can name the line an operator must fix. Shared by the
 * local config (dataplane/ztunnel/local_config.ts) and the manifests (control/manifests.ts): both decode the
 * document's JS value with mesh/validate.ts, whose errors name a field path, and map that path back here.
 *
 * @module
 */

import type { Document, LineCounter } from "yaml";

/** Splits a field path (`workloads[1].services["a/b"][0].port`) into keys for YAML lookup. */
export function pathSegments(field: string): (string | number)[] {
  const out: (string | number)[] = [];
  const re = /([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]|\[("(?:[^"\\]|\\.)*")\]/g;
  for (const m of field.matchAll(re)) {
    if (m[1] !== undefined) out.push(m[1]);
    else if (m[2] !== undefined) out.push(Number(m[2]));
    else out.push(JSON.parse(m[3]));
  }
  return out;
}

/**
 * The 1-based line of `field` (a path relative to the document's root) in `doc`. A field that is missing is
 * reported at its deepest existing parent; undefined only when the document has no position at all.
 */
export function lineOfField(doc: Document, lines: LineCounter, field: string): number | undefined {
  const segs = pathSegments(field);
  for (let n = segs.length; n >= 0; n--) {
    const node = n === 0 ? doc.contents : doc.getIn(segs.slice(0, n), true);
    const range = (node as { range?: [number, number, number] } | undefined)?.range;
    if (range) return lines.linePos(range[0]).line;
  }
  return undefined;
}
