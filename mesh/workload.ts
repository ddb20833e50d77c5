/**
 * The workload model every role shares: Workload, Service and GatewayAddress, shaped after Istio's WDS
 * (`istio.workload` in ztunnel's `proto/workload.proto`) with field names in the proto's JSON (camelCase) form.
 * The decoders here are the only way a document becomes a model object: they validate every field, fill
 * upstream's defaults (empty trust domain → `cluster.local`, empty service account → `default`, capacity 1,
 * HBONE port 15008) and canonicalize addresses, so two spellings of one IP share one index key.
 *
 * @module
 */

import { DEFAULT_TRUST_DOMAIN, trustDomainProblem } from "./identity.ts";
import { decodeIp, type NetworkAddress } from "./net.ts";
import {
  type Check,
  checkInt,
  checkOneOf,
  checkString,
  dnsLabel,
  dnsSubdomain,
  Fields,
  ValidationError,
} from "./validate.ts";

/** How traffic reaches a workload: HBONE through its ztunnel, or plain TCP (out of the mesh). */
export type TunnelProtocol = "NONE" | "HBONE";
/** Telemetry kind of the workload's owner. */
export type WorkloadType = "DEPLOYMENT" | "CRONJOB" | "POD" | "JOB";
/** Health as reported by the control plane. */
export type WorkloadStatus = "HEALTHY" | "UNHEALTHY";

/** Where a waypoint or network gateway is reached: a service hostname or an address, plus its HBONE port. */
export type GatewayAddress =
  & { hboneMtlsPort: number }
  & ({ hostname: { namespace: string; hostname: string }; address?: undefined } | {
    address: NetworkAddress;
    hostname?: undefined;
  });

/** One service port as seen by an endpoint: the service port and the port on this workload. */
export interface PortMapping {
  servicePort: number;
  targetPort: number;
  appProtocol?: string;
}

/** Region, zone and subzone, used for locality-aware load balancing. */
export interface Locality {
  region: string;
  zone: string;
  subzone: string;
}

/** A pod, VM or process with addresses and an identity. */
export interface Workload {
  /** Unique id, e.g. `Kubernetes//Pod/default/reviews-v1-abc`. */
  uid: string;
  name: string;
  namespace: string;
  /** Canonical IP addresses; empty for workloads reached only by hostname or through a gateway. */
  addresses: string[];
  /** DNS name resolved on demand, for workloads without addresses. */
  hostname?: string;
  network: string;
  tunnelProtocol: TunnelProtocol;
  trustDomain: string;
  serviceAccount: string;
  waypoint?: GatewayAddress;
  networkGateway?: GatewayAddress;
  node: string;
  canonicalName: string;
  canonicalRevision: string;
  workloadType: WorkloadType;
  workloadName: string;
  /** Per-service port map, keyed `namespace/hostname`: what each service port is on this endpoint. */
  services: Record<string, PortMapping[]>;
  /** Selector-scoped policies (`namespace/name`) that apply to this workload. */
  authorizationPolicies: string[];
  status: WorkloadStatus;
  clusterId: string;
  locality?: Locality;
  /** Load-balancing weight, default 1. */
  capacity: number;
}

/** A port of a service. `targetPort` 0 means a named port, resolved per endpoint from `Workload.services`. */
export interface ServicePort {
  port: number;
  targetPort: number;
  /** The name of a named target port, kept for status and debugging. */
  targetPortName?: string;
  appProtocol?: string;
}

/** Scopes that locality-aware load balancing can prefer, in order. */
export type RoutingScope = "REGION" | "ZONE" | "SUBZONE" | "NODE" | "CLUSTER" | "NETWORK";

/** How a service spreads connections over its endpoints. */
export interface LoadBalancing {
  routingPreference: RoutingScope[];
  mode: "UNSPECIFIED_MODE" | "STRICT" | "FAILOVER" | "PASSTHROUGH";
  healthPolicy: "ONLY_HEALTHY" | "ALLOW_ALL";
}

/** A service: a hostname and VIPs in front of a set of workloads. */
export interface Service {
  name: string;
  namespace: string;
  /** Fully qualified hostname, e.g. `reviews.default.svc.cluster.local`. */
  hostname: string;
  /** VIPs; empty for a headless service. */
  addresses: NetworkAddress[];
  ports: ServicePort[];
  /** Extra identities accepted for this service's endpoints. */
  subjectAltNames: string[];
  waypoint?: GatewayAddress;
  loadBalancing?: LoadBalancing;
}

/** The HBONE port, default for gateway addresses. */
export const HBONE_PORT = 15008;

const port = (v: unknown, path: string) => checkInt(v, path, 1, 65535);
const nameCheck: Check<string> = (
  v,
) => (v.length > 0 && v.length <= 253 ? undefined : "expected a name of 1 to 253 characters");

/** Decodes a {@link NetworkAddress}. */
export function decodeNetworkAddress(value: unknown, path: string): NetworkAddress {
  const f = Fields.of(value, path);
  const out = {
    network: f.string("network", { default: "", max: 253 }),
    address: decodeIp(f.raw("address"), f.at("address")),
  };
  f.done();
  return out;
}

/** Decodes a {@link GatewayAddress}: exactly one of `hostname` or `address`. */
export function decodeGatewayAddress(value: unknown, path: string): GatewayAddress {
  const f = Fields.of(value, path);
  const hboneMtlsPort = f.int("hboneMtlsPort", { min: 1, max: 65535, default: HBONE_PORT });
  // raw() marks both as read, so a null for the unused one counts as absent, not as an unknown field.
  const hasHost = f.raw("hostname") !== undefined;
  const hasAddr = f.raw("address") !== undefined;
  if (hasHost === hasAddr) {
    throw new ValidationError(path, "expected exactly one of hostname or address");
  }
  let out: GatewayAddress;
  if (hasHost) {
    const h = Fields.of(f.raw("hostname"), f.at("hostname"));
    out = {
      hostname: {
        namespace: h.string("namespace", { check: dnsLabel }),
        hostname: h.string("hostname", { check: dnsSubdomain }),
      },
      hboneMtlsPort,
    };
    h.done();
  } else {
    out = { address: decodeNetworkAddress(f.raw("address"), f.at("address")), hboneMtlsPort };
  }
  f.done();
  return out;
}

function decodePortMapping(value: unknown, path: string): PortMapping {
  const f = Fields.of(value, path);
  const out: PortMapping = {
    servicePort: port(f.raw("servicePort"), f.at("servicePort")),
    // 0 is allowed: the endpoint does not expose this service port.
    targetPort: f.int("targetPort", { min: 0, max: 65535 }),
  };
  const appProtocol = f.optionalString("appProtocol", { max: 64 });
  if (appProtocol) out.appProtocol = appProtocol;
  f.done();
  return out;
}

function decodeLocality(value: unknown, path: string): Locality {
  const f = Fields.of(value, path);
  const out = {
    region: f.string("region", { default: "", max: 253 }),
    zone: f.string("zone", { default: "", max: 253 }),
    subzone: f.string("subzone", { default: "", max: 253 }),
  };
  f.done();
  return out;
}

/** Checks a `namespace/hostname` service key. */
export const serviceKeyCheck: Check<string> = (v) => {
  const [ns, host, ...rest] = v.split("/");
  return rest.length === 0 && host !== undefined && !dnsLabel(ns) && !dnsSubdomain(host)
    ? undefined
    : "expected a service key NAMESPACE/HOSTNAME";
};

/**
 * Decodes a {@link Workload}, filling Istio's defaults.
 * @throws {ValidationError} naming the first bad field under `path`.
 */
export function decodeWorkload(value: unknown, path = "workload"): Workload {
  const f = Fields.of(value, path);
  const namespace = f.string("namespace", { check: dnsLabel });
  const w: Workload = {
    uid: f.string("uid", { nonEmpty: true, max: 512 }),
    name: f.string("name", { check: nameCheck }),
    namespace,
    addresses: f.array("addresses", decodeIp, { max: 16 }),
    network: f.string("network", { default: "", max: 253 }),
    tunnelProtocol: f.oneOf("tunnelProtocol", ["NONE", "HBONE"] as const, "NONE"),
    trustDomain: f.string("trustDomain", {
      default: "",
      check: (v) => (v === "" ? undefined : trustDomainProblem(v)),
    }) ||
      DEFAULT_TRUST_DOMAIN,
    serviceAccount:
      f.string("serviceAccount", { default: "", check: (v) => (v === "" ? undefined : dnsSubdomain(v)) }) ||
      "default",
    node: f.string("node", { default: "", max: 253 }),
    canonicalName: f.string("canonicalName", { default: "", max: 253 }),
    canonicalRevision: f.string("canonicalRevision", { default: "", max: 253 }),
    workloadType: f.oneOf("workloadType", ["DEPLOYMENT", "CRONJOB", "POD", "JOB"] as const, "POD"),
    workloadName: f.string("workloadName", { default: "", max: 253 }),
    services: f.record("services", (v, p, key) => {
      const problem = serviceKeyCheck(key);
      if (problem) throw new ValidationError(p, `${problem}, got ${JSON.stringify(key)}`);
      if (!Array.isArray(v)) throw new ValidationError(p, "expected a list of port mappings");
      return v.map((m, i) => decodePortMapping(m, `${p}[${i}]`));
    }),
    authorizationPolicies: f.array(
      "authorizationPolicies",
      (v, p) => checkString(v, p, { check: policyKeyCheck }),
    ),
    status: f.oneOf("status", ["HEALTHY", "UNHEALTHY"] as const, "HEALTHY"),
    clusterId: f.string("clusterId", { default: "", max: 253 }),
    capacity: f.int("capacity", { min: 0, max: 0xffffffff, default: 1 }),
  };
  const hostname = f.optionalString("hostname", { check: dnsSubdomain });
  if (hostname) w.hostname = hostname;
  const waypoint = f.optionalObject("waypoint", decodeGatewayAddress);
  if (waypoint) w.waypoint = waypoint;
  const gateway = f.optionalObject("networkGateway", decodeGatewayAddress);
  if (gateway) w.networkGateway = gateway;
  const locality = f.optionalObject("locality", decodeLocality);
  if (locality) w.locality = locality;
  f.done();
  if (w.addresses.length === 0 && !w.hostname && !w.networkGateway) {
    throw new ValidationError(
      f.at("addresses"),
      "a workload needs an address, a hostname or a network gateway",
    );
  }
  return w;
}

/** Checks a `namespace/name` policy key. */
export const policyKeyCheck: Check<string> = (v) => {
  const [ns, name, ...rest] = v.split("/");
  return rest.length === 0 && name && !dnsLabel(ns) && name.length <= 253
    ? undefined
    : "expected a policy key NAMESPACE/NAME";
};

function decodeServicePort(value: unknown, path: string): ServicePort {
  const f = Fields.of(value, path);
  const out: ServicePort = {
    port: port(f.raw("port"), f.at("port")),
    targetPort: f.int("targetPort", { min: 0, max: 65535, default: 0 }),
  };
  const name = f.optionalString("targetPortName", { check: dnsLabel });
  if (name) out.targetPortName = name;
  const appProtocol = f.optionalString("appProtocol", { max: 64 });
  if (appProtocol) out.appProtocol = appProtocol;
  f.done();
  if (out.targetPort === 0 && !out.targetPortName) {
    throw new ValidationError(f.at("targetPort"), "a port needs a targetPort or a targetPortName");
  }
  return out;
}

function decodeLoadBalancing(value: unknown, path: string): LoadBalancing {
  const f = Fields.of(value, path);
  const scopes = ["REGION", "ZONE", "SUBZONE", "NODE", "CLUSTER", "NETWORK"] as const;
  const out: LoadBalancing = {
    routingPreference: f.array("routingPreference", (v, p) => checkOneOf(v, p, scopes)),
    mode: f.oneOf(
      "mode",
      ["UNSPECIFIED_MODE", "STRICT", "FAILOVER", "PASSTHROUGH"] as const,
      "UNSPECIFIED_MODE",
    ),
    healthPolicy: f.oneOf("healthPolicy", ["ONLY_HEALTHY", "ALLOW_ALL"] as const, "ONLY_HEALTHY"),
  };
  f.done();
  return out;
}

/**
 * Decodes a {@link Service}.
 * @throws {ValidationError} naming the first bad field under `path`.
 */
export function decodeService(value: unknown, path = "service"): Service {
  const f = Fields.of(value, path);
  const s: Service = {
    name: f.string("name", { check: dnsLabel }),
    namespace: f.string("namespace", { check: dnsLabel }),
    hostname: f.string("hostname", { check: dnsSubdomain }),
    addresses: f.array("addresses", decodeNetworkAddress, { max: 16 }),
    ports: f.array("ports", decodeServicePort, { max: 1024 }),
    subjectAltNames: f.array("subjectAltNames", (v, p) => checkString(v, p, { nonEmpty: true })),
  };
  const waypoint = f.optionalObject("waypoint", decodeGatewayAddress);
  if (waypoint) s.waypoint = waypoint;
  const lb = f.optionalObject("loadBalancing", decodeLoadBalancing);
  if (lb) s.loadBalancing = lb;
  f.done();
  const seen = new Set<number>();
  s.ports.forEach((p, i) => {
    if (seen.has(p.port)) {
      throw new ValidationError(`${f.at("ports")}[${i}].port`, `port ${p.port} is listed twice`);
    }
    seen.add(p.port);
  });
  return s;
}

/** The store key of a service: `namespace/hostname`. */
export function serviceKey(s: Pick<Service, "namespace" | "hostname">): string {
  return `${s.namespace}/${s.hostname}`;
}
