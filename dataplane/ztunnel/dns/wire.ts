/**
 * The DNS wire format (RFC 1035 §4), as much of it as ztunnel's DNS proxy needs: read a query's header and its one
 * question (and its EDNS OPT record, RFC 6891), write answers of A, AAAA and CNAME records, check that an upstream
 * response answers the question that was asked, and read the TTLs a cache needs. Forwarded answers are otherwise
 * passed through as bytes, never re-encoded.
 *
 * Why not an npm package: the registry's DNS codecs (`dns-packet` and its forks) decode every record type into
 * objects through Node's `Buffer`, and are lenient where a proxy must be strict (compression loops, names over 255
 * octets, trailing garbage). The subset here is small, bounded and checked on every read: a malformed message is a
 * {@link DnsWireError}, never an exception from an out-of-range read, and nothing is allocated from a length field
 * that was not checked against the bytes actually there.
 *
 * @module
 */

/** Record types the proxy answers itself (RFC 1035 §3.2.2, RFC 3596 §2.1) and the OPT pseudo-record. */
export const TYPE = { A: 1, CNAME: 5, SOA: 6, AAAA: 28, OPT: 41 } as const;
/** The Internet class. */
export const CLASS_IN = 1;
/** Response codes (RFC 1035 §4.1.1). */
export const RCODE = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5 } as const;

/** The largest UDP answer to a client that sent no EDNS (RFC 1035 §4.2.1). */
export const UDP_MIN_PAYLOAD = 512;
/** The most we answer over UDP whatever a client's EDNS offers: the DNS flag day 2020 size, no IP fragments. */
export const UDP_MAX_PAYLOAD = 1232;
/** A DNS message over TCP is at most what its 2-octet length prefix can say (RFC 1035 §4.2.2). */
export const MAX_MESSAGE = 65535;
const HEADER = 12;
const MAX_NAME = 255;
const MAX_LABEL = 63;
/**
 * Most compression pointers one name may take. Pointing backwards rules out loops but not chains: 8,000 pointers
 * each to the one before, read as the owner of 4,000 records, fill one 64 KB message and cost 32 million reads
 * (87 ms of the event loop every pod shares). A name of 255 octets has at most 127 labels, so a name that needs
 * more pointers than that is not one a server wrote.
 */
const MAX_POINTERS = 127;
/**
 * Most authority and additional records a query may carry: an OPT, a TSIG or SIG(0), a few for UPDATE or NOTIFY.
 * More is no resolver's query, and each owner name, however compressed, can cost 255 octets to read: 5,300 records
 * naming one long name fill a 64 KB message and took 9 to 20 ms to parse.
 */
const MAX_QUERY_RECORDS = 16;

/** A message that is not well-formed DNS. `id` is set when the header could be read, so FORMERR can be sent. */
export class DnsWireError extends Error {
  readonly code = "DNS_WIRE";
  readonly id: number | undefined;
  constructor(message: string, id?: number) {
    super(message);
    this.name = "DnsWireError";
    this.id = id;
  }
}

/** A query's question and the header fields an answer echoes. */
export interface DnsQuery {
  id: number;
  /** Opcode (0 = QUERY); anything else is answered NOTIMP. */
  opcode: number;
  /** RD, echoed in the answer. */
  recursionDesired: boolean;
  /** CD (RFC 4035 §3.2.2), echoed. */
  checkingDisabled: boolean;
  /** The name as asked, without the final dot, case kept (answers echo it; lookups lower-case it). */
  name: string;
  type: number;
  class: number;
  /** The UDP payload size the client's OPT record offers, or undefined when it sent none. */
  ednsPayload?: number;
  /** The question section as it arrived, echoed in answers (octet for octet, so 0x20 case survives). */
  questionBytes: Uint8Array;
}

/** A record we answer with. */
export type DnsRecord =
  | { name: string; type: typeof TYPE.A | typeof TYPE.AAAA; ttl: number; address: string }
  | { name: string; type: typeof TYPE.CNAME; ttl: number; target: string };

function u16(buf: Uint8Array, at: number): number {
  return (buf[at] << 8) | buf[at + 1];
}

/**
 * Reads a (possibly compressed, RFC 1035 §4.1.4) name at `at`. Returns the dotted name and the offset after it in
 * the message (after the first pointer, when there is one). Pointers must point backwards, which rules out loops.
 */
export function readName(buf: Uint8Array, at: number, id?: number): { name: string; next: number } {
  const labels: string[] = [];
  let length = 0;
  let pos = at;
  let next = -1;
  let pointers = 0;
  for (;;) {
    if (pos >= buf.length) throw new DnsWireError("DNS name: runs past the end of the message", id);
    const len = buf[pos];
    if ((len & 0xc0) === 0xc0) {
      if (pos + 1 >= buf.length) throw new DnsWireError("DNS name: truncated compression pointer", id);
      if (++pointers > MAX_POINTERS) throw new DnsWireError(`DNS name: over ${MAX_POINTERS} compression pointers`, id);
      const target = u16(buf, pos) & 0x3fff;
      if (target >= pos) throw new DnsWireError("DNS name: compression pointer does not point backwards", id);
      if (next < 0) next = pos + 2;
      pos = target;
      continue;
    }
    if ((len & 0xc0) !== 0) throw new DnsWireError(`DNS name: label type 0x${(len & 0xc0).toString(16)} unknown`, id);
    if (len === 0) {
      if (next < 0) next = pos + 1;
      break;
    }
    if (pos + 1 + len > buf.length) throw new DnsWireError("DNS name: label runs past the end of the message", id);
    length += len + 1;
    if (length + 1 > MAX_NAME) throw new DnsWireError(`DNS name: longer than ${MAX_NAME} octets`, id);
    let label = "";
    for (let i = pos + 1; i <= pos + len; i++) {
      const c = buf[i];
      // Octets outside printable ASCII, and the dot and backslash, are written as \DDD (RFC 4343 §2.1).
      label += c > 0x20 && c < 0x7f && c !== 0x2e && c !== 0x5c
        ? String.fromCharCode(c)
        : `\\${String(c).padStart(3, "0")}`;
    }
    labels.push(label);
    pos += 1 + len;
  }
  return { name: labels.join("."), next };
}

/** Writes `name` (dotted, no escapes needed: the names we write are model hostnames) uncompressed. */
function writeName(name: string, out: number[]): void {
  if (name !== "") {
    for (const label of name.split(".")) {
      const bytes = new TextEncoder().encode(label);
      if (bytes.length === 0 || bytes.length > MAX_LABEL) throw new DnsWireError(`DNS name ${name}: bad label`);
      out.push(bytes.length, ...bytes);
    }
  }
  out.push(0);
}

/** Skips one resource record at `at`; returns its type, class field, TTL and the offset after it. */
function readRecordHead(
  buf: Uint8Array,
  at: number,
  id: number,
): { type: number; klass: number; ttl: number; rdata: number; next: number } {
  const { next } = readName(buf, at, id);
  if (next + 10 > buf.length) throw new DnsWireError("DNS record: truncated header", id);
  const type = u16(buf, next);
  const klass = u16(buf, next + 2);
  const ttl = ((buf[next + 4] << 24) >>> 0) + (buf[next + 5] << 16) + (buf[next + 6] << 8) + buf[next + 7];
  const rdlength = u16(buf, next + 8);
  if (next + 10 + rdlength > buf.length) throw new DnsWireError("DNS record: data runs past the end", id);
  return { type, klass, ttl, rdata: next + 10, next: next + 10 + rdlength };
}

/**
 * Reads a query: a header with QR=0, exactly one question, no answers, and at most an OPT record beside other
 * additional records. Throws {@link DnsWireError} for anything malformed (with `id` when the header was whole).
 */
export function parseQuery(buf: Uint8Array): DnsQuery {
  if (buf.length < HEADER) throw new DnsWireError(`DNS query: ${buf.length} octets, shorter than a header`);
  if (buf.length > MAX_MESSAGE) throw new DnsWireError(`DNS query: ${buf.length} octets, over ${MAX_MESSAGE}`);
  const id = u16(buf, 0);
  const flags = u16(buf, 2);
  if (flags & 0x8000) throw new DnsWireError("DNS query: QR is set (a response, not a query)", id);
  const qdcount = u16(buf, 4);
  const ancount = u16(buf, 6);
  const nscount = u16(buf, 8);
  const arcount = u16(buf, 10);
  if (qdcount !== 1) throw new DnsWireError(`DNS query: ${qdcount} questions, expected 1`, id);
  if (ancount !== 0) throw new DnsWireError(`DNS query: ${ancount} answers in a query`, id);
  if (nscount + arcount > MAX_QUERY_RECORDS) {
    throw new DnsWireError(`DNS query: ${nscount + arcount} records, over ${MAX_QUERY_RECORDS}`, id);
  }
  const { name, next } = readName(buf, HEADER, id);
  if (next + 4 > buf.length) throw new DnsWireError("DNS query: truncated question", id);
  const questionBytes = buf.slice(HEADER, next + 4);
  const query: DnsQuery = {
    id,
    opcode: (flags >> 11) & 0xf,
    recursionDesired: (flags & 0x0100) !== 0,
    checkingDisabled: (flags & 0x0010) !== 0,
    name,
    type: u16(buf, next),
    class: u16(buf, next + 2),
    questionBytes,
  };
  let pos = next + 4;
  for (let i = 0; i < nscount + arcount; i++) {
    const rr = readRecordHead(buf, pos, id);
    if (i >= nscount && rr.type === TYPE.OPT) {
      if (query.ednsPayload !== undefined) throw new DnsWireError("DNS query: more than one OPT record", id);
      // The OPT record's class field is the requestor's UDP payload size (RFC 6891 §6.1.2); below 512 means 512.
      query.ednsPayload = Math.max(UDP_MIN_PAYLOAD, rr.klass);
    }
    pos = rr.next;
  }
  if (pos !== buf.length) throw new DnsWireError(`DNS query: ${buf.length - pos} octets after the last record`, id);
  return query;
}

/** The largest UDP answer this client takes: 512 without EDNS, else what it offers, at most {@link UDP_MAX_PAYLOAD}. */
export function udpLimit(query: Pick<DnsQuery, "ednsPayload">): number {
  return query.ednsPayload === undefined ? UDP_MIN_PAYLOAD : Math.min(query.ednsPayload, UDP_MAX_PAYLOAD);
}

/** What an answer says besides its records. */
export interface AnswerOptions {
  rcode: number;
  /** AA: we are the authority for mesh names (as upstream ztunnel sets it). */
  authoritative?: boolean;
  answers?: readonly DnsRecord[];
  /** TC: the records did not fit; sent with none, so the client retries over TCP (RFC 1035 §4.2.1, RFC 7766 §5). */
  truncated?: boolean;
}

function ipv4Bytes(ip: string): number[] {
  const parts = ip.split(".").map(Number);
  if (parts.length !== 4 || parts.some((p) => !Number.isInteger(p) || p < 0 || p > 255)) {
    throw new DnsWireError(`A record: ${ip} is not an IPv4 address`);
  }
  return parts;
}

/**
 * Writes the answer to `query` (same id, opcode, RD and CD, RA set, the question echoed, an OPT record when the
 * query had one). A query whose question could not be read gets an answer with no question (FORMERR).
 */
export function buildAnswer(query: Pick<DnsQuery, "id"> & Partial<DnsQuery>, opts: AnswerOptions): Uint8Array {
  const answers = opts.truncated ? [] : opts.answers ?? [];
  const out: number[] = [];
  let flags = 0x8000 | 0x0080; // QR, RA
  flags |= ((query.opcode ?? 0) & 0xf) << 11;
  if (opts.authoritative) flags |= 0x0400;
  if (opts.truncated) flags |= 0x0200;
  if (query.recursionDesired) flags |= 0x0100;
  if (query.checkingDisabled) flags |= 0x0010;
  flags |= opts.rcode & 0xf;
  const question = query.questionBytes;
  const opt = query.ednsPayload !== undefined;
  out.push(query.id >> 8, query.id & 0xff, flags >> 8, flags & 0xff);
  out.push(0, question ? 1 : 0, answers.length >> 8, answers.length & 0xff, 0, 0, 0, opt ? 1 : 0);
  if (question) out.push(...question);
  for (const r of answers) {
    writeName(r.name, out);
    const rdata: number[] = [];
    if (r.type === TYPE.A) rdata.push(...ipv4Bytes(r.address));
    else if (r.type === TYPE.CNAME) writeName(r.target, rdata);
    else throw new DnsWireError(`BUG: AAAA records are not written (Skiff is IPv4-only): ${r.address}`);
    const ttl = Math.max(0, Math.min(r.ttl, 0x7fffffff));
    out.push(r.type >> 8, r.type & 0xff, 0, CLASS_IN, ttl >>> 24, (ttl >> 16) & 0xff, (ttl >> 8) & 0xff, ttl & 0xff);
    out.push(rdata.length >> 8, rdata.length & 0xff, ...rdata);
  }
  // Our own OPT: root name, our payload size, no extended rcode, version 0, no options (RFC 6891 §6.1.2).
  if (opt) out.push(0, 0, TYPE.OPT, UDP_MAX_PAYLOAD >> 8, UDP_MAX_PAYLOAD & 0xff, 0, 0, 0, 0, 0, 0);
  return Uint8Array.from(out);
}

/**
 * Fits an answer for UDP: returned whole when it is within `limit`, else cut to its header and question with TC
 * set and no records, so the client asks again over TCP (RFC 1035 §4.2.1; RFC 2181 §9: a TC answer's records are
 * not to be used, so none are sent). Works on any response, ours or forwarded.
 */
export function truncateForUdp(response: Uint8Array, limit: number): Uint8Array {
  if (response.length <= limit) return response;
  const id = u16(response, 0);
  let end = HEADER;
  if (u16(response, 4) === 1) end = readName(response, HEADER, id).next + 4;
  if (end > response.length) throw new DnsWireError("DNS response: truncated question", id);
  const out = response.slice(0, end);
  out[2] |= 0x02; // TC
  out.fill(0, 6, 12); // no answer, authority or additional records
  return out;
}

/** Returns `message` with its 16-bit id replaced (a copy). */
export function withId(message: Uint8Array, id: number): Uint8Array {
  const out = message.slice();
  out[0] = id >> 8;
  out[1] = id & 0xff;
  return out;
}

/** What a cache and a forwarder need to know of an upstream's response. */
export interface ResponseFacts {
  id: number;
  rcode: number;
  truncated: boolean;
  /** The smallest TTL of its answer and authority records (OPT excluded), or undefined when it has none. */
  minTtl: number | undefined;
}

/**
 * Checks that `buf` is a response to the question `questionBytes` (QR set, one question, equal to the one asked,
 * names compared case-insensitively as RFC 4343 says) and reads its facts. A response that does not match is an
 * error: a forwarder drops it (RFC 5452 §9.1: id and question must both match).
 */
export function parseResponse(buf: Uint8Array, questionBytes: Uint8Array): ResponseFacts {
  if (buf.length < HEADER) throw new DnsWireError(`DNS response: ${buf.length} octets, shorter than a header`);
  const id = u16(buf, 0);
  const flags = u16(buf, 2);
  if (!(flags & 0x8000)) throw new DnsWireError("DNS response: QR is not set", id);
  if (u16(buf, 4) !== 1) throw new DnsWireError(`DNS response: ${u16(buf, 4)} questions, expected 1`, id);
  const { next } = readName(buf, HEADER, id);
  if (next + 4 > buf.length) throw new DnsWireError("DNS response: truncated question", id);
  const got = buf.subarray(HEADER, next + 4);
  if (!sameQuestion(got, questionBytes)) throw new DnsWireError("DNS response: answers another question", id);
  const truncated = (flags & 0x0200) !== 0;
  let minTtl: number | undefined;
  let pos = next + 4;
  const records = u16(buf, 6) + u16(buf, 8);
  // A truncated response may end mid-record; its TTLs are never cached anyway.
  if (!truncated) {
    for (let i = 0; i < records + u16(buf, 10); i++) {
      const rr = readRecordHead(buf, pos, id);
      if (i < records && rr.type !== TYPE.OPT) minTtl = minTtl === undefined ? rr.ttl : Math.min(minTtl, rr.ttl);
      pos = rr.next;
    }
  }
  return { id, rcode: flags & 0xf, truncated, minTtl };
}

/** Two uncompressed questions compared octet by octet: the name's ASCII letters case-insensitively, type and class exactly. */
function sameQuestion(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) {
    if (i >= a.length - 4) {
      if (a[i] !== b[i]) return false;
      continue;
    }
    const x = a[i] >= 0x41 && a[i] <= 0x5a ? a[i] | 0x20 : a[i];
    const y = b[i] >= 0x41 && b[i] <= 0x5a ? b[i] | 0x20 : b[i];
    if (x !== y) return false;
  }
  return true;
}
