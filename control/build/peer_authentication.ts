/**
 * PeerAuthentication (security.istio.io/v1) as istiod converts it for ztunnel (`policies.go`): ztunnel has no
 * mTLS mode of its own, so STRICT becomes a DENY policy that refuses any connection without an mTLS identity
 * (`notPrincipals: [presence]`). The mode in force for a workload follows Istio's precedence: a policy selecting
 * the workload, else its namespace's policy, else the mesh-wide one in the root namespace; UNSET inherits from
 * the next level. Port-level modes (selector policies only, as upstream) become DENY rules on those ports.
 *
 * A workload that is STRICT on every port carries `<root>/istio_converted_static_strict`, one shared policy;
 * one with port-level modes carries `<ns>/istio_converted_peer_authentication_<name>`. DISABLE is not supported
 * by ztunnel and counts as PERMISSIVE, with a warning.
 *
 * @module
 */

import { type Authorization, emptyMatch, type Match } from "../../mesh/authorization.ts";
import { checkOneOf, Fields, ValidationError } from "../../mesh/validate.ts";
import { type MeshSettings, selects, stringMap } from "./common.ts";

/** An mTLS mode. */
export type MtlsMode = "UNSET" | "PERMISSIVE" | "STRICT" | "DISABLE";
const MODES = ["UNSET", "PERMISSIVE", "STRICT", "DISABLE"] as const;

/** A PeerAuthentication's spec. */
export interface PeerAuthenticationSpec {
  selector?: Record<string, string>;
  mode: MtlsMode;
  /** Port → mode. */
  portLevel: Record<number, MtlsMode>;
}

function readMode(value: unknown, path: string): MtlsMode {
  const f = Fields.of(value ?? {}, path);
  const mode = f.oneOf("mode", MODES, "UNSET");
  f.done();
  return mode;
}

/** Decodes a PeerAuthentication's spec. */
export function readPeerAuthentication(doc: Record<string, unknown>): PeerAuthenticationSpec {
  const f = Fields.of(doc.spec ?? {}, "spec");
  const out: PeerAuthenticationSpec = { mode: readMode(f.raw("mtls"), "spec.mtls"), portLevel: {} };
  const sel = f.raw("selector");
  if (sel !== undefined) {
    const s = Fields.of(sel, "spec.selector");
    out.selector = stringMap(s.raw("matchLabels"), "spec.selector.matchLabels");
    s.done();
  }
  const ports = f.record("portLevelMtls", (v, p, key) => {
    if (!/^\d{1,5}$/.test(key) || Number(key) < 1 || Number(key) > 65535) {
      throw new ValidationError(p, "expected a port from 1 to 65535 as the key");
    }
    return readMode(v, p);
  });
  if (Object.keys(ports).length > 0 && !out.selector) {
    throw new ValidationError("spec.portLevelMtls", "port-level modes need a selector (as in Istio)");
  }
  for (const [port, mode] of Object.entries(ports)) out.portLevel[Number(port)] = checkOneOf(mode, "", MODES);
  f.done();
  return out;
}

/** A PeerAuthentication in force. */
export interface DeclaredPeerAuthentication {
  namespace: string;
  name: string;
  spec: PeerAuthenticationSpec;
}

/** The name of the shared STRICT policy. */
export const STATIC_STRICT = "istio_converted_static_strict";

const noIdentity = (): Match => ({ ...emptyMatch(), notPrincipals: [{ presence: true }] });

/** The shared policy that denies plaintext on every port. */
export function staticStrictPolicy(s: MeshSettings): Authorization {
  return {
    name: STATIC_STRICT,
    namespace: s.rootNamespace,
    scope: "WORKLOAD_SELECTOR",
    action: "DENY",
    rules: [{ clauses: [{ matches: [noIdentity()] }] }],
    dryRun: false,
  };
}

const effective = (m: MtlsMode) => (m === "DISABLE" ? "PERMISSIVE" : m);

/**
 * Indexes PeerAuthentications so each workload's mode is found quickly. When two policies compete at one
 * level, the first by name wins (upstream picks the oldest, which manifests do not record).
 */
export class PeerAuthentications {
  readonly #mesh?: DeclaredPeerAuthentication;
  readonly #byNamespace = new Map<string, DeclaredPeerAuthentication>();
  readonly #selectors = new Map<string, DeclaredPeerAuthentication[]>();
  readonly #settings: MeshSettings;
  /** Policies each workload-level PeerAuthentication with port modes produced. */
  readonly policies = new Map<string, Authorization>();

  constructor(all: DeclaredPeerAuthentication[], s: MeshSettings) {
    this.#settings = s;
    const sorted = [...all].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    for (const pa of sorted) {
      if (pa.spec.selector) {
        const list = this.#selectors.get(pa.namespace) ?? [];
        list.push(pa);
        this.#selectors.set(pa.namespace, list);
      } else if (pa.namespace === s.rootNamespace) {
        this.#mesh ??= pa;
      } else if (!this.#byNamespace.has(pa.namespace)) {
        this.#byNamespace.set(pa.namespace, pa);
      }
    }
  }

  /** The policy key a workload must carry for its mTLS mode, or undefined when plaintext is allowed. */
  policyFor(namespace: string, labels: Record<string, string>): string | undefined {
    const own = this.#selectors.get(namespace)?.find((pa) => selects(pa.spec.selector!, labels));
    let mode: MtlsMode = "UNSET";
    for (const pa of [own, this.#byNamespace.get(namespace), this.#mesh]) {
      if (pa && mode === "UNSET") mode = effective(pa.spec.mode);
    }
    const strict = mode === "STRICT";
    const ports = Object.entries(own?.spec.portLevel ?? {})
      .map(([p, m]) => [Number(p), effective(m)] as const)
      .filter(([, m]) => m !== "UNSET" && (m === "STRICT") !== strict);
    if (ports.length === 0) return strict ? `${this.#settings.rootNamespace}/${STATIC_STRICT}` : undefined;
    const name = `istio_converted_peer_authentication_${own!.name}`;
    const key = `${namespace}/${name}`;
    if (!this.policies.has(key)) {
      const match = noIdentity();
      // STRICT except some ports: deny plaintext elsewhere; otherwise deny plaintext on the STRICT ports only.
      if (strict) match.notDestinationPorts = ports.map(([p]) => p);
      else match.destinationPorts = ports.map(([p]) => p);
      this.policies.set(key, {
        name,
        namespace,
        scope: "WORKLOAD_SELECTOR",
        action: "DENY",
        rules: [{ clauses: [{ matches: [match] }] }],
        dryRun: false,
      });
    }
    return key;
  }

  /** Warnings for modes ztunnel cannot honour. */
  static warnings(spec: PeerAuthenticationSpec): string[] {
    const disabled = spec.mode === "DISABLE" || Object.values(spec.portLevel).includes("DISABLE");
    return disabled ? ["mode DISABLE is not supported by ztunnel; it counts as PERMISSIVE"] : [];
  }
}
