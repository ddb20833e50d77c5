/**
 * Indexed stores for the model, after ztunnel's `state/{workload,service}`: workloads by uid, by `network/ip`,
 * by hostname and by node; services by `namespace/hostname`, by VIP and by hostname, with their endpoints;
 * policies by `namespace/name` and by namespace; for waypoints, HTTP routes by key and by parent service, and L7
 * policies by key and by target. {@link MeshState} is the one façade the roles use. Every
 * mutation keeps the indexes consistent: replacing an object first removes its old index entries, so an
 * address that moved never points at the old owner.
 *
 * @module
 */

import { type Authorization, policyKey } from "./authorization.ts";
import { type HttpRoute, httpRouteKey, type L7Policy, l7PolicyKey, type L7Target } from "./l7.ts";
import { addressKey } from "./net.ts";
import type { FailClosedL7 } from "./refused_policy.ts";
import { type Service, serviceKey, type Workload } from "./workload.ts";

/** Adds `value` to the set under `key` in a multi-index. */
function addTo<K, V>(index: Map<K, Set<V>>, key: K, value: V): void {
  let set = index.get(key);
  if (!set) index.set(key, set = new Set());
  set.add(value);
}

/** Removes `value` from the set under `key`, dropping the set when it empties. */
function removeFrom<K, V>(index: Map<K, Set<V>>, key: K, value: V): void {
  const set = index.get(key);
  if (!set) return;
  set.delete(value);
  if (set.size === 0) index.delete(key);
}

/** Workloads indexed by uid, address, hostname, node and the services they serve. */
export class WorkloadStore {
  readonly #byUid = new Map<string, Workload>();
  readonly #byAddress = new Map<string, string>();
  readonly #byHostname = new Map<string, Set<string>>();
  readonly #byNode = new Map<string, Set<string>>();
  readonly #byService = new Map<string, Set<string>>();
  readonly #byPod = new Map<string, Set<string>>();

  /** Number of workloads. */
  get size(): number {
    return this.#byUid.size;
  }

  /** Inserts or replaces a workload (by uid). */
  upsert(w: Workload): void {
    this.remove(w.uid);
    this.#byUid.set(w.uid, w);
    for (const ip of w.addresses) this.#byAddress.set(addressKey({ network: w.network, address: ip }), w.uid);
    if (w.hostname) addTo(this.#byHostname, w.hostname, w.uid);
    addTo(this.#byNode, w.node, w.uid);
    for (const key of Object.keys(w.services)) addTo(this.#byService, key, w.uid);
    if (w.workloadType === "POD") addTo(this.#byPod, `${w.namespace}/${w.name}`, w.uid);
  }

  /** Removes a workload; returns whether it existed. */
  remove(uid: string): boolean {
    const old = this.#byUid.get(uid);
    if (!old) return false;
    this.#byUid.delete(uid);
    for (const ip of old.addresses) {
      const key = addressKey({ network: old.network, address: ip });
      if (this.#byAddress.get(key) === uid) this.#byAddress.delete(key);
    }
    if (old.hostname) removeFrom(this.#byHostname, old.hostname, uid);
    removeFrom(this.#byNode, old.node, uid);
    for (const key of Object.keys(old.services)) removeFrom(this.#byService, key, uid);
    if (old.workloadType === "POD") removeFrom(this.#byPod, `${old.namespace}/${old.name}`, uid);
    return true;
  }

  /** The workload with this uid. */
  byUid(uid: string): Workload | undefined {
    return this.#byUid.get(uid);
  }

  /**
   * The pod workload of this namespace, name and service account, as ztunnel matches a pod the node agent hands
   * it (whose uid is Kubernetes' pod UID, not the model's) to its workload.
   */
  byPod(namespace: string, name: string, serviceAccount: string): Workload | undefined {
    return this.#collect(this.#byPod.get(`${namespace}/${name}`)).find((w) => w.serviceAccount === serviceAccount);
  }

  /** The workload that owns `ip` on `network`. */
  byAddress(network: string, ip: string): Workload | undefined {
    const uid = this.#byAddress.get(addressKey({ network, address: ip }));
    return uid === undefined ? undefined : this.#byUid.get(uid);
  }

  /** Workloads reached by this DNS hostname. */
  byHostname(hostname: string): Workload[] {
    return this.#collect(this.#byHostname.get(hostname));
  }

  /** Workloads scheduled on `node`. */
  onNode(node: string): Workload[] {
    return this.#collect(this.#byNode.get(node));
  }

  /** Endpoints of the service with key `namespace/hostname`. */
  endpointsOf(serviceKey: string): Workload[] {
    return this.#collect(this.#byService.get(serviceKey));
  }

  /** All workloads. */
  all(): IterableIterator<Workload> {
    return this.#byUid.values();
  }

  #collect(uids: Set<string> | undefined): Workload[] {
    return uids ? [...uids].map((u) => this.#byUid.get(u)!) : [];
  }
}

/** Services indexed by `namespace/hostname`, by VIP and by hostname. */
export class ServiceStore {
  readonly #byKey = new Map<string, Service>();
  readonly #byVip = new Map<string, string>();
  readonly #byHostname = new Map<string, Set<string>>();
  /** Keys whose last update did not decode: the version held may lack a waypoint the update adds. */
  readonly #refused = new Set<string>();

  /** Number of services. */
  get size(): number {
    return this.#byKey.size;
  }

  /**
   * Marks the service `key` as refused: its last update did not decode. The version held (if any) stays, but
   * ztunnel refuses connections to it (route.ts) until a version decodes or it is removed, as the update may
   * put a waypoint in front of it.
   */
  refuse(key: string): void {
    this.#refused.add(key);
  }

  /** Whether the last update of the service `key` did not decode. */
  isRefused(key: string): boolean {
    return this.#refused.has(key);
  }

  /** The keys held refused. */
  refusedKeys(): string[] {
    return [...this.#refused];
  }

  /** Ends a refusal without a new version (the service is gone); returns whether there was one. */
  endRefusal(key: string): boolean {
    return this.#refused.delete(key);
  }

  /** Inserts or replaces a service (by `namespace/hostname`); a version that decoded ends the key's refusal. */
  upsert(s: Service): void {
    const key = serviceKey(s);
    this.remove(key);
    this.#byKey.set(key, s);
    for (const a of s.addresses) this.#byVip.set(addressKey(a), key);
    addTo(this.#byHostname, s.hostname, key);
  }

  /** Removes a service by key, and its refusal; returns whether it existed. */
  remove(key: string): boolean {
    this.#refused.delete(key);
    const old = this.#byKey.get(key);
    if (!old) return false;
    this.#byKey.delete(key);
    for (const a of old.addresses) {
      if (this.#byVip.get(addressKey(a)) === key) this.#byVip.delete(addressKey(a));
    }
    removeFrom(this.#byHostname, old.hostname, key);
    return true;
  }

  /** The service with key `namespace/hostname`. */
  byKey(key: string): Service | undefined {
    return this.#byKey.get(key);
  }

  /** The service whose VIP is `ip` on `network`. */
  byVip(network: string, ip: string): Service | undefined {
    const key = this.#byVip.get(addressKey({ network, address: ip }));
    return key === undefined ? undefined : this.#byKey.get(key);
  }

  /**
   * The service with this hostname; when several namespaces have one, the one in `preferNamespace` wins
   * (ztunnel prefers the local namespace), then the first by key for a stable answer.
   */
  byHostname(hostname: string, preferNamespace?: string): Service | undefined {
    const keys = this.#byHostname.get(hostname);
    if (!keys) return undefined;
    const services = [...keys].sort().map((k) => this.#byKey.get(k)!);
    return services.find((s) => s.namespace === preferNamespace) ?? services[0];
  }

  /** All services. */
  all(): IterableIterator<Service> {
    return this.#byKey.values();
  }
}

/**
 * Authorization policies by `namespace/name`, with the GLOBAL and per-namespace sets kept apart, and the
 * deny-alls standing in for policies that did not decode (mesh/refused_policy.ts), by the same key.
 */
export class PolicyStore {
  readonly #byKey = new Map<string, Authorization>();
  readonly #byNamespace = new Map<string, Set<string>>();
  readonly #global = new Set<string>();
  readonly #refused = new Map<string, Authorization>();
  /** By workload uid: deny-alls standing beside a workload whose update did not decode. */
  readonly #refusedWorkloads = new Map<string, Authorization>();

  /** Number of policies. */
  get size(): number {
    return this.#byKey.size;
  }

  /** Inserts or replaces a policy; a version that decoded ends the refusal of its key. */
  upsert(a: Authorization): void {
    const key = policyKey(a);
    this.remove(key);
    this.#byKey.set(key, a);
    if (a.scope === "GLOBAL") this.#global.add(key);
    else if (a.scope === "NAMESPACE") addTo(this.#byNamespace, a.namespace, key);
  }

  /**
   * Holds `standIn`, the deny-all of a policy that did not decode, under the stream's `key` until a version of
   * that key decodes or the key is removed. A previous good version stays beside it: it may cover workloads the
   * new scope does not, and dropping it could leave those allowing everything.
   */
  refuse(key: string, standIn: Authorization): void {
    this.#refused.set(key, standIn);
  }

  /** The keys held refused. */
  refusedKeys(): string[] {
    return [...this.#refused.keys()];
  }

  /** Ends a refusal without a new version (the policy is gone); returns whether there was one. */
  endRefusal(key: string): boolean {
    return this.#refused.delete(key);
  }

  /**
   * Holds `standIn` for the workload `uid`, whose update did not decode, until a version of it decodes or it is
   * removed ({@link endWorkloadRefusal}): the update may name a selector DENY the version held lacks.
   */
  refuseWorkload(uid: string, standIn: Authorization): void {
    this.#refusedWorkloads.set(uid, standIn);
  }

  /** The uids of the workloads held refused. */
  refusedWorkloads(): string[] {
    return [...this.#refusedWorkloads.keys()];
  }

  /** The deny-all standing for the workload `uid` while its last update did not decode, if it did not. */
  workloadRefusal(uid: string): Authorization | undefined {
    return this.#refusedWorkloads.get(uid);
  }

  /** Ends the refusal of the workload `uid`; returns whether there was one. */
  endWorkloadRefusal(uid: string): boolean {
    return this.#refusedWorkloads.delete(uid);
  }

  /** Removes a policy by key, and its refusal; returns whether either existed. */
  remove(key: string): boolean {
    const refused = this.#refused.delete(key);
    const old = this.#byKey.get(key);
    if (!old) return refused;
    this.#byKey.delete(key);
    this.#global.delete(key);
    removeFrom(this.#byNamespace, old.namespace, key);
    return true;
  }

  /** The policy with key `namespace/name`. */
  byKey(key: string): Authorization | undefined {
    return this.#byKey.get(key);
  }

  /**
   * The candidate policies for a workload, as ztunnel's `assert_rbac` gathers them: GLOBAL policies, the
   * NAMESPACE policies of its namespace, and the selector policies it names. Sorted by key, each once; the
   * deny-alls of refused policies whose scope holds the workload come first, so a denial names them, and
   * before them the deny-all of the workload itself when its update did not decode.
   */
  forWorkload(w: Pick<Workload, "namespace" | "authorizationPolicies"> & { uid?: string }): Authorization[] {
    const keys = new Set<string>([
      ...this.#global,
      ...(this.#byNamespace.get(w.namespace) ?? []),
      ...w.authorizationPolicies.filter((k) => this.#byKey.get(k)?.scope === "WORKLOAD_SELECTOR"),
    ]);
    const refused = [...this.#refused].filter(([key, a]) =>
      a.scope === "GLOBAL" || (a.scope === "NAMESPACE" && a.namespace === w.namespace) ||
      (a.scope === "WORKLOAD_SELECTOR" && w.authorizationPolicies.includes(key))
    ).sort(([a], [b]) => a < b ? -1 : a > b ? 1 : 0).map(([, a]) => a);
    const own = w.uid === undefined ? undefined : this.workloadRefusal(w.uid);
    return [...own ? [own] : [], ...refused, ...[...keys].sort().map((k) => this.#byKey.get(k)!)];
  }

  /** All policies. */
  all(): IterableIterator<Authorization> {
    return this.#byKey.values();
  }
}

/** HTTP routes by `namespace/name`, indexed by the service keys of their parents. */
export class RouteStore {
  readonly #byKey = new Map<string, HttpRoute>();
  readonly #byService = new Map<string, Set<string>>();

  /** Number of routes. */
  get size(): number {
    return this.#byKey.size;
  }

  /** Inserts or replaces a route. */
  upsert(r: HttpRoute): void {
    const key = httpRouteKey(r);
    this.remove(key);
    this.#byKey.set(key, r);
    for (const p of r.parents) addTo(this.#byService, p.service, key);
  }

  /** Removes a route by key; returns whether it existed. */
  remove(key: string): boolean {
    const old = this.#byKey.get(key);
    if (!old) return false;
    this.#byKey.delete(key);
    for (const p of old.parents) removeFrom(this.#byService, p.service, key);
    return true;
  }

  /** The route with key `namespace/name`. */
  byKey(key: string): HttpRoute | undefined {
    return this.#byKey.get(key);
  }

  /** The routes with a parent that is the service `namespace/hostname` (any port), sorted by key, each once. */
  forService(serviceKey: string): HttpRoute[] {
    return [...this.#byService.get(serviceKey) ?? []].sort().map((k) => this.#byKey.get(k)!);
  }

  /** All routes. */
  all(): IterableIterator<HttpRoute> {
    return this.#byKey.values();
  }
}

/** L7 policies by `namespace/name`, indexed by each target, and the deny-alls of those that did not decode. */
export class L7PolicyStore {
  readonly #byKey = new Map<string, L7Policy>();
  readonly #byTarget = new Map<string, Set<string>>();
  readonly #refused = new Map<string, FailClosedL7>();

  /** Number of policies. */
  get size(): number {
    return this.#byKey.size;
  }

  /** Inserts or replaces a policy. */
  upsert(p: L7Policy): void {
    const key = l7PolicyKey(p);
    this.remove(key);
    this.#byKey.set(key, p);
    for (const t of p.targets) addTo(this.#byTarget, targetKey(t.kind, t.namespace, t.name), key);
  }

  /** Holds the deny-all of a policy that did not decode until a version of `key` decodes or is removed. */
  refuse(key: string, standIn: FailClosedL7): void {
    this.#refused.set(key, standIn);
  }

  /** The keys held refused. */
  refusedKeys(): string[] {
    return [...this.#refused.keys()];
  }

  /** Ends a refusal without a new version (the policy is gone); returns whether there was one. */
  endRefusal(key: string): boolean {
    return this.#refused.delete(key);
  }

  /** Removes a policy by key, and its refusal; returns whether either existed. */
  remove(key: string): boolean {
    const refused = this.#refused.delete(key);
    const old = this.#byKey.get(key);
    if (!old) return refused;
    this.#byKey.delete(key);
    for (const t of old.targets) removeFrom(this.#byTarget, targetKey(t.kind, t.namespace, t.name), key);
    return true;
  }

  /** The policy with key `namespace/name`. */
  byKey(key: string): L7Policy | undefined {
    return this.#byKey.get(key);
  }

  /**
   * The policies attached to the Gateway or Service `namespace/name`, sorted by key, each once; first the
   * deny-alls of refused policies that target it or whose targets could not be read.
   */
  forTarget(kind: L7Target["kind"], namespace: string, name: string): L7Policy[] {
    const refused = [...this.#refused].filter(([, r]) =>
      r.everywhere || r.policy.targets.some((t) => t.kind === kind && t.namespace === namespace && t.name === name)
    ).sort(([a], [b]) => a < b ? -1 : a > b ? 1 : 0).map(([, r]) => r.policy);
    const keys = [...this.#byTarget.get(targetKey(kind, namespace, name)) ?? []].sort();
    return [...refused, ...keys.map((k) => this.#byKey.get(k)!)];
  }

  /** All policies. */
  all(): IterableIterator<L7Policy> {
    return this.#byKey.values();
  }
}

function targetKey(kind: string, namespace: string, name: string): string {
  return `${kind}/${namespace}/${name}`;
}

/** The whole mesh as a proxy or the control plane sees it: one façade over the stores. */
export class MeshState {
  readonly workloads = new WorkloadStore();
  readonly services = new ServiceStore();
  readonly policies = new PolicyStore();
  /** HTTP routes, for waypoints. */
  readonly routes = new RouteStore();
  /** L7 authorization policies, for waypoints. */
  readonly l7Policies = new L7PolicyStore();

  /**
   * What an address is: the service whose VIP it is, else the workload that owns it, else nothing (an
   * address outside the mesh). Services win, as in ztunnel's lookup.
   */
  lookupAddress(network: string, ip: string): { service: Service } | { workload: Workload } | undefined {
    const service = this.services.byVip(network, ip);
    if (service) return { service };
    const workload = this.workloads.byAddress(network, ip);
    return workload ? { workload } : undefined;
  }
}
