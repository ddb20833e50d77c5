/**
 * HPACK (RFC 7541), the header compression of HTTP/2: one decoder per connection for the header blocks we
 * receive, one encoder for those we send, each with its dynamic table.
 *
 * We write our own because neither alternative holds up: node:http2 aborts the process in Deno 2.9.6, and the npm
 * hpack.js is unmaintained since 2018 and has no limit on the decoded size, so a small block that references one
 * large entry many times expands without bound.
 *
 * The decoder treats the peer as hostile. Its memory is bounded by the table size we advertise plus the header list
 * size we allow, whatever the input: integers stop at 2^31-1 and five continuation bytes, strings cannot run past
 * the block, and a string longer than both limits is skipped instead of decoded, as its field could be neither kept
 * nor indexed. A header list over the limit is still decoded to the end, because the peer's encoder has already
 * updated its table and ours must follow, or every later block on the connection would decode wrongly.
 *
 * @module
 */

import * as huffman from "./huffman.ts";

/** A header field; names and values are byte strings: each char code is one byte (0..255). */
export type HeaderField = [name: string, value: string];

/**
 * A header block we cannot accept. "compression" is the connection error COMPRESSION_ERROR (RFC 9113 §4.3);
 * "too-large" means the decoded list passed maxHeaderListSize, and the table is still in sync, so only the stream
 * fails (a 431 response or RST_STREAM).
 */
export class HpackError extends Error {
  constructor(message: string, readonly kind: "compression" | "too-large") {
    super(message);
    this.name = "HpackError";
  }
}

/** A copy of a dynamic table, newest entry first, for tests and debugging. */
export interface TableSnapshot {
  /** Sum of the entry sizes (RFC 7541 §4.1: name + value + 32 each). */
  size: number;
  /** The size limit in force, set by the last dynamic table size update. */
  maxSize: number;
  entries: HeaderField[];
}

// RFC 7541 Appendix A; index 1 is the first entry.
const STATIC_TABLE: readonly (readonly [string, string])[] = [
  [":authority", ""],
  [":method", "GET"],
  [":method", "POST"],
  [":path", "/"],
  [":path", "/index.html"],
  [":scheme", "http"],
  [":scheme", "https"],
  [":status", "200"],
  [":status", "204"],
  [":status", "206"],
  [":status", "304"],
  [":status", "400"],
  [":status", "404"],
  [":status", "500"],
  ["accept-charset", ""],
  ["accept-encoding", "gzip, deflate"],
  ["accept-language", ""],
  ["accept-ranges", ""],
  ["accept", ""],
  ["access-control-allow-origin", ""],
  ["age", ""],
  ["allow", ""],
  ["authorization", ""],
  ["cache-control", ""],
  ["content-disposition", ""],
  ["content-encoding", ""],
  ["content-language", ""],
  ["content-length", ""],
  ["content-location", ""],
  ["content-range", ""],
  ["content-type", ""],
  ["cookie", ""],
  ["date", ""],
  ["etag", ""],
  ["expect", ""],
  ["expires", ""],
  ["from", ""],
  ["host", ""],
  ["if-match", ""],
  ["if-modified-since", ""],
  ["if-none-match", ""],
  ["if-range", ""],
  ["if-unmodified-since", ""],
  ["last-modified", ""],
  ["link", ""],
  ["location", ""],
  ["max-forwards", ""],
  ["proxy-authenticate", ""],
  ["proxy-authorization", ""],
  ["range", ""],
  ["referer", ""],
  ["refresh", ""],
  ["retry-after", ""],
  ["server", ""],
  ["set-cookie", ""],
  ["strict-transport-security", ""],
  ["transfer-encoding", ""],
  ["user-agent", ""],
  ["vary", ""],
  ["via", ""],
  ["www-authenticate", ""],
];
const STATIC_LENGTH = STATIC_TABLE.length;

/** Entry overhead, RFC 7541 §4.1. */
const ENTRY_OVERHEAD = 32;
/** Largest integer we decode; RFC 7541 §5.1 leaves the limit to us, and no field or size needs more. */
const MAX_INTEGER = 2 ** 31 - 1;
/** The encoder never uses a larger table, however much the peer offers: more costs memory and gains little. */
const ENCODER_MAX_TABLE_SIZE = 4096;
/** Fields the encoder never indexes (RFC 7541 §7.1.3), as they carry credentials an attacker could probe for. */
const SENSITIVE = new Set(["authorization", "proxy-authorization", "set-cookie"]);

/** A key for a name and value pair; the length prefix keeps `["a:b", ""]` and `["a", "b"]` apart. */
const fieldKey = (name: string, value: string) => `${name.length}:${name}${value}`;

const STATIC_FIELD = new Map<string, number>();
const STATIC_NAME = new Map<string, number>();
STATIC_TABLE.forEach(([name, value], i) => {
  if (!STATIC_FIELD.has(fieldKey(name, value))) STATIC_FIELD.set(fieldKey(name, value), i + 1);
  if (!STATIC_NAME.has(name)) STATIC_NAME.set(name, i + 1);
});

/**
 * The dynamic table (RFC 7541 §2.3.2, §4) as a ring buffer, so inserting and evicting are O(1). Entry 1 is the
 * newest. Each entry is at least 32 bytes, so the ring never holds more than maxSize / 32 entries.
 */
class DynamicTable {
  #names: string[] = new Array(16).fill("");
  #values: string[] = new Array(16).fill("");
  /** Ring position of the oldest entry. */
  #oldest = 0;
  length = 0;
  size = 0;
  /** Entries ever added; the newest one is number `added - 1`. */
  added = 0;

  constructor(public maxSize: number, readonly onEvict?: (name: string, value: string, number: number) => void) {}

  name(index: number): string {
    return this.#names[(this.#oldest + this.length - index) & (this.#names.length - 1)];
  }

  value(index: number): string {
    return this.#values[(this.#oldest + this.length - index) & (this.#values.length - 1)];
  }

  /** Adds an entry after evicting room for it; one larger than the table empties it instead (RFC 7541 §4.4). */
  add(name: string, value: string): void {
    const size = name.length + value.length + ENTRY_OVERHEAD;
    if (size > this.maxSize) return this.evictTo(0);
    this.evictTo(this.maxSize - size);
    if (this.length === this.#names.length) this.#grow();
    const at = (this.#oldest + this.length) & (this.#names.length - 1);
    this.#names[at] = name;
    this.#values[at] = value;
    this.length++;
    this.size += size;
    this.added++;
  }

  setMaxSize(maxSize: number): void {
    this.maxSize = maxSize;
    this.evictTo(maxSize);
  }

  evictTo(size: number): void {
    while (this.size > size) {
      const at = this.#oldest;
      const [name, value] = [this.#names[at], this.#values[at]];
      this.onEvict?.(name, value, this.added - this.length);
      this.#names[at] = this.#values[at] = "";
      this.#oldest = (at + 1) & (this.#names.length - 1);
      this.length--;
      this.size -= name.length + value.length + ENTRY_OVERHEAD;
    }
  }

  snapshot(): TableSnapshot {
    const entries: HeaderField[] = [];
    for (let i = 1; i <= this.length; i++) entries.push([this.name(i), this.value(i)]);
    return { size: this.size, maxSize: this.maxSize, entries };
  }

  #grow(): void {
    const names: string[] = new Array(this.#names.length * 2).fill("");
    const values: string[] = new Array(this.#names.length * 2).fill("");
    for (let i = 0; i < this.length; i++) {
      names[i] = this.name(this.length - i);
      values[i] = this.value(this.length - i);
    }
    [this.#names, this.#values, this.#oldest] = [names, values, 0];
  }
}

function checkSize(what: string, n: number): number {
  if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) {
    throw new RangeError(`Cannot set ${what} to ${n}: expected an integer from 0 to 2^32-1`);
  }
  return n;
}

/** The text of a byte string: one char code per byte. */
function byteString(bytes: Uint8Array): string {
  let text = "";
  for (let i = 0; i < bytes.length; i += 4096) text += String.fromCharCode(...bytes.subarray(i, i + 4096));
  return text;
}

function compressionError(problem: string): HpackError {
  return new HpackError(`Cannot decode header block: ${problem}`, "compression");
}

/** Decodes the header blocks of one connection's peer; one instance per connection, blocks in order. */
export class HpackDecoder {
  #table: DynamicTable;
  /** The SETTINGS_HEADER_TABLE_SIZE we advertise: no size update may exceed it. */
  #maxTableSize: number;
  #maxHeaderListSize: number;
  /** We lowered the limit below the table's size; the next block must start with a size update (RFC 7541 §4.2). */
  #updateRequired = false;
  #block: Uint8Array = new Uint8Array(0);
  #at = 0;

  /**
   * `maxTableSize` (default 4096) is the limit we advertise and the size the table starts at. A peer may use the
   * protocol's initial 4096 until it acknowledges our SETTINGS, so a connection keeps the default here and calls
   * {@link setMaxTableSize} on the acknowledgement. `maxHeaderListSize` defaults to 65536.
   */
  constructor(opts: { maxTableSize?: number; maxHeaderListSize?: number } = {}) {
    this.#maxTableSize = checkSize("maxTableSize", opts.maxTableSize ?? 4096);
    this.#maxHeaderListSize = checkSize("maxHeaderListSize", opts.maxHeaderListSize ?? 65536);
    this.#table = new DynamicTable(this.#maxTableSize);
  }

  /** A copy of the dynamic table, for tests and debugging. */
  get table(): TableSnapshot {
    return this.#table.snapshot();
  }

  /**
   * Changes the table size limit we advertise (SETTINGS_HEADER_TABLE_SIZE). Call it when the peer acknowledges the
   * SETTINGS frame, as the peer's encoder applies the value from then on.
   */
  setMaxTableSize(n: number): void {
    this.#maxTableSize = checkSize("maxTableSize", n);
    if (n < this.#table.maxSize) this.#updateRequired = true;
  }

  /**
   * Decodes one complete header block. Throws HpackError kind "compression" on any malformed input (connection
   * error COMPRESSION_ERROR). When the decoded header list size (RFC 9113 §6.5.2: sum of name.length +
   * value.length + 32 per field) exceeds maxHeaderListSize, it still processes the whole block so the dynamic
   * table stays in sync, but keeps no more fields, and then throws kind "too-large".
   */
  decode(block: Uint8Array): HeaderField[] {
    this.#block = block;
    this.#at = 0;
    try {
      return this.#decode();
    } finally {
      this.#block = new Uint8Array(0);
    }
  }

  #decode(): HeaderField[] {
    const block = this.#block;
    const fields: HeaderField[] = [];
    let listSize = 0;
    let updates = 0;
    let fieldSeen = false;
    while (this.#at < block.length) {
      const first = block[this.#at];
      if ((first & 0xe0) === 0x20) {
        // Dynamic table size update (RFC 7541 §6.3), allowed only before the first field (§4.2).
        if (fieldSeen) throw compressionError("dynamic table size update after a header field (RFC 7541 §4.2)");
        if (++updates > 2) throw compressionError("more than two dynamic table size updates");
        const size = this.#integer(5);
        if (size > this.#maxTableSize) {
          throw compressionError(`dynamic table size update to ${size} passes our limit of ${this.#maxTableSize}`);
        }
        this.#table.setMaxSize(size);
        this.#updateRequired = false;
        continue;
      }
      if (this.#updateRequired) {
        throw compressionError("no dynamic table size update after we lowered SETTINGS_HEADER_TABLE_SIZE");
      }
      fieldSeen = true;
      let name: string | null;
      let value: string | null;
      if (first & 0x80) {
        // Indexed header field (RFC 7541 §6.1).
        const index = this.#integer(7);
        [name, value] = [this.#name(index), this.#value(index)];
      } else {
        // Literal header field with incremental indexing (§6.2.1), without indexing or never indexed (§6.2.2-3).
        const indexing = (first & 0x40) !== 0;
        const index = this.#integer(indexing ? 6 : 4);
        // A string longer than both limits can neither be kept nor be indexed: skip it (null) without decoding.
        const limit = Math.max(this.#maxHeaderListSize, this.#table.maxSize);
        name = index === 0 ? this.#string(limit) : this.#name(index);
        value = this.#string(limit);
        if (indexing) {
          if (name === null || value === null) this.#table.evictTo(0);
          else this.#table.add(name, value);
        }
      }
      if (name === null || value === null) listSize = Infinity;
      else if ((listSize += name.length + value.length + ENTRY_OVERHEAD) <= this.#maxHeaderListSize) {
        fields.push([name, value]);
      }
    }
    if (listSize > this.#maxHeaderListSize) {
      throw new HpackError(
        `Cannot accept header block: its header list passes the ${this.#maxHeaderListSize} bytes of ` +
          "SETTINGS_MAX_HEADER_LIST_SIZE",
        "too-large",
      );
    }
    return fields;
  }

  /** Reads an integer with an N-bit prefix (RFC 7541 §5.1). */
  #integer(prefixBits: number): number {
    const block = this.#block;
    if (this.#at >= block.length) throw compressionError("the block ends inside a header field");
    const max = (1 << prefixBits) - 1;
    let value = block[this.#at++] & max;
    if (value < max) return value;
    for (let shift = 0;; shift += 7) {
      if (shift === 35) throw compressionError("integer with more than 5 continuation bytes");
      if (this.#at >= block.length) throw compressionError("the block ends inside an integer");
      const byte = block[this.#at++];
      value += (byte & 0x7f) * 2 ** shift;
      if (value > MAX_INTEGER) throw compressionError("integer larger than 2^31-1");
      if ((byte & 0x80) === 0) return value;
    }
  }

  /** Reads a string literal (RFC 7541 §5.2); null when it decodes to more than `limit` bytes. */
  #string(limit: number): string | null {
    const isHuffman = (this.#block[this.#at] & 0x80) !== 0;
    const length = this.#integer(7);
    if (length > this.#block.length - this.#at) {
      throw compressionError(`string of ${length} bytes runs past the end of the block`);
    }
    const bytes = this.#block.subarray(this.#at, this.#at += length);
    if (!isHuffman) return length > limit ? null : byteString(bytes);
    try {
      return byteString(huffman.decode(bytes, limit));
    } catch (err) {
      if (!(err instanceof huffman.HuffmanError)) throw err;
      if (err.kind === "too-long") return null;
      throw compressionError(err.message);
    }
  }

  #name(index: number): string {
    this.#checkIndex(index);
    return index <= STATIC_LENGTH ? STATIC_TABLE[index - 1][0] : this.#table.name(index - STATIC_LENGTH);
  }

  #value(index: number): string {
    return index <= STATIC_LENGTH ? STATIC_TABLE[index - 1][1] : this.#table.value(index - STATIC_LENGTH);
  }

  #checkIndex(index: number): void {
    if (index === 0) throw compressionError("index 0 (RFC 7541 §6.1)");
    if (index > STATIC_LENGTH + this.#table.length) {
      throw compressionError(`index ${index} is past the ${STATIC_LENGTH + this.#table.length} table entries`);
    }
  }
}

/** A growable output buffer with the HPACK primitives. */
class BlockWriter {
  bytes = new Uint8Array(256);
  length = 0;

  /** Writes `value` with an N-bit prefix after the `flags` bits of the first byte (RFC 7541 §5.1). */
  integer(prefixBits: number, flags: number, value: number): void {
    this.#reserve(6);
    const max = (1 << prefixBits) - 1;
    if (value < max) {
      this.bytes[this.length++] = flags | value;
      return;
    }
    this.bytes[this.length++] = flags | max;
    for (value -= max; value >= 0x80; value = Math.floor(value / 0x80)) this.bytes[this.length++] = 0x80 | value;
    this.bytes[this.length++] = value;
  }

  /** Writes a string literal, Huffman-coded when that is shorter (RFC 7541 §5.2). */
  string(text: string): void {
    const raw = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i++) raw[i] = text.charCodeAt(i);
    const coded = huffman.encodedLength(raw) < raw.length ? huffman.encode(raw) : raw;
    this.integer(7, coded === raw ? 0 : 0x80, coded.length);
    this.#reserve(coded.length);
    this.bytes.set(coded, this.length);
    this.length += coded.length;
  }

  #reserve(n: number): void {
    if (this.length + n <= this.bytes.length) return;
    const bytes = new Uint8Array(Math.max(this.bytes.length * 2, this.length + n));
    bytes.set(this.bytes.subarray(0, this.length));
    this.bytes = bytes;
  }
}

function checkField(name: string, value: string): void {
  for (let i = 0; i < name.length; i++) {
    const c = name.charCodeAt(i);
    if (c > 0xff) throw new TypeError(`Cannot encode header name ${JSON.stringify(name)}: char ${i} is not a byte`);
    if (c >= 0x41 && c <= 0x5a) {
      throw new TypeError(`Cannot encode header name ${JSON.stringify(name)}: HTTP/2 names are lowercase`);
    }
  }
  for (let i = 0; i < value.length; i++) {
    if (value.charCodeAt(i) > 0xff) {
      throw new TypeError(`Cannot encode the value of header ${JSON.stringify(name)}: char ${i} is not a byte`);
    }
  }
}

/** Encodes the header blocks we send on one connection; one instance per connection, blocks in order. */
export class HpackEncoder {
  #table: DynamicTable;
  /** Newest entry number by field key and by name, for O(1) lookups; kept in step by the eviction hook. */
  #byField = new Map<string, number>();
  #byName = new Map<string, number>();
  /** The smallest size used since the last block, when a size update is due (RFC 7541 §4.2). */
  #pendingMinSize: number | null = null;

  /** `maxTableSize` (default 4096, HTTP/2's initial value, and at most that) is the table size both sides start at. */
  constructor(opts: { maxTableSize?: number } = {}) {
    const size = Math.min(checkSize("maxTableSize", opts.maxTableSize ?? 4096), ENCODER_MAX_TABLE_SIZE);
    this.#table = new DynamicTable(size, (name, value, number) => {
      if (this.#byField.get(fieldKey(name, value)) === number) this.#byField.delete(fieldKey(name, value));
      if (this.#byName.get(name) === number) this.#byName.delete(name);
    });
  }

  /** A copy of the dynamic table, for tests and debugging. */
  get table(): TableSnapshot {
    return this.#table.snapshot();
  }

  /**
   * The peer's SETTINGS_HEADER_TABLE_SIZE; the next block starts with a dynamic table size update (RFC 7541 §4.2,
   * §6.3) when it changes what we use. We never use more than 4096 even if the peer allows more.
   */
  setMaxTableSize(n: number): void {
    const size = Math.min(checkSize("maxTableSize", n), ENCODER_MAX_TABLE_SIZE);
    if (size === this.#table.maxSize) return;
    // Evicting now is what the decoder does when it reads the update(s), before any field of the next block.
    this.#table.setMaxSize(size);
    this.#pendingMinSize = Math.min(this.#pendingMinSize ?? size, size);
  }

  /**
   * Encodes one header block. Uses the static table (full match → indexed; name match → literal with name index),
   * the dynamic table with incremental indexing for repeated fields, never-indexed literals for sensitive fields
   * ("authorization", "proxy-authorization", "cookie" values shorter than 20 bytes, and set-cookie), Huffman only
   * when it is shorter. Throws TypeError if a name or value has a char code > 255 or a name has uppercase letters.
   */
  encode(headers: HeaderField[]): Uint8Array {
    // Check everything first: a throw halfway would leave our table ahead of the peer's.
    for (const [name, value] of headers) checkField(name, value);
    const out = new BlockWriter();
    if (this.#pendingMinSize !== null) {
      // The smallest size since the last block first, so the peer evicts what we evicted (RFC 7541 §4.2).
      if (this.#pendingMinSize < this.#table.maxSize) out.integer(5, 0x20, this.#pendingMinSize);
      out.integer(5, 0x20, this.#table.maxSize);
      this.#pendingMinSize = null;
    }
    for (const [name, value] of headers) {
      const nameIndex = STATIC_NAME.get(name) ?? this.#dynamicIndex(this.#byName.get(name));
      if (SENSITIVE.has(name) || (name === "cookie" && value.length < 20)) {
        // A short cookie is as easy to guess as a credential; a long one is worth indexing.
        this.#literal(out, 4, 0x10, nameIndex, name, value);
        continue;
      }
      const key = fieldKey(name, value);
      const index = STATIC_FIELD.get(key) ?? this.#dynamicIndex(this.#byField.get(key));
      if (index > 0) {
        out.integer(7, 0x80, index);
        continue;
      }
      // An entry over 3/4 of the table would flush most of it for one field that may never come again.
      if (name.length + value.length + ENTRY_OVERHEAD > (this.#table.maxSize * 3) / 4) {
        this.#literal(out, 4, 0x00, nameIndex, name, value);
        continue;
      }
      this.#literal(out, 6, 0x40, nameIndex, name, value);
      this.#table.add(name, value);
      this.#byField.set(key, this.#table.added - 1);
      this.#byName.set(name, this.#table.added - 1);
    }
    return out.bytes.slice(0, out.length);
  }

  /** The HPACK index of dynamic entry number `number`, or 0 when there is none. */
  #dynamicIndex(number: number | undefined): number {
    return number === undefined ? 0 : STATIC_LENGTH + this.#table.added - number;
  }

  #literal(out: BlockWriter, prefixBits: number, flags: number, nameIndex: number, name: string, value: string) {
    out.integer(prefixBits, flags, nameIndex);
    if (nameIndex === 0) out.string(name);
    out.string(value);
  }
}
