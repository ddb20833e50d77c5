/**
 * Each node agent's view of its node (mesh/protocol/node_pods.ts) from build to build, and who follows each one.
 * A view's version is a digest of its content, so it is the same across control-plane restarts, and a build that
 * leaves a node's view as it was sends that node nothing.
 *
 * @module
 */

import { createHash } from "node:crypto";
import type { NodePod, NodePodsView, NodeUnit } from "../mesh/protocol/node_pods.ts";
import type { MeshModel } from "./build/mod.ts";

/** The view of `node`, versioned by a digest of what it says. Pure. */
export function nodePodsView(
  node: string,
  pods: NodePod[],
  ambientNamespaces: string[],
  units: NodeUnit[] = [],
): NodePodsView {
  // Without units, the digest is what it was before units existed: an upgrade sends no node a new view.
  const json = JSON.stringify({ node, pods, ambientNamespaces, ...(units.length > 0 ? { units } : {}) });
  const version = createHash("sha256").update(json).digest("hex").slice(0, 32);
  return { version, node, pods, ambientNamespaces, ...(units.length > 0 ? { units } : {}) };
}

/** The views of the last build, and their subscribers by node. */
export class NodeViews {
  #views = new Map<string, NodePodsView>();
  #ambientNamespaces: string[] = [];
  readonly #subscribers = new Map<string, Set<(view: NodePodsView) => void>>();

  /** The view of `node`: empty, with its own version, for a node with no pods. */
  view(node: string): NodePodsView {
    return this.#views.get(node) ?? nodePodsView(node, [], this.#ambientNamespaces);
  }

  /** How many subscriptions are open. */
  get subscribers(): number {
    let n = 0;
    for (const set of this.#subscribers.values()) n += set.size;
    return n;
  }

  /** Calls `fn` with `node`'s view whenever an {@link update} changes it; returns the unsubscribe. */
  subscribe(node: string, fn: (view: NodePodsView) => void): () => void {
    const set = this.#subscribers.get(node) ?? new Set();
    set.add(fn);
    this.#subscribers.set(node, set);
    return () => {
      set.delete(fn);
      if (set.size === 0 && this.#subscribers.get(node) === set) this.#subscribers.delete(node);
    };
  }

  /** Takes a build's views and tells the subscribers of each node whose view changed; returns those nodes. */
  update(model: Pick<MeshModel, "nodePods" | "ambientNamespaces"> & Partial<Pick<MeshModel, "nodeUnits">>): string[] {
    const units = model.nodeUnits ?? new Map<string, NodeUnit[]>();
    // A node that lost its last pod, or has none but follows the ambient namespaces, changes too.
    const nodes = new Set([
      ...this.#views.keys(),
      ...model.nodePods.keys(),
      ...units.keys(),
      ...this.#subscribers.keys(),
    ]);
    const before = new Map([...nodes].map((node) => [node, this.view(node).version]));
    const next = new Map<string, NodePodsView>();
    for (const node of new Set([...model.nodePods.keys(), ...units.keys()])) {
      const pods = model.nodePods.get(node) ?? [];
      const old = this.#views.get(node);
      // Most builds leave most nodes as they were: keep the view (and its version) when its content is the same,
      // rather than serializing and hashing every node's pods on every build (a fifth of a change's work at 10k).
      if (old && sameView(old, pods, model.ambientNamespaces, units.get(node))) next.set(node, old);
      else next.set(node, nodePodsView(node, pods, model.ambientNamespaces, units.get(node)));
    }
    this.#views = next;
    this.#ambientNamespaces = model.ambientNamespaces;
    const changed: string[] = [];
    for (const node of nodes) {
      const view = this.view(node);
      if (view.version === before.get(node)) continue;
      changed.push(node);
      for (const fn of [...this.#subscribers.get(node) ?? []]) fn(view);
    }
    return changed;
  }
}

/** Whether `view` says what a view of `pods`, `ambientNamespaces` and `units` would; pods compared one by one. */
function sameView(view: NodePodsView, pods: NodePod[], ambientNamespaces: string[], units: NodeUnit[] = []): boolean {
  if (view.pods.length !== pods.length || view.ambientNamespaces.length !== ambientNamespaces.length) return false;
  for (let i = 0; i < ambientNamespaces.length; i++) {
    if (view.ambientNamespaces[i] !== ambientNamespaces[i]) return false;
  }
  if (JSON.stringify(view.units ?? []) !== JSON.stringify(units)) return false;
  for (let i = 0; i < pods.length; i++) {
    // The builder's cache hands back the very objects of the namespaces a change did not touch.
    if (view.pods[i] !== pods[i] && JSON.stringify(view.pods[i]) !== JSON.stringify(pods[i])) return false;
  }
  return true;
}
