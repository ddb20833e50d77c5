/**
 * The Kubernetes API source of `skiff control --kubeconfig FILE`: one informer (`@kubernetes/client-node`'s
 * list-then-watch cache, which relists on 410 Gone) per kind Skiff reads, in every namespace. Each object goes
 * through the same reader as a manifest (sources/manifests.ts, then the kind's spec reader), so a bad object is
 * reported the same way, as `kubernetes:KIND/NS/NAME: field: message`, and its last good version stays in force.
 *
 * An informer that fails (API server unreachable, token refused) is logged and restarted after a delay; the
 * objects it had stay in force meanwhile, as a proxy keeps its config while the control plane is away. The
 * client library costs about a second and a hundred megabytes to load, so this module is imported only when
 * `--kubeconfig` is given.
 *
 * @module
 */

import * as k8s from "@kubernetes/client-node";
import type { Logger } from "../../mesh/log.ts";
import { type ManifestObject, type ManifestProblem, objectKey, readObject } from "./manifests.ts";

/** A kind read from the API: where it is listed and watched. */
interface Resource {
  apiVersion: string;
  kind: string;
  /** Collection path across namespaces (what the informer watches). */
  path: string;
  group?: string;
  plural: string;
}

const core = (kind: string, plural: string): Resource => ({
  apiVersion: "v1",
  kind,
  path: `/api/v1/${plural}`,
  plural,
});
const custom = (group: string, version: string, kind: string, plural: string): Resource => ({
  apiVersion: `${group}/${version}`,
  kind,
  group,
  plural,
  path: `/apis/${group}/${version}/${plural}`,
});

/** The kinds read, as MANIFEST_KINDS names them, at the versions a current cluster serves. */
export const KUBE_RESOURCES: Resource[] = [
  core("Namespace", "namespaces"),
  core("Node", "nodes"),
  core("Pod", "pods"),
  core("Service", "services"),
  core("ServiceAccount", "serviceaccounts"),
  custom("networking.istio.io", "v1", "WorkloadEntry", "workloadentries"),
  custom("security.istio.io", "v1", "AuthorizationPolicy", "authorizationpolicies"),
  custom("security.istio.io", "v1", "PeerAuthentication", "peerauthentications"),
  custom("gateway.networking.k8s.io", "v1", "Gateway", "gateways"),
  custom("gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes"),
];

/** How long a failed informer waits before starting again. */
export const RESTART_DELAY_MS = 5_000;

/** The objects the API server holds, as the control plane reads them. */
export class KubeSource {
  readonly #objects = new Map<string, ManifestObject>();
  readonly #problems = new Map<string, ManifestProblem>();
  readonly #log: Logger;
  readonly #onChange: (why: string) => void;
  readonly #informers: k8s.Informer<k8s.KubernetesObject>[] = [];
  readonly #timers = new Set<ReturnType<typeof setTimeout>>();
  #stopped = false;

  constructor(log: Logger, onChange: (why: string) => void) {
    this.#log = log;
    this.#onChange = onChange;
  }

  /** Loads the kubeconfig and starts every informer; resolves once each has listed (or failed to). */
  async start(kubeconfig: string): Promise<void> {
    const kc = new k8s.KubeConfig();
    kc.loadFromFile(kubeconfig);
    const coreApi = kc.makeApiClient(k8s.CoreV1Api);
    const customApi = kc.makeApiClient(k8s.CustomObjectsApi);
    const lists: Record<string, () => Promise<k8s.KubernetesListObject<k8s.KubernetesObject>>> = {
      Namespace: () => coreApi.listNamespace(),
      Node: () => coreApi.listNode(),
      Pod: () => coreApi.listPodForAllNamespaces(),
      Service: () => coreApi.listServiceForAllNamespaces(),
      ServiceAccount: () => coreApi.listServiceAccountForAllNamespaces(),
    };
    await Promise.all(KUBE_RESOURCES.map(async (r) => {
      const list = lists[r.kind] ??
        (async () =>
          await customApi.listClusterCustomObject({
            group: r.group!,
            version: r.apiVersion.split("/")[1],
            plural: r.plural,
          }) as k8s.KubernetesListObject<k8s.KubernetesObject>);
      const informer = k8s.makeInformer(kc, r.path, list);
      informer.on("add", (o) => this.#put(r, o));
      informer.on("update", (o) => this.#put(r, o));
      informer.on("delete", (o) => this.#remove(r, o));
      informer.on("error", (error) => {
        if (this.#stopped) return;
        this.#log.error(
          { resource: r.path, error: String(error?.message ?? error), retryInMs: RESTART_DELAY_MS },
          "Kubernetes watch failed; the objects read so far stay in force",
        );
        const timer = setTimeout(() => {
          this.#timers.delete(timer);
          if (!this.#stopped) informer.start().catch(() => {});
        }, RESTART_DELAY_MS);
        this.#timers.add(timer);
      });
      this.#informers.push(informer);
      try {
        await informer.start();
      } catch (error) {
        this.#log.error({ resource: r.path, error: String(error) }, "cannot list from the Kubernetes API");
      }
    }));
    this.#log.info({ objects: this.#objects.size, problems: this.#problems.size }, "Kubernetes API read");
  }

  /** Stops every informer. */
  async stop(): Promise<void> {
    this.#stopped = true;
    for (const t of this.#timers) clearTimeout(t);
    await Promise.allSettled(this.#informers.map((i) => i.stop()));
  }

  /** Every object in force, keyed by `kind/namespace/name`. */
  objects(): Map<string, ManifestObject> {
    return this.#objects;
  }

  /** Every object that could not be read as it is now. */
  problems(): ManifestProblem[] {
    return [...this.#problems.values()];
  }

  #put(r: Resource, o: k8s.KubernetesObject): void {
    // List items come without apiVersion and kind; the collection says what they are.
    const value = { ...o, apiVersion: o.apiVersion ?? r.apiVersion, kind: o.kind ?? r.kind };
    const where = `kubernetes:${r.kind}/${o.metadata?.namespace ?? ""}/${o.metadata?.name ?? "?"}`;
    // A pod read from the API without a Ready condition is not ready (control/build/workloads.ts podReady).
    const read = readObject(value, where, 0, undefined, "kubernetes");
    if ("problem" in read) {
      const key = read.problem.key ?? where;
      const known = this.#problems.get(key);
      this.#problems.set(key, read.problem);
      if (!known || known.message !== read.problem.message) {
        this.#log.error(
          { object: key, field: read.problem.field, problem: read.problem.message },
          "Kubernetes object rejected; its last good version stays in force",
        );
      }
      return;
    }
    const key = objectKey(read.object);
    this.#problems.delete(key);
    if (this.#objects.get(key)?.digest === read.object.digest) return;
    this.#objects.set(key, read.object);
    this.#onChange(`kubernetes: ${key}`);
  }

  #remove(r: Resource, o: k8s.KubernetesObject): void {
    const key = objectKey({
      kind: r.kind,
      namespace: r.kind === "Namespace" ? "" : o.metadata?.namespace ?? "",
      name: o.metadata?.name ?? "",
    });
    this.#problems.delete(key);
    if (this.#objects.delete(key)) this.#onChange(`kubernetes: ${key} deleted`);
  }
}
