/**
 * Late enforcement, after ztunnel's `connection_manager.rs` (PolicyWatcher): every authorized inbound
 * connection is tracked with what authorization saw of it, and when the config changes each one is decided again;
 * those now denied are closed ("connection closed due to policy change", response flag DENY). A connection
 * leaves the tracker when it ends, or when its pod is removed (the node agent's DEL, {@link
 * ConnectionManager.closeWorkload}). Nothing else closes it: a change that leaves its decision allowed (a Service,
 * a route, a policy or a pod elsewhere) must not touch it.
 *
 * Each connection is decided against its pod's workload as the pod finds it now (pod.ts `workload()`: by the
 * uid the node agent handed the pod over with, else by namespace, name and service account, since the real agent
 * hands over Kubernetes' pod UID, which is not the model's uid). Looking it up by the agent's uid alone found
 * nothing for such pods, and every config change closed all their connections as "the destination workload was
 * removed". When the state holds no workload for the pod (it left the config before its pod was deleted), the
 * connection is decided against the last version seen, as upstream decides against the workload it captured
 * when the connection was accepted (`ProxyRbacContext.dest_workload`): the policies that cover it still apply,
 * a new DENY still closes it, and the pod's removal ends it.
 *
 * @module
 */

import type { MeshState } from "../../mesh/store.ts";
import type { Workload } from "../../mesh/workload.ts";
import { type AuthorizationDecision, authorize, type ConnectionAttributes } from "./rbac.ts";

/** A tracked connection: what authorization saw, the pod it belongs to, and how to close it. */
export interface TrackedConnection {
  attributes: ConnectionAttributes;
  /** The uid its pod was handed over with (the node agent's), which {@link ConnectionManager.closeWorkload} names. */
  podUid: string;
  /** The workload authorization decided against when the connection was accepted (both inbound paths have one). */
  workload: Workload | undefined;
  /** The pod's workload in the current state, found as the pod finds it; undefined when the state has none. */
  current: () => Workload | undefined;
  /** Ends the connection; `reason` goes to the access log. */
  close(reason: string): void;
}

/**
 * Decides a tracked connection again: against `now`, the pod's workload in `state`, or when the state has none,
 * against `before`, the version last decided against. Returns the workload decided against and the decision;
 * with neither, there is nothing to decide against, and the connection is denied (fail closed).
 */
export function decideAgain(
  state: MeshState,
  now: Workload | undefined,
  before: Workload | undefined,
  attributes: ConnectionAttributes,
): { workload: Workload | undefined; decision: AuthorizationDecision } {
  const workload = now ?? before;
  if (!workload) {
    return {
      workload,
      decision: { allowed: false, reason: "BUG: no workload was ever known for its pod", dryRunMatches: [] },
    };
  }
  return { workload, decision: authorize(state.policies.forWorkload(workload), attributes) };
}

/** Tracks open inbound connections for re-authorization. */
export class ConnectionManager {
  /** Each open connection, with the workload it was last decided against. */
  readonly #open = new Map<TrackedConnection, Workload | undefined>();

  /** Number of tracked connections. */
  get size(): number {
    return this.#open.size;
  }

  /** Starts tracking; returns the function that stops tracking (call it when the connection ends). */
  track(c: TrackedConnection): () => void {
    this.#open.set(c, c.workload);
    return () => this.#open.delete(c);
  }

  /** Decides every tracked connection again against `state` and closes those now denied; returns how many. */
  reauthorize(state: MeshState): number {
    let closed = 0;
    for (const [c, before] of [...this.#open]) {
      const { workload, decision } = decideAgain(state, c.current(), before, c.attributes);
      if (decision.allowed) {
        if (this.#open.has(c)) this.#open.set(c, workload); // not if it ended meanwhile
      } else {
        this.#open.delete(c);
        c.close(`connection closed due to policy change: ${decision.reason}`);
        closed++;
      }
    }
    return closed;
  }

  /** Closes every connection of the pod handed over with `uid` (the pod was removed); returns how many. */
  closeWorkload(uid: string, reason: string): number {
    let closed = 0;
    for (const c of [...this.#open.keys()]) {
      if (c.podUid !== uid) continue;
      this.#open.delete(c);
      c.close(reason);
      closed++;
    }
    return closed;
  }
}
