/**
 * Which names ztunnel answers itself, and with what: a pure function of the mesh state, the asking pod's namespace
 * and the question, mirroring upstream's `src/dns/server.rs` (`get_aliases`, `to_kube_fqdns`, `lookup`).
 *
 * The name asked is tried as itself, then as the Kubernetes FQDNs it can stand for given its label count (`web` →
 * `web.<ns>.svc.<domain>`; `web.shop` → `web.shop.svc.<domain>` and, for a pod's `host.subdomain`,
 * `web.shop.<ns>.svc.<domain>`; `web.shop.svc` → `web.shop.svc.<domain>`), then with each of the pod's search
 * domains stripped (`<ns>.svc.<domain>`, `svc.<domain>`, `<domain>`, the per-pod list upstream assumes), so that
 * a resolver's own search expansion (`web.shop.shop.svc.cluster.local`) still finds `web.shop`; an answer found
 * by stripping starts with a CNAME from the asked name to the stripped one, as upstream's. The first alias that
 * names a service (the caller's namespace preferred, as `ServiceStore.byHostname`) or a workload hostname wins.
 *
 * A mesh name answers A with the service's VIPs (a headless service's endpoints' addresses; a workload's own
 * addresses), TTL 30 s, authoritative. Skiff is IPv4-only, so AAAA for a mesh name is an empty NOERROR, not
 * NXDOMAIN: the name exists, it has no record of that family (upstream's `service_family_allowed`). Any other
 * type, and any name the mesh does not hold, is forwarded to the node's resolver.
 *
 * @module
 */

import type { Service, Workload } from "../../../mesh/workload.ts";
import { serviceKey } from "../../../mesh/workload.ts";
import { type DnsRecord, TYPE } from "./wire.ts";

/** Upstream's TTL for answers from the mesh (`DEFAULT_TTL_SECONDS`). */
export const MESH_TTL_SECONDS = 30;
/** The default cluster domain (upstream's `CLUSTER_DOMAIN`). */
export const DEFAULT_CLUSTER_DOMAIN = "cluster.local";

/** The part of the mesh state the resolver reads. */
export interface MeshNames {
  services: {
    byHostname(hostname: string, preferNamespace?: string): Service | undefined;
  };
  workloads: {
    byHostname(hostname: string): Workload[];
    endpointsOf(serviceKey: string): Workload[];
  };
}

/** What to do with a question. */
export type Resolution =
  | { kind: "forward" }
  | { kind: "answer"; records: DnsRecord[]; host: string };

interface Alias {
  name: string;
  /** Set when the alias came from stripping a search domain: the stripped name, which the answer CNAMEs to. */
  stripped?: string;
}

const labels = (name: string) => name.split(".").length;

/** The Kubernetes FQDNs `name` can stand for, from upstream's `to_kube_fqdns`. */
export function kubeFqdns(name: string, namespace: string, domain: string): string[] {
  const svcDomain = `svc.${domain}`;
  switch (labels(name)) {
    case 1:
      return [`${name}.${namespace}.${svcDomain}`];
    case 2:
      return [`${name}.${svcDomain}`, `${name}.${namespace}.${svcDomain}`];
    case 3:
      return name.endsWith(".svc") ? [`${name}.${domain}`, `${name}.${svcDomain}`] : [`${name}.${svcDomain}`];
    case 4:
      return name.endsWith(".svc") ? [`${name}.${domain}`] : [];
    default:
      return [];
  }
}

/** The search domains a pod in `namespace` has in Kubernetes (upstream's `SearchDomains::Dynamic`). */
export function searchDomains(namespace: string, domain: string): string[] {
  return [`${namespace}.svc.${domain}`, `svc.${domain}`, domain];
}

/** Every name to try for `name` asked from `namespace`, in upstream's order, each once. */
export function aliases(name: string, namespace: string, domain: string): Alias[] {
  const out: Alias[] = [];
  const seen = new Set<string>();
  const add = (a: Alias) => {
    if (!seen.has(a.name)) {
      seen.add(a.name);
      out.push(a);
    }
  };
  add({ name });
  for (const fqdn of kubeFqdns(name, namespace, domain)) add({ name: fqdn });
  for (const sd of searchDomains(namespace, domain)) {
    if (!name.endsWith(`.${sd}`)) continue;
    const stripped = name.slice(0, -(sd.length + 1));
    add({ name: stripped, stripped });
    for (const fqdn of kubeFqdns(stripped, namespace, domain)) add({ name: fqdn, stripped });
  }
  return out;
}

const isV4 = (ip: string) => !ip.includes(":");

function addressesOf(state: MeshNames, alias: string, namespace: string): string[] | undefined {
  const service = state.services.byHostname(alias, namespace);
  if (service) {
    const vips = service.addresses.map((a) => a.address);
    if (vips.length > 0) return vips;
    // A headless service: its endpoints' own addresses, as upstream's `get_addresses`.
    return state.workloads.endpointsOf(serviceKey(service)).flatMap((w) => w.addresses);
  }
  const workloads = state.workloads.byHostname(alias);
  return workloads.length > 0 ? workloads.flatMap((w) => w.addresses) : undefined;
}

/**
 * Decides a question from a pod in `namespace`: an answer from the mesh, or forward. `name` is as asked (any case,
 * no final dot); names are matched lower-cased (RFC 4343) and answered under the name as asked.
 */
export function resolveMesh(
  state: MeshNames,
  question: { name: string; type: number; class: number },
  namespace: string,
  domain: string = DEFAULT_CLUSTER_DOMAIN,
): Resolution {
  if (question.class !== 1 || (question.type !== TYPE.A && question.type !== TYPE.AAAA)) return { kind: "forward" };
  const asked = question.name.toLowerCase();
  if (asked === "") return { kind: "forward" };
  for (const alias of aliases(asked, namespace, domain)) {
    const addresses = addressesOf(state, alias.name, namespace);
    if (addresses === undefined) continue;
    const records: DnsRecord[] = [];
    let owner = question.name;
    if (alias.stripped !== undefined) {
      records.push({ name: question.name, type: TYPE.CNAME, ttl: MESH_TTL_SECONDS, target: alias.stripped });
      owner = alias.stripped;
    }
    // IPv4 only: AAAA gets the CNAME (if any) and no address, NOERROR.
    if (question.type === TYPE.A) {
      for (const address of [...new Set(addresses.filter(isV4))]) {
        records.push({ name: owner, type: TYPE.A, ttl: MESH_TTL_SECONDS, address });
      }
    }
    return { kind: "answer", records, host: alias.name };
  }
  return { kind: "forward" };
}
