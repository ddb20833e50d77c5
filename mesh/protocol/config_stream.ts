/**
 * The config stream between the control plane and its clients (ztunnel, waypoint, a standalone CA): the
 * semantics of upstream's delta xDS over an HTTPS stream (gRPC in Deno would sit on `node:http2`, which can abort
 * the process; see the departures table in istio-ambient.md).
 *
 * ```
 * POST https://CONTROL:15012/v1/stream          Authorization: Bearer <node token>
 * {"known": {"Workload/Kubernetes//Pod/shop/web-1": "3f9c…", ...}}      (empty on a first start)
 * ```
 *
 * The answer is `application/x-ndjson`, one message a line, for as long as the client stays:
 *
 * - `{"type":"snapshot","version":N,"resources":[...],"removed":[...],"unchanged":K}` first: every resource
 *   whose version differs from the client's `known` (or that it does not know), and the names it knows that are
 *   gone. `unchanged` counts what was not resent. After it the client holds exactly the server's state.
 * - `{"type":"delta","version":N,"resources":[...],"removed":[...]}` for each batch of changes after that.
 * - `{"type":"ping"}` every {@link PING_INTERVAL_MS}, so a client notices a dead control plane.
 *
 * A client that sends `x-skiff-stream-parts: 1` ({@link PARTS_HEADER}) gets its snapshot in parts of at most
 * {@link PART_RESOURCES} resources, one line each, every part but the last marked `"more":true`, all with the
 * snapshot's version; the first part carries `removed` and `unchanged`. It applies them as one snapshot
 * ({@link joinSnapshotParts}) when the last arrives, so a node never acts on half a mesh, and neither side ever
 * holds the whole snapshot as one string (which V8 caps near 512 MiB: about 860k workloads). A client that does
 * not send the header (one older than the parts) gets one line, as before. Deltas are always one line.
 *
 * A resource is `{"kind","name","version","body"}`: kind `Workload` (named by uid), `Service`
 * (`namespace/hostname`), `Authorization` (`namespace/name`), or, for waypoints, `HttpRoute` and `L7Policy` (both
 * `namespace/name`); the body in the model's JSON form (mesh/workload.ts, mesh/authorization.ts, mesh/l7.ts), and
 * the version a digest of the body, so it stays the same across a control-plane restart and a reconnecting client
 * is sent only what changed. A removal is `{"kind","name"}`. Every client receives every kind (ztunnel holds the
 * routes and L7 policies without using them).
 *
 * @module
 */

import { checkOneOf, Fields, ValidationError } from "../validate.ts";

/** The path of the stream. */
export const STREAM_PATH = "/v1/stream";
/** The path of the CA service. */
export const CERTIFICATES_PATH = "/v1/certificates";
/** The path where node agents report their pods. */
export const REGISTRATIONS_PATH = "/v1/registrations";
/** Where a standalone CA asks whether a node token is valid (as Kubernetes' TokenReview). */
export const TOKEN_REVIEW_PATH = "/v1/tokenreview";
/** The control plane's port (istiod's). */
export const CONTROL_PORT = 15012;
/** The request header by which a client asks for its snapshot in parts. */
export const PARTS_HEADER = "x-skiff-stream-parts";
/** The most resources in one part of a snapshot. */
export const PART_RESOURCES = 1_000;
/** How often the server pings an idle stream. */
export const PING_INTERVAL_MS = 10_000;

/** The kinds of resources streamed. */
export const RESOURCE_KINDS = ["Workload", "Service", "Authorization", "HttpRoute", "L7Policy"] as const;
/** A kind of resource. */
export type ResourceKind = typeof RESOURCE_KINDS[number];

/** One resource in a snapshot or delta. */
export interface StreamResource {
  kind: ResourceKind;
  name: string;
  version: string;
  body: unknown;
}

/** A resource that went away. */
export interface Removal {
  kind: ResourceKind;
  name: string;
}

/** A message of the stream. */
export type StreamMessage =
  | {
    type: "snapshot";
    version: number;
    resources: StreamResource[];
    removed: Removal[];
    unchanged: number;
    /** More parts of this snapshot follow (a client that asked for parts). */
    more?: true;
  }
  | { type: "delta"; version: number; resources: StreamResource[]; removed: Removal[] }
  | { type: "ping" };

/** `kind/name`, the key of `known`. */
export function resourceKey(r: { kind: string; name: string }): string {
  return `${r.kind}/${r.name}`;
}

function removal(v: unknown, path: string): Removal {
  const f = Fields.of(v, path);
  const out = {
    kind: checkOneOf(f.raw("kind"), f.at("kind"), RESOURCE_KINDS),
    name: f.string("name", { nonEmpty: true, max: 1024 }),
  };
  f.done();
  return out;
}

function resource(v: unknown, path: string): StreamResource {
  const f = Fields.of(v, path);
  const out = {
    kind: checkOneOf(f.raw("kind"), f.at("kind"), RESOURCE_KINDS),
    name: f.string("name", { nonEmpty: true, max: 1024 }),
    version: f.string("version", { nonEmpty: true, max: 128 }),
    body: f.raw("body"),
  };
  f.done();
  if (out.body === undefined) throw new ValidationError(f.at("body"), "is required");
  return out;
}

/**
 * Reads one line of a control-plane stream (this one, or node_pods.ts) as far as its `type`, one of `types`; the
 * caller reads the rest from the fields returned.
 * @throws {ValidationError} naming the field.
 */
export function readStreamLine<T extends string>(line: string, types: readonly T[]): { f: Fields; type: T } {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch (error) {
    throw new ValidationError("message", `not JSON: ${(error as Error).message}`);
  }
  const f = Fields.of(value, "message");
  return { f, type: checkOneOf(f.raw("type"), f.at("type"), types) };
}

/**
 * Decodes one line of the stream (the bodies stay raw; the client decodes each one with the model's decoders,
 * so one bad resource is refused on its own).
 * @throws {ValidationError} naming the field.
 */
export function decodeStreamMessage(line: string): StreamMessage {
  const { f, type } = readStreamLine(line, ["snapshot", "delta", "ping"] as const);
  if (type === "ping") {
    f.done();
    return { type };
  }
  const version = f.int("version", { min: 0, max: Number.MAX_SAFE_INTEGER });
  const resources = f.array("resources", resource);
  const removed = f.array("removed", removal);
  if (type === "snapshot") {
    const unchanged = f.int("unchanged", { min: 0, max: Number.MAX_SAFE_INTEGER, default: 0 });
    const more = f.bool("more", false);
    f.done();
    return more
      ? { type, version, resources, removed, unchanged, more }
      : { type, version, resources, removed, unchanged };
  }
  f.done();
  return { type, version, resources, removed };
}

/** A snapshot, from its parts in order; throws when they are not the parts of one snapshot. */
export function joinSnapshotParts(parts: Extract<StreamMessage, { type: "snapshot" }>[]): Extract<
  StreamMessage,
  { type: "snapshot" }
> {
  const last = parts[parts.length - 1];
  if (last === undefined || last.more) throw new ValidationError("snapshot", "its last part is missing");
  for (const p of parts) {
    if (p.version !== last.version) {
      throw new ValidationError(
        "snapshot",
        `a part of version ${p.version} inside a snapshot of version ${last.version}`,
      );
    }
  }
  return {
    type: "snapshot",
    version: last.version,
    resources: parts.flatMap((p) => p.resources),
    removed: parts.flatMap((p) => p.removed),
    unchanged: parts.reduce((n, p) => n + p.unchanged, 0),
  };
}

/** A request to the CA service. */
export interface CertificateRequest {
  /** PKCS#10 PEM. */
  csr: string;
  /** The SPIFFE identity asked for. */
  identity: string;
  /** Lifetime asked for; 0 means the CA's default. */
  ttlSeconds: number;
}

/** The CA's answer: the chain to present (leaf first) and the trust bundle, both PEM. */
export interface CertificateResponse {
  chain: string;
  roots: string;
}

/** A node agent's report of the pods it set up (replaces its earlier report). */
export interface RegistrationReport {
  pods: {
    namespace: string;
    name: string;
    ips: string[];
    redirected: boolean;
    /** The agent's own bookkeeping; not used by the control plane. */
    netns?: string;
  }[];
}
