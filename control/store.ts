/**
 * The control plane's embedded store: one SQLite file (`node:sqlite`) in the data directory, so a restart
 * loses nothing: the token signing key, the nodes and their current token ids, the node agents' registrations,
 * the addresses allocated to services, and the last good version of every manifest object (an object whose file
 * is broken at start-up keeps its last good version, as it would while running). The CA's key and certificates
 * sit beside it in `ca/` in Istio's cacerts layout, so an operator can swap in a plugged-in CA with file tools.
 *
 * `skiff control node add` opens the same file from another process while the server runs; WAL mode and a
 * busy timeout make that safe, and the server reads nodes per request, so a removal takes effect at once.
 *
 * @module
 */

import { DatabaseSync } from "node:sqlite";
import { join } from "node:path";
import { type Cidr, cidrContains, ipBytes } from "../mesh/net.ts";
import type { Registration } from "./build/workloads.ts";

/** The database file's name in the data directory. */
export const DB_FILE = "skiff.db";

/** A node allowed to talk to the control plane. */
export interface NodeRecord {
  name: string;
  /** The id of its one valid token; a new `node add` replaces it. */
  tokenId: string;
  /** Unix ms. */
  expiresAt: number;
  createdAt: number;
}

/** A manifest object as last seen good. */
export interface StoredObject {
  key: string;
  file: string;
  line: number;
  /** The document as JSON. */
  json: string;
}

/** Failures of the store, named for the operator. */
export class StoreError extends Error {
  readonly code: "STORE_OPEN" | "STORE_FULL";
  constructor(code: StoreError["code"], message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "StoreError";
    this.code = code;
  }
}

const REGISTRATIONS_TABLE = `CREATE TABLE IF NOT EXISTS registrations (node TEXT NOT NULL, namespace TEXT NOT NULL,
  name TEXT NOT NULL, body TEXT NOT NULL, PRIMARY KEY (node, namespace, name));`;

const SCHEMA = `
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (name TEXT PRIMARY KEY, token_id TEXT NOT NULL, expires_at INTEGER NOT NULL,
  created_at INTEGER NOT NULL);
${REGISTRATIONS_TABLE}
CREATE TABLE IF NOT EXISTS addresses (owner TEXT PRIMARY KEY, ip TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS objects (key TEXT PRIMARY KEY, file TEXT NOT NULL, line INTEGER NOT NULL,
  document TEXT NOT NULL);
`;

/** The store. Close it when done. */
export class ControlStore {
  readonly dir: string;
  readonly #db: DatabaseSync;
  #dataVersion: number;

  private constructor(dir: string, db: DatabaseSync) {
    this.dir = dir;
    this.#db = db;
    this.#dataVersion = this.#readDataVersion();
  }

  /** Opens (creating if needed) the store in `dir`, which is made private to its owner. */
  static open(dir: string): ControlStore {
    try {
      Deno.mkdirSync(dir, { recursive: true, mode: 0o700 });
      const db = new DatabaseSync(join(dir, DB_FILE));
      db.exec("PRAGMA journal_mode=WAL; PRAGMA busy_timeout=5000; PRAGMA synchronous=NORMAL;");
      db.exec(SCHEMA);
      migrateRegistrations(db);
      return new ControlStore(dir, db);
    } catch (error) {
      throw new StoreError("STORE_OPEN", `cannot open the store in ${dir}: ${(error as Error).message}`, {
        cause: error,
      });
    }
  }

  /** Closes the database. */
  close(): void {
    this.#db.close();
  }

  /**
   * Whether another process (`skiff control node add|remove`) committed a change to the store since the last
   * call: SQLite's `PRAGMA data_version` changes with every other connection's commit, never with this one's.
   */
  changedElsewhere(): boolean {
    const version = this.#readDataVersion();
    const changed = version !== this.#dataVersion;
    this.#dataVersion = version;
    return changed;
  }

  #readDataVersion(): number {
    return Number((this.#db.prepare("PRAGMA data_version").get() as { data_version: number }).data_version);
  }

  /** A value of the meta table. */
  meta(key: string): string | undefined {
    const row = this.#db.prepare("SELECT value FROM meta WHERE key = ?").get(key) as { value: string } | undefined;
    return row?.value;
  }

  /** Sets a value of the meta table unless it has one (another process may set it first); returns the value kept. */
  setMetaOnce(key: string, value: string): string {
    this.#db.prepare("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)").run(key, value);
    return this.meta(key)!;
  }

  /** Sets a value of the meta table. */
  setMeta(key: string, value: string): void {
    this.#db.prepare("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)").run(key, value);
  }

  /** Adds or replaces a node (replacing revokes its earlier token). */
  putNode(n: NodeRecord): void {
    this.#db.prepare("INSERT OR REPLACE INTO nodes (name, token_id, expires_at, created_at) VALUES (?, ?, ?, ?)")
      .run(n.name, n.tokenId, n.expiresAt, n.createdAt);
  }

  /** Removes a node and its registrations; returns whether it existed. */
  removeNode(name: string): boolean {
    const gone = this.#db.prepare("DELETE FROM nodes WHERE name = ?").run(name).changes > 0;
    this.#db.prepare("DELETE FROM registrations WHERE node = ?").run(name);
    return gone;
  }

  /** A node by name. */
  node(name: string): NodeRecord | undefined {
    const row = this.#db.prepare("SELECT * FROM nodes WHERE name = ?").get(name) as Record<string, unknown> | undefined;
    return row ? nodeOf(row) : undefined;
  }

  /** Every node, by name. */
  nodes(): NodeRecord[] {
    return (this.#db.prepare("SELECT * FROM nodes ORDER BY name").all() as Record<string, unknown>[]).map(nodeOf);
  }

  /**
   * Replaces everything `node` registered. Reports are kept by node, pod: one node's report never replaces
   * another's, even of a pod of the same name (the build uses the report of the node the pod is declared on).
   */
  setRegistrations(node: string, pods: Registration[]): void {
    this.#transaction(() => {
      this.#db.prepare("DELETE FROM registrations WHERE node = ?").run(node);
      const insert = this.#db.prepare(
        "INSERT OR REPLACE INTO registrations (node, namespace, name, body) VALUES (?, ?, ?, ?)",
      );
      for (const p of pods) insert.run(node, p.namespace, p.name, JSON.stringify({ ...p, node }));
    });
  }

  /** Every registration, by namespace, name and node. */
  registrations(): Registration[] {
    const rows = this.#db.prepare("SELECT node, body FROM registrations ORDER BY namespace, name, node").all() as {
      node: string;
      body: string;
    }[];
    return rows.map((r) => ({ ...JSON.parse(r.body), node: r.node }));
  }

  /** Addresses allocated so far, by owner (`kind/ns/name`). */
  addresses(): Map<string, string> {
    const rows = this.#db.prepare("SELECT owner, ip FROM addresses").all() as { owner: string; ip: string }[];
    return new Map(rows.map((r) => [r.owner, r.ip]));
  }

  /**
   * Allocates an address in `range` to each owner that has none, skipping addresses in use or in `taken`
   * (explicit addresses); releases those of owners not in `keep`. Returns the allocations.
   */
  allocateAddresses(owners: string[], range: Cidr, taken: Set<string>, keep?: Set<string>): Map<string, string> {
    this.#transaction(() => {
      if (keep) {
        for (const owner of this.addresses().keys()) {
          if (!keep.has(owner)) this.#db.prepare("DELETE FROM addresses WHERE owner = ?").run(owner);
        }
      }
      const used = new Set([...this.addresses().values(), ...taken]);
      const insert = this.#db.prepare("INSERT INTO addresses (owner, ip) VALUES (?, ?)");
      for (const owner of owners) {
        if (this.addresses().has(owner)) continue;
        const ip = freeAddress(range, used);
        if (ip === undefined) {
          throw new StoreError("STORE_FULL", `no free address left in ${range.address}/${range.length}`);
        }
        used.add(ip);
        insert.run(owner, ip);
      }
    });
    return this.addresses();
  }

  /** Records the objects in force (their last good versions), replacing what was stored. */
  saveObjects(changed: StoredObject[], removed: string[]): void {
    this.#transaction(() => {
      const del = this.#db.prepare("DELETE FROM objects WHERE key = ?");
      for (const k of removed) del.run(k);
      const put = this.#db.prepare("INSERT OR REPLACE INTO objects (key, file, line, document) VALUES (?, ?, ?, ?)");
      for (const o of changed) put.run(o.key, o.file, o.line, o.json);
    });
  }

  /** The objects stored by {@link saveObjects}. */
  objects(): StoredObject[] {
    const rows = this.#db.prepare("SELECT * FROM objects ORDER BY key").all() as Record<string, unknown>[];
    return rows.map((r) => ({
      key: r.key as string,
      file: r.file as string,
      line: Number(r.line),
      json: r.document as string,
    }));
  }

  #transaction(fn: () => void): void {
    this.#db.exec("BEGIN IMMEDIATE");
    try {
      fn();
      this.#db.exec("COMMIT");
    } catch (error) {
      this.#db.exec("ROLLBACK");
      throw error;
    }
  }
}

/**
 * Stores made before reports were kept by node keyed them by pod alone, so one node's report replaced
 * another's; their table is rebuilt with the node in the key, keeping every row.
 */
function migrateRegistrations(db: DatabaseSync): void {
  const key = (db.prepare("PRAGMA table_info(registrations)").all() as { name: string; pk: number }[])
    .filter((c) => c.pk > 0).map((c) => c.name);
  if (key.includes("node")) return;
  db.exec("BEGIN IMMEDIATE");
  try {
    db.exec(`ALTER TABLE registrations RENAME TO registrations_by_pod;
      ${REGISTRATIONS_TABLE}
      INSERT INTO registrations SELECT node, namespace, name, body FROM registrations_by_pod;
      DROP TABLE registrations_by_pod;`);
    db.exec("COMMIT");
  } catch (error) {
    db.exec("ROLLBACK");
    throw error;
  }
}

function nodeOf(row: Record<string, unknown>): NodeRecord {
  return {
    name: row.name as string,
    tokenId: row.token_id as string,
    expiresAt: Number(row.expires_at),
    createdAt: Number(row.created_at),
  };
}

/** The first address of `range` (network and broadcast excluded for IPv4) not in `used`. */
function freeAddress(range: Cidr, used: Set<string>): string | undefined {
  const base = ipBytes(range.address);
  if (base.length !== 4) return undefined; // IPv6 service ranges are not allocated from
  const start = ((base[0] << 24) | (base[1] << 16) | (base[2] << 8) | base[3]) >>> 0;
  const size = 2 ** (32 - range.length);
  for (let i = 1; i < size - 1; i++) {
    const n = start + i;
    const ip = `${n >>> 24}.${(n >>> 16) & 255}.${(n >>> 8) & 255}.${n & 255}`;
    if (!used.has(ip) && cidrContains(range, ip)) return ip;
  }
  return undefined;
}
