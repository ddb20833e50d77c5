/**
 * Services from Kubernetes Services, as istiod's ambient index builds them (`services.go`): hostname
 * `<name>.<ns>.svc.<suffix>`, the cluster IPs as VIPs (none for a headless service), TCP ports with their target
 * port, a named target port resolved per endpoint, and the endpoints: the workloads of the namespace whose
 * labels the selector matches, each given its port mapping in `Workload.services`.
 *
 * `publishNotReadyAddresses: true` makes the service's health policy ALLOW_ALL, as upstream does: its endpoints
 * take traffic whether Ready or not (a StatefulSet's peers finding each other before they are Ready).
 *
 * A Service without a cluster IP gets one from the control plane's allocator (Kubernetes' API server does the
 * same); the builder receives the allocation, so it stays a pure function. UDP and SCTP ports are left out
 * (the mesh carries TCP); ExternalName services are refused with a reason.
 *
 * @module
 */

import { decodeIp } from "../../mesh/net.ts";
import { checkInt, checkString, dnsLabel, show, ValidationError } from "../../mesh/validate.ts";
import type { PortMapping, Service, ServicePort } from "../../mesh/workload.ts";
import { listAt, type MeshSettings, objectAt, selects, serviceHostname, stringMap } from "./common.ts";
import type { Candidate } from "./workloads.ts";

/** One port of a Kubernetes Service. */
export interface ServicePortSpec {
  name: string;
  port: number;
  /** A number, or the name of a container port. */
  targetPort: number | string;
  protocol: string;
  appProtocol?: string;
}

/** What Skiff reads of a Service. */
export interface ServiceSpec {
  /** Explicit cluster IPs; empty means allocate one; `headless` for `clusterIP: None`. */
  clusterIPs: string[];
  headless: boolean;
  ports: ServicePortSpec[];
  /** Undefined: no selector (endpoints managed elsewhere, which Skiff does not read). */
  selector?: Record<string, string>;
  /** Endpoints take traffic whether Ready or not. */
  publishNotReadyAddresses: boolean;
}

/** Decodes the parts of a Service Skiff uses. */
export function readService(doc: Record<string, unknown>): ServiceSpec {
  const spec = objectAt(doc.spec, "spec");
  const type = spec.type ?? "ClusterIP";
  if (type === "ExternalName") {
    throw new ValidationError("spec.type", "ExternalName services are not supported by Skiff");
  }
  if (!["ClusterIP", "NodePort", "LoadBalancer"].includes(type as string)) {
    throw new ValidationError("spec.type", `expected ClusterIP, NodePort or LoadBalancer, got ${show(type)}`);
  }
  const headless = spec.clusterIP === "None";
  let clusterIPs: string[] = [];
  if (!headless) {
    const listed = listAt(spec.clusterIPs, "spec.clusterIPs");
    clusterIPs = listed.length > 0
      ? listed.map((ip, i) => decodeIp(ip, `spec.clusterIPs[${i}]`))
      : spec.clusterIP
      ? [decodeIp(spec.clusterIP, "spec.clusterIP")]
      : [];
  }
  const seen = new Set<number>();
  const ports = listAt(spec.ports, "spec.ports").map((value, i): ServicePortSpec => {
    const p = objectAt(value, `spec.ports[${i}]`);
    const at = (k: string) => `spec.ports[${i}].${k}`;
    const port = checkInt(p.port, at("port"), 1, 65535);
    if (seen.has(port)) throw new ValidationError(at("port"), `port ${port} is listed twice`);
    seen.add(port);
    let targetPort: number | string = port;
    if (typeof p.targetPort === "string" && !/^\d+$/.test(p.targetPort)) {
      targetPort = checkString(p.targetPort, at("targetPort"), { check: dnsLabel });
    } else if (p.targetPort !== undefined && p.targetPort !== null) {
      targetPort = checkInt(Number(p.targetPort), at("targetPort"), 1, 65535);
    }
    const out: ServicePortSpec = {
      name: p.name === undefined ? "" : checkString(p.name, at("name"), { check: dnsLabel }),
      port,
      targetPort,
      protocol: p.protocol === undefined ? "TCP" : checkString(p.protocol, at("protocol")),
    };
    if (p.appProtocol !== undefined) out.appProtocol = checkString(p.appProtocol, at("appProtocol"), { max: 64 });
    return out;
  });
  const publish = spec.publishNotReadyAddresses;
  if (publish !== undefined && publish !== null && typeof publish !== "boolean") {
    throw new ValidationError("spec.publishNotReadyAddresses", `expected true or false, got ${show(publish)}`);
  }
  const out: ServiceSpec = { clusterIPs, headless, ports, publishNotReadyAddresses: publish === true };
  if (spec.selector !== undefined && spec.selector !== null) out.selector = stringMap(spec.selector, "spec.selector");
  return out;
}

/** The port a workload serves a service port on: 0 when it does not expose it. */
export function endpointPort(p: ServicePortSpec, c: Pick<Candidate, "namedPorts" | "key">): number {
  // A WorkloadEntry's `ports` maps the service port's name to the entry's own port.
  if (c.key.startsWith("WorkloadEntry/") && p.name && c.namedPorts[p.name]) return c.namedPorts[p.name];
  if (typeof p.targetPort === "number") return p.targetPort;
  return c.namedPorts[p.targetPort] ?? 0;
}

/**
 * The protocol a port declares, as istiod reads it for the workload API (`toAppProtocolFromKube`, over
 * `kube.ConvertProtocol`): `appProtocol` when set, else the port name's prefix before the first `-` (`http-web`,
 * `grpc`), of which only those the API carries are kept (`http`, `http2`, `grpc`); waypoints pick the HTTP
 * version they speak to the backend by it.
 */
export function declaredAppProtocol(p: Pick<ServicePortSpec, "name" | "appProtocol">): string | undefined {
  if (p.appProtocol) return p.appProtocol;
  const prefix = p.name.split("-")[0].toLowerCase();
  return prefix === "http" || prefix === "http2" || prefix === "grpc" ? prefix : undefined;
}

/**
 * Builds a service and attaches it to its endpoints' `services` maps. `vips` are its addresses (explicit or
 * allocated); the candidates are every workload of the mesh (the selector only looks in the namespace).
 */
export function buildService(
  name: string,
  namespace: string,
  spec: ServiceSpec,
  vips: string[],
  candidates: Iterable<Candidate>,
  s: MeshSettings,
): Service {
  const tcp = spec.ports.filter((p) => p.protocol.toUpperCase() === "TCP");
  const hostname = serviceHostname(name, namespace, s);
  const service: Service = {
    name,
    namespace,
    hostname,
    addresses: spec.headless ? [] : vips.map((address) => ({ network: "", address })),
    ports: tcp.map((p) => {
      const out: ServicePort = typeof p.targetPort === "number"
        ? { port: p.port, targetPort: p.targetPort }
        : { port: p.port, targetPort: 0, targetPortName: p.targetPort };
      const appProtocol = declaredAppProtocol(p);
      if (appProtocol) out.appProtocol = appProtocol;
      return out;
    }),
    subjectAltNames: [],
  };
  if (spec.publishNotReadyAddresses) {
    // Upstream (services.go): `PublishNotReadyAddresses` → `health_policy: ALLOW_ALL`.
    service.loadBalancing = { routingPreference: [], mode: "UNSPECIFIED_MODE", healthPolicy: "ALLOW_ALL" };
  }
  if (spec.selector === undefined || Object.keys(spec.selector).length === 0) return service;
  const key = `${namespace}/${hostname}`;
  for (const c of candidates) {
    if (c.workload.namespace !== namespace || !selects(spec.selector, c.labels)) continue;
    c.workload.services[key] = tcp.map((p): PortMapping => {
      const m: PortMapping = { servicePort: p.port, targetPort: endpointPort(p, c) };
      const appProtocol = declaredAppProtocol(p);
      if (appProtocol) m.appProtocol = appProtocol;
      return m;
    });
  }
  return service;
}
