/**
 * The handoff protocol between the node agent and ztunnel: how pods reach ztunnel. It carries upstream's ZDS
 * message set (`ztunnel:proto/zds.proto`) over a unix stream socket, one JSON message a line, with the pod's
 * network namespace as a path instead of a file descriptor (Deno has no SCM_RIGHTS; see the departures table
 * in istio-ambient.md).
 *
 * The node agent listens, ztunnel connects. Then:
 * 1. ztunnel → agent: `{"type":"hello","version":1}`.
 * 2. agent → ztunnel, the snapshot: one `add` per pod it holds (or `keep` when it has no namespace path for
 *    it), each answered before the next, then `snapshot-sent`. ztunnel drops every pod not named in the
 *    snapshot, then answers.
 * 3. Afterwards `add` and `del`, one at a time, each answered.
 *
 * While a second ztunnel takes its snapshot (a restart or an upgrade), each pod it acknowledges is sent to every
 * older ztunnel as `release`: stop accepting for it (the new one's listeners are up), keep its open connections
 * until they end or the drain deadline. Skiff's addition: upstream's old ztunnel keeps accepting until it is told
 * to shut down, and then closes its listeners with whatever the kernel had queued on them.
 *
 * Every message from the agent is answered by `{"type":"ack"}` or `{"type":"nack","reason":"..."}`. A line is
 * at most {@link MAX_LINE_BYTES}; anything malformed is a {@link ValidationError} naming the field, and the
 * receiver answers it with a nack rather than dropping the connection.
 *
 * @module
 */

import { checkOneOf, dnsLabel, dnsSubdomain, Fields, show, ValidationError } from "../validate.ts";

/** Protocol version spoken in `hello`. */
export const HANDOFF_VERSION = 1;
/** Longest line accepted, newline excluded. */
export const MAX_LINE_BYTES = 4096;
/** Where the node agent listens by default. */
export const DEFAULT_HANDOFF_SOCKET = "/var/run/skiff/ztunnel.sock";

/** What ztunnel needs to know of a pod to serve it. */
export interface PodInfo {
  name: string;
  namespace: string;
  serviceAccount: string;
}

/** ztunnel's first message. */
export interface Hello {
  type: "hello";
  version: number;
}
/** Serve this pod, whose network namespace is at `netns`. */
export interface Add {
  type: "add";
  uid: string;
  workload: PodInfo;
  /** `/var/run/netns/NAME` or `/proc/PID/ns/net`. */
  netns: string;
}
/** Keep serving this pod (snapshot only: the agent knows it but has no namespace path for it now). */
export interface Keep {
  type: "keep";
  uid: string;
}
/** Stop serving this pod. */
export interface Del {
  type: "del";
  uid: string;
}
/** A newer ztunnel serves this pod now: stop accepting for it and drain its connections. */
export interface Release {
  type: "release";
  uid: string;
}
/** The snapshot is complete: pods not named in it are to be dropped. */
export interface SnapshotSent {
  type: "snapshot-sent";
}
/** The request was carried out. */
export interface Ack {
  type: "ack";
}
/** The request was not carried out, and why. */
export interface Nack {
  type: "nack";
  reason: string;
}

/** Messages the agent sends. */
export type AgentMessage = Add | Keep | Del | Release | SnapshotSent;
/** Messages ztunnel sends. */
export type ZtunnelMessage = Hello | Ack | Nack;
/** Any handoff message. */
export type HandoffMessage = AgentMessage | ZtunnelMessage;

const NETNS_PATH = /^(\/var\/run\/netns\/[A-Za-z0-9._-]+|\/run\/netns\/[A-Za-z0-9._-]+|\/proc\/[0-9]+\/ns\/net)$/;

/** Whether ztunnel takes this network namespace path: `/var/run/netns/NAME`, `/run/netns/NAME`, `/proc/PID/ns/net`. */
export function isHandoffNetnsPath(path: string): boolean {
  return NETNS_PATH.test(path);
}

function uid(f: Fields): string {
  return f.string("uid", { nonEmpty: true, max: 256 });
}

/** Decodes one message from its JSON value. */
export function decodeHandoffMessage(value: unknown, path = "message"): HandoffMessage {
  const f = Fields.of(value, path);
  const type = checkOneOf(
    f.raw("type"),
    f.at("type"),
    ["hello", "add", "keep", "del", "release", "snapshot-sent", "ack", "nack"] as const,
  );
  let msg: HandoffMessage;
  switch (type) {
    case "hello":
      msg = { type, version: f.int("version", { min: 1, max: 1000 }) };
      break;
    case "add": {
      const id = uid(f);
      const w = Fields.of(f.raw("workload"), f.at("workload"));
      const workload = {
        name: w.string("name", { nonEmpty: true, max: 253 }),
        namespace: w.string("namespace", { check: dnsLabel }),
        serviceAccount: w.string("serviceAccount", { check: dnsSubdomain }),
      };
      w.done();
      const netns = f.string("netns", {
        check: (v) => (NETNS_PATH.test(v) ? undefined : "expected /var/run/netns/NAME or /proc/PID/ns/net"),
      });
      msg = { type, uid: id, workload, netns };
      break;
    }
    case "keep":
    case "del":
    case "release":
      msg = { type, uid: uid(f) };
      break;
    case "nack":
      msg = { type, reason: f.string("reason", { nonEmpty: true, max: 1024 }) };
      break;
    default:
      msg = { type };
  }
  f.done();
  return msg;
}

/** Parses one line (without its newline) into a message. */
export function parseHandoffLine(line: string): HandoffMessage {
  if (new TextEncoder().encode(line).length > MAX_LINE_BYTES) {
    throw new ValidationError("message", `is longer than ${MAX_LINE_BYTES} bytes`);
  }
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    throw new ValidationError("message", `is not JSON: ${show(line)}`);
  }
  return decodeHandoffMessage(value);
}

/** Encodes a message as one line, newline included. */
export function encodeHandoffMessage(msg: HandoffMessage): string {
  return `${JSON.stringify(msg)}\n`;
}

/**
 * Splits a byte stream into lines of at most {@link MAX_LINE_BYTES}, buffering no more than that: a peer
 * that never sends a newline cannot make the reader grow.
 */
export class LineSplitter {
  #buffer = new Uint8Array(0);
  readonly #decoder = new TextDecoder("utf-8", { fatal: true });
  readonly #max: number;

  constructor(max = MAX_LINE_BYTES) {
    this.#max = max;
  }

  /** Adds bytes; returns the complete lines they finish. Throws {@link ValidationError} on an over-long line. */
  push(chunk: Uint8Array): string[] {
    const joined = new Uint8Array(this.#buffer.length + chunk.length);
    joined.set(this.#buffer);
    joined.set(chunk, this.#buffer.length);
    const lines: string[] = [];
    let start = 0;
    for (let i = 0; i < joined.length; i++) {
      if (joined[i] !== 0x0a) continue;
      if (i - start > this.#max) throw new ValidationError("message", `is longer than ${this.#max} bytes`);
      try {
        lines.push(this.#decoder.decode(joined.subarray(start, i)));
      } catch {
        throw new ValidationError("message", "is not valid UTF-8");
      }
      start = i + 1;
    }
    this.#buffer = joined.slice(start);
    if (this.#buffer.length > this.#max) {
      throw new ValidationError("message", `is longer than ${this.#max} bytes`);
    }
    return lines;
  }
}
