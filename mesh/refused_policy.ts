/**
 * What a proxy enforces in place of a policy it received but cannot decode (a control plane newer than the
 * proxy, a bug, a body damaged on the way). Skipping it would fail open: a DENY it cannot read would never deny,
 * and a sole ALLOW it cannot read would leave its workloads allowing everything. So until a version that
 * decodes arrives (or the policy is removed), the policy is replaced by a DENY of everything over its scope.
 *
 * The scope is read from what is still plain, and only as strictly as the real decoders read it; anything less
 * certain widens the scope to everything the proxy serves:
 *
 * - an `Authorization`: its key `namespace/name` comes from the stream's envelope; `scope` NAMESPACE or
 *   WORKLOAD_SELECTOR is believed only when the body's `namespace` is the key's and a DNS label. Otherwise
 *   (GLOBAL, absent, unknown, contradicting the key) it is GLOBAL: every workload.
 * - an `L7Policy`: its `targets` are believed only when every one decodes and lies in the key's namespace;
 *   otherwise it targets everything the waypoint serves.
 *
 * - a `Workload`: the proxy keeps the version it holds, but that version's list of selector policies may lack one
 *   the update adds (a DENY meant for it), so every connection to that workload is denied instead.
 *
 * Pure: the stores hold the result (mesh/store.ts), the config client logs and counts it (control_client.ts).
 *
 * @module
 */

import type { Authorization, AuthorizationScope } from "./authorization.ts";
import { decodeL7Target, type L7Policy, type L7Target, MAX_POLICY_TARGETS } from "./l7.ts";
import { dnsLabel } from "./validate.ts";

/** A policy's envelope name `namespace/name` split; the name is the whole key when it has no `/`. */
function splitKey(key: string): { namespace: string; name: string } {
  const slash = key.indexOf("/");
  return slash < 0 ? { namespace: "", name: key } : { namespace: key.slice(0, slash), name: key.slice(slash + 1) };
}

function record(body: unknown): Record<string, unknown> {
  return typeof body === "object" && body !== null && !Array.isArray(body) ? body as Record<string, unknown> : {};
}

/**
 * The DENY of everything that stands for the Authorization `key` whose body did not decode, over the scope the
 * body still states plainly (else GLOBAL). `refused` carries the decoder's message, for the decision's reason.
 */
export function failClosedAuthorization(key: string, body: unknown, error: string): Authorization {
  const { namespace, name } = splitKey(key);
  const b = record(body);
  let scope: AuthorizationScope = "GLOBAL";
  if (
    (b.scope === "NAMESPACE" || b.scope === "WORKLOAD_SELECTOR") && b.namespace === namespace &&
    dnsLabel(namespace) === undefined
  ) {
    scope = b.scope;
  }
  // A rule with no clauses matches every connection (rbac.ts), so the DENY covers the whole scope.
  return { name, namespace, scope, action: "DENY", rules: [{ clauses: [] }], dryRun: false, refused: error };
}

/** A refused L7 policy: the DENY of everything that stands for it, and whether it targets everything. */
export interface FailClosedL7 {
  policy: L7Policy;
  /** True when the targets could not be read: the policy applies to every request the waypoint serves. */
  everywhere: boolean;
}

/** The DENY of everything that stands for the L7Policy `key` whose body did not decode (see the module). */
export function failClosedL7Policy(key: string, body: unknown): FailClosedL7 {
  const { namespace, name } = splitKey(key);
  const raw = record(body).targets;
  let targets: L7Target[] | undefined;
  if (Array.isArray(raw) && raw.length > 0 && raw.length <= MAX_POLICY_TARGETS && dnsLabel(namespace) === undefined) {
    try {
      targets = raw.map((t, i) => decodeL7Target(t, `targets[${i}]`));
    } catch {
      targets = undefined;
    }
    if (targets?.some((t) => t.namespace !== namespace)) targets = undefined;
  }
  const rules = [{ from: [], to: [], when: [] }]; // a rule with no parts matches every request (authz.ts)
  return {
    policy: { name, namespace, targets: targets ?? [], action: "DENY", rules, dryRun: false },
    everywhere: targets === undefined,
  };
}

/**
 * The DENY of everything that stands, for the workload `uid`, beside the version held when an update of it did
 * not decode: the update may name a selector policy (a DENY) the held version lacks. Keyed `Workload/uid`.
 */
export function failClosedWorkload(uid: string, error: string): Authorization {
  return {
    name: uid,
    namespace: "Workload",
    scope: "WORKLOAD_SELECTOR",
    action: "DENY",
    rules: [{ clauses: [] }],
    dryRun: false,
    refused: `workload ${uid} did not decode: ${error}`,
  };
}
