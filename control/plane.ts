/**
 * The control plane's core loop: the sources (the manifests directory, the node agents' registrations) feed one
 * set of objects; a change schedules a rebuild, debounced so a burst (an editor's several writes, a directory
 * of new files, many pods registering) becomes one build and one delta; each build allocates addresses for
 * services that need them, runs the pure builder, publishes, tells each node agent following its node whether
 * that node's view changed, and records the objects in force in the store.
 *
 * Debounce: a build runs {@link QUIET_MS} after the last change, and at most {@link MAX_DELAY_MS} after the first
 * change of a burst (istiod's `PILOT_DEBOUNCE_AFTER` / `PILOT_DEBOUNCE_MAX`, shortened: a policy dropped into
 * the manifests directory is enforced well within a second).
 *
 * @module
 */

import type { Cidr } from "../mesh/net.ts";
import type { Logger } from "../mesh/log.ts";
import type { NodePodsView } from "../mesh/protocol/node_pods.ts";
import { BuildCache, buildMesh, type DeclaredObject, type MeshModel, type ModelNote, readSpec } from "./build/mod.ts";
import type { MeshSettings } from "./build/common.ts";
import type { Registration } from "./build/workloads.ts";
import { NodeViews } from "./node_views.ts";
import { Publisher } from "./push.ts";
import { checkReport, emptyFacts, recordReport, ReportError, type ReportFacts, reportFacts } from "./reports.ts";
import {
  formatProblem,
  loadManifestDir,
  type ManifestObject,
  type ManifestProblem,
  ManifestSet,
  objectKey,
} from "./sources/manifests.ts";
import type { ControlStore } from "./store.ts";

/** Quiet time after the last change before a build. */
export const QUIET_MS = 10;
/** Longest a change waits for a build during a continuous burst. */
export const MAX_DELAY_MS = 100;

/** A source of objects besides the manifests directory (the Kubernetes API). */
export interface ObjectSource {
  objects(): Map<string, ManifestObject>;
  problems(): ManifestProblem[];
}

/** The control plane's state and loop. */
export class ControlPlane {
  readonly publisher = new Publisher();
  readonly manifests = new ManifestSet();
  readonly #store: ControlStore;
  readonly #settings: MeshSettings;
  readonly #serviceRange: Cidr;
  readonly #log: Logger;
  readonly #manifestDir?: string;
  #model: MeshModel = {
    workloads: [],
    services: [],
    policies: [],
    routes: [],
    l7Policies: [],
    identities: new Map(),
    nodePods: new Map(),
    nodeUnits: new Map(),
    ambientNamespaces: [],
    needAddresses: [],
    allocationOwners: [],
    notes: [],
  };
  readonly #cache = new BuildCache();
  readonly #nodeViews = new NodeViews();
  /**
   * What node agents' reports are checked against: the last build's pods, nodes and addresses. Made from the
   * build when a report first needs it, not by every build (10,000 pods' worth of keys for a policy change).
   */
  #reportFacts: ReportFacts | (() => ReportFacts);
  readonly #sources: ObjectSource[] = [];
  #timer?: ReturnType<typeof setTimeout>;
  #firstChange?: number;
  #building = Promise.resolve();
  #loggedProblems = new Set<string>();
  #loggedNotes = new Set<string>();

  constructor(opts: {
    store: ControlStore;
    settings: MeshSettings;
    serviceRange: Cidr;
    log: Logger;
    manifestDir?: string;
  }) {
    this.#store = opts.store;
    this.#settings = opts.settings;
    this.#serviceRange = opts.serviceRange;
    this.#log = opts.log;
    this.#manifestDir = opts.manifestDir;
    this.#reportFacts = emptyFacts(opts.serviceRange);
    this.manifests.seed(this.#storedObjects());
  }

  /** The last build. */
  get model(): MeshModel {
    return this.#model;
  }

  /** The node agent's view of `node` from the last build (empty, with its version, for a node with no pods). */
  nodeView(node: string): NodePodsView {
    return this.#nodeViews.view(node);
  }

  /** Calls `fn` with `node`'s new view after each build that changes it; returns the unsubscribe. */
  subscribeNode(node: string, fn: (view: NodePodsView) => void): () => void {
    return this.#nodeViews.subscribe(node, fn);
  }

  /** Problems of the sources and notes of the last build, for the status endpoint. */
  status(): { problems: ManifestProblem[]; notes: ModelNote[] } {
    return {
      problems: [...this.manifests.problems(), ...this.#sources.flatMap((s) => s.problems())],
      notes: this.#model.notes,
    };
  }

  /** Adds a source; its objects count from the next build (the source calls {@link changed}). */
  attach(source: ObjectSource): void {
    this.#sources.push(source);
  }

  /** Reads the manifests directory and builds; call once at start. */
  async start(): Promise<void> {
    await this.reloadManifests();
    this.#build();
  }

  /** Re-reads the manifests directory; schedules a build when something changed. */
  async reloadManifests(): Promise<void> {
    if (!this.#manifestDir) return;
    let changed: Set<string>;
    try {
      changed = await loadManifestDir(this.#manifestDir, this.manifests);
    } catch (error) {
      this.#log.error(
        { dir: this.#manifestDir, error: (error as Error).message },
        "cannot read the manifests directory; the objects in force stay",
      );
      return;
    }
    this.#reportProblems();
    for (const k of changed) this.#unsaved.add(k);
    if (changed.size > 0) this.changed(`manifests: ${changed.size} object(s)`);
  }

  /**
   * Replaces what node `node` registered with the pods of its report that stay on that node (control/reports.ts),
   * as the last build knows the nodes, pods and addresses, and schedules a build. A refused pod changes nothing:
   * what the node reported of it before stays, less any address one of the pods taken now has.
   * @throws {ReportError} naming each refused pod, once the others are stored.
   */
  register(node: string, pods: Registration[]): void {
    if (typeof this.#reportFacts === "function") this.#reportFacts = this.#reportFacts();
    const { accepted, refused } = checkReport(node, pods, this.#reportFacts);
    let stored = accepted;
    if (refused.length > 0) {
      const names = new Set(refused.map((r) => `${r.pod.namespace}/${r.pod.name}`));
      const taken = new Set(accepted.flatMap((p) => p.ips));
      const earlier = this.#store.registrations()
        .filter((r) => r.node === node && names.has(`${r.namespace}/${r.name}`))
        .map((r) => ({ ...r, ips: r.ips.filter((ip) => !taken.has(ip)) }));
      stored = [...accepted, ...earlier];
    }
    this.#store.setRegistrations(node, stored);
    this.#reportFacts = recordReport(this.#reportFacts, node, accepted);
    this.changed(`registrations from ${node}`);
    if (refused.length > 0) throw new ReportError(node, refused, accepted.length);
  }

  /** Schedules a debounced build. */
  changed(why: string): void {
    const now = Date.now();
    this.#firstChange ??= now;
    clearTimeout(this.#timer);
    const wait = Math.max(0, Math.min(QUIET_MS, this.#firstChange + MAX_DELAY_MS - now));
    this.#timer = setTimeout(() => {
      this.#firstChange = undefined;
      this.#timer = undefined;
      this.#building = this.#building.then(() => this.#build(why)).catch((error) => {
        // One failed build (a full disk under the store, a bug) must not stop the ones after it.
        this.#log.error({ why, error: String(error) }, "build failed; the last published config stays in force");
      });
    }, wait);
  }

  /** Waits for a scheduled build to run (tests, shutdown). */
  async settled(): Promise<void> {
    while (this.#timer !== undefined) await new Promise((r) => setTimeout(r, QUIET_MS));
    await this.#building;
  }

  /** Stops scheduling builds. */
  close(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  #build(why = "start"): void {
    const started = performance.now();
    const inForce = this.manifests.objects();
    const objects = [...inForce.values()];
    // An object both in the manifests and in another source: the manifest's stays, the other is reported.
    for (const source of this.#sources) {
      for (const [k, o] of source.objects()) if (!inForce.has(k)) objects.push(o);
    }
    // Read from the store once per build, not once per use: every node agent's pods, decoded row by row.
    const registrations = this.#store.registrations();
    const input = (vips: ReadonlyMap<string, string>) => ({
      objects: objects as DeclaredObject[],
      registrations,
      vips,
      settings: this.#settings,
    });
    const vips = this.#store.addresses();
    let model = buildMesh(input(vips), this.#cache);
    const explicit = new Set(model.services.flatMap((s) => s.addresses.map((a) => a.address)));
    const owners = new Set(model.allocationOwners);
    const stale = [...vips.keys()].some((k) => !owners.has(k));
    if (model.needAddresses.length > 0 || stale) {
      try {
        // Addresses of Services gone from the manifests go back to the range.
        this.#store.allocateAddresses(model.needAddresses, this.#serviceRange, explicit, owners);
        model = buildMesh(input(this.#store.addresses()), this.#cache);
      } catch (error) {
        this.#log.error({ error: (error as Error).message }, "cannot allocate service addresses");
      }
    }
    this.#model = model;
    this.#reportFacts = () => reportFacts(objects as DeclaredObject[], model, this.#serviceRange);
    const built = performance.now();
    const delta = this.publisher.publish(model);
    const nodes = this.#nodeViews.update(model);
    const published = performance.now();
    this.#persist(inForce);
    const notes = new Set<string>();
    for (const n of model.notes) {
      const text = `${n.key}: ${n.message}`;
      notes.add(text);
      if (this.#loggedNotes.has(text)) continue; // logged once while it lasts, not on every build
      if (n.severity === "error") this.#log.error({ object: n.key }, n.message);
      else this.#log.warn({ object: n.key }, n.message);
    }
    this.#loggedNotes = notes;
    this.#log.info({
      why,
      version: this.publisher.version,
      workloads: model.workloads.length,
      services: model.services.length,
      policies: model.policies.length,
      routes: model.routes.length,
      l7Policies: model.l7Policies.length,
      changed: delta?.resources.length ?? 0,
      removed: delta?.removed.length ?? 0,
      subscribers: this.publisher.subscribers,
      nodeViewsChanged: nodes.length,
      ms: Math.round(performance.now() - started),
      buildMs: Math.round(built - started),
      publishMs: Math.round(published - built),
    }, delta || nodes.length > 0 ? "pushed" : "built; nothing changed");
  }

  /** Keys of objects that changed since they were last written to the store. */
  #unsaved = new Set<string>();

  #persist(inForce: ReadonlyMap<string, ManifestObject>): void {
    if (this.#unsaved.size === 0) return;
    const changed: ManifestObject[] = [];
    const removed: string[] = [];
    for (const k of this.#unsaved) {
      const o = inForce.get(k);
      if (o) changed.push(o);
      else removed.push(k);
    }
    this.#store.saveObjects(
      changed.map((o) => ({ key: objectKey(o), file: o.file, line: o.line, json: o.digest })),
      removed,
    );
    this.#unsaved.clear();
  }

  #storedObjects(): ManifestObject[] {
    const out: ManifestObject[] = [];
    for (const s of this.#store.objects()) {
      const [kind, namespace, name] = s.key.split("/");
      const document = JSON.parse(s.json) as Record<string, unknown>;
      const meta = (document.metadata ?? {}) as Record<string, unknown>;
      try {
        out.push({
          apiVersion: String(document.apiVersion),
          kind,
          namespace,
          name,
          labels: (meta.labels ?? {}) as Record<string, string>,
          annotations: (meta.annotations ?? {}) as Record<string, string>,
          spec: readSpec(kind, document),
          file: s.file,
          line: s.line,
          digest: s.json,
        });
      } catch (error) {
        this.#log.warn({ object: s.key, error: (error as Error).message }, "a stored object no longer reads; dropped");
      }
    }
    return out;
  }

  #reportProblems(): void {
    const now = new Set(this.manifests.problems().map(formatProblem));
    for (const p of now) {
      if (!this.#loggedProblems.has(p)) {
        this.#log.error({ problem: p }, "manifest rejected; the last good version stays in force");
      }
    }
    this.#loggedProblems = now;
  }
}
