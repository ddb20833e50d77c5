/**
 * Late enforcement, after ztunnel's `connection_manager.rs` (PolicyWatcher): every authorized inbound
 * connection is tracked with what authorization saw of it, and when policy changes each one is decided again;
 * those now denied are closed ("connection closed due to policy change", response flag DENY). A connection
 * leaves the tracker when it ends, or when its pod is removed.
 *
 * @module
 */

import type { MeshState } from "../../mesh/store.ts";
import { authorize, type ConnectionAttributes } from "./rbac.ts";

/** A tracked connection: what authorization saw, the pod it belongs to, and how to close it. */
export interface TrackedConnection {
  attributes: ConnectionAttributes;
  /** uid of the destination workload. */
  workloadUid: string;
  /** Ends the connection; `reason` goes to the access log. */
  close(reason: string): void;
}

/** Tracks open inbound connections for re-authorization. */
export class ConnectionManager {
  readonly #open = new Set<TrackedConnection>();

  /** Number of tracked connections. */
  get size(): number {
    return this.#open.size;
  }

  /** Starts tracking; returns the function that stops tracking (call it when the connection ends). */
  track(c: TrackedConnection): () => void {
    this.#open.add(c);
    return () => this.#open.delete(c);
  }

  /**
   * Decides every tracked connection again against `state` and closes those now denied (or whose workload
   * is gone). Returns how many were closed.
   */
  reauthorize(state: MeshState): number {
    let closed = 0;
    for (const c of [...this.#open]) {
      const local = state.workloads.byUid(c.workloadUid);
      const decision = local
        ? authorize(state.policies.forWorkload(local), c.attributes)
        : { allowed: false as const, reason: "the destination workload was removed" };
      if (!decision.allowed) {
        this.#open.delete(c);
        c.close(`connection closed due to policy change: ${decision.reason}`);
        closed++;
      }
    }
    return closed;
  }

  /** Closes every connection of a workload (its pod was removed); returns how many. */
  closeWorkload(uid: string, reason: string): number {
    let closed = 0;
    for (const c of [...this.#open]) {
      if (c.workloadUid !== uid) continue;
      this.#open.delete(c);
      c.close(reason);
      closed++;
    }
    return closed;
  }
}
