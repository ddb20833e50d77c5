/**
 * The Huffman code of HPACK (RFC 7541 §5.2 and Appendix B), for string literals in header blocks.
 *
 * Encoding writes each byte's code most significant bit first and pads the last octet with the high bits of EOS
 * (all ones). Decoding runs a state machine built once at module load: the states are the 256 inner nodes of the
 * code tree, and each step consumes four bits, so a byte costs two table lookups. A step emits at most one symbol,
 * because no code is shorter than five bits. Decoding refuses what RFC 7541 §5.2 calls a decoding error: the EOS
 * symbol inside a string, padding longer than seven bits, and padding that is not all ones.
 *
 * @module
 */

/** A Huffman string we cannot decode. `kind` "too-long" means it decodes to more than the caller's limit. */
export class HuffmanError extends Error {
  constructor(message: string, readonly kind: "malformed" | "too-long") {
    super(message);
    this.name = "HuffmanError";
  }
}

// RFC 7541 Appendix B: the code of each symbol 0..255 and EOS (256), right-aligned, and its length in bits.
// deno-fmt-ignore
const CODES = [
  0x1ff8, 0x7fffd8, 0xfffffe2, 0xfffffe3, 0xfffffe4, 0xfffffe5, 0xfffffe6, 0xfffffe7, 0xfffffe8, 0xffffea,
  0x3ffffffc, 0xfffffe9, 0xfffffea, 0x3ffffffd, 0xfffffeb, 0xfffffec, 0xfffffed, 0xfffffee, 0xfffffef, 0xffffff0,
  0xffffff1, 0xffffff2, 0x3ffffffe, 0xffffff3, 0xffffff4, 0xffffff5, 0xffffff6, 0xffffff7, 0xffffff8, 0xffffff9,
  0xffffffa, 0xffffffb, 0x14, 0x3f8, 0x3f9, 0xffa, 0x1ff9, 0x15, 0xf8, 0x7fa, 0x3fa, 0x3fb, 0xf9, 0x7fb, 0xfa,
  0x16, 0x17, 0x18, 0x0, 0x1, 0x2, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f, 0x5c, 0xfb, 0x7ffc, 0x20, 0xffb,
  0x3fc, 0x1ffa, 0x21, 0x5d, 0x5e, 0x5f, 0x60, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x6b,
  0x6c, 0x6d, 0x6e, 0x6f, 0x70, 0x71, 0x72, 0xfc, 0x73, 0xfd, 0x1ffb, 0x7fff0, 0x1ffc, 0x3ffc, 0x22, 0x7ffd, 0x3,
  0x23, 0x4, 0x24, 0x5, 0x25, 0x26, 0x27, 0x6, 0x74, 0x75, 0x28, 0x29, 0x2a, 0x7, 0x2b, 0x76, 0x2c, 0x8, 0x9,
  0x2d, 0x77, 0x78, 0x79, 0x7a, 0x7b, 0x7ffe, 0x7fc, 0x3ffd, 0x1ffd, 0xffffffc, 0xfffe6, 0x3fffd2, 0xfffe7,
  0xfffe8, 0x3fffd3, 0x3fffd4, 0x3fffd5, 0x7fffd9, 0x3fffd6, 0x7fffda, 0x7fffdb, 0x7fffdc, 0x7fffdd, 0x7fffde,
  0xffffeb, 0x7fffdf, 0xffffec, 0xffffed, 0x3fffd7, 0x7fffe0, 0xffffee, 0x7fffe1, 0x7fffe2, 0x7fffe3, 0x7fffe4,
  0x1fffdc, 0x3fffd8, 0x7fffe5, 0x3fffd9, 0x7fffe6, 0x7fffe7, 0xffffef, 0x3fffda, 0x1fffdd, 0xfffe9, 0x3fffdb,
  0x3fffdc, 0x7fffe8, 0x7fffe9, 0x1fffde, 0x7fffea, 0x3fffdd, 0x3fffde, 0xfffff0, 0x1fffdf, 0x3fffdf, 0x7fffeb,
  0x7fffec, 0x1fffe0, 0x1fffe1, 0x3fffe0, 0x1fffe2, 0x7fffed, 0x3fffe1, 0x7fffee, 0x7fffef, 0xfffea, 0x3fffe2,
  0x3fffe3, 0x3fffe4, 0x7ffff0, 0x3fffe5, 0x3fffe6, 0x7ffff1, 0x3ffffe0, 0x3ffffe1, 0xfffeb, 0x7fff1, 0x3fffe7,
  0x7ffff2, 0x3fffe8, 0x1ffffec, 0x3ffffe2, 0x3ffffe3, 0x3ffffe4, 0x7ffffde, 0x7ffffdf, 0x3ffffe5, 0xfffff1,
  0x1ffffed, 0x7fff2, 0x1fffe3, 0x3ffffe6, 0x7ffffe0, 0x7ffffe1, 0x3ffffe7, 0x7ffffe2, 0xfffff2, 0x1fffe4,
  0x1fffe5, 0x3ffffe8, 0x3ffffe9, 0xffffffd, 0x7ffffe3, 0x7ffffe4, 0x7ffffe5, 0xfffec, 0xfffff3, 0xfffed,
  0x1fffe6, 0x3fffe9, 0x1fffe7, 0x1fffe8, 0x7ffff3, 0x3fffea, 0x3fffeb, 0x1ffffee, 0x1ffffef, 0xfffff4, 0xfffff5,
  0x3ffffea, 0x7ffff4, 0x3ffffeb, 0x7ffffe6, 0x3ffffec, 0x3ffffed, 0x7ffffe7, 0x7ffffe8, 0x7ffffe9, 0x7ffffea,
  0x7ffffeb, 0xffffffe, 0x7ffffec, 0x7ffffed, 0x7ffffee, 0x7ffffef, 0x7fffff0, 0x3ffffee, 0x3fffffff,
];
// deno-fmt-ignore
const LENGTHS = [
  13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28,
  28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15,
  6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6,
  15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22,
  20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23,
  23, 24, 22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20, 22,
  22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19, 21, 26, 27, 27, 26,
  27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, 26, 27,
  26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, 30,
];

const EOS = 256;
const EMIT = 1 << 8;
const FAIL = 1 << 9;

/**
 * The decoder's state machine. `STEP[state << 4 | nibble]` holds the next state in bits 16-23, the emitted symbol
 * in bits 0-7 with EMIT set, or FAIL when the four bits complete EOS.
 */
const STEP = new Uint32Array(256 * 16);
/** For each state, how many one bits lead to it from the root; 0 when the path holds a zero bit. */
const ONES = new Uint8Array(256);

{
  // The code tree: inner nodes 0..255, 0 the root. A child > 0 is an inner node, < 0 the leaf of symbol -child - 1,
  // and 0 not yet seen (the root is nobody's child).
  const child = new Int16Array(256 * 2);
  let inner = 1;
  for (let sym = 0; sym <= EOS; sym++) {
    let node = 0;
    for (let bit = LENGTHS[sym] - 1; bit >= 0; bit--) {
      const slot = node * 2 + (Math.floor(CODES[sym] / 2 ** bit) & 1);
      if (child[slot] < 0 || (bit === 0 && child[slot] !== 0)) {
        throw new Error("BUG: the Huffman code is not prefix-free");
      }
      if (bit === 0) child[slot] = -sym - 1;
      else node = child[slot] || (child[slot] = inner++);
    }
  }
  if (inner !== 256 || child.includes(0)) throw new Error("BUG: the Huffman code is not complete");
  for (let state = 0; state < 256; state++) {
    for (let nibble = 0; nibble < 16; nibble++) {
      let node = state;
      let step = 0;
      for (let bit = 3; bit >= 0; bit--) {
        const next = child[node * 2 + ((nibble >> bit) & 1)];
        if (next > 0) {
          node = next;
        } else if (next === -EOS - 1) {
          step = FAIL;
          break;
        } else {
          // A second symbol would need five more bits after the first; a nibble has at most three left.
          if (step & EMIT) throw new Error("BUG: two Huffman symbols in one nibble");
          step = EMIT | (-next - 1);
          node = 0;
        }
      }
      STEP[(state << 4) | nibble] = step | (node << 16);
    }
  }
  for (let node = child[1], ones = 1; node > 0; node = child[node * 2 + 1], ones++) ONES[node] = ones;
}

/** The length in bytes of the Huffman encoding of `bytes`. */
export function encodedLength(bytes: Uint8Array): number {
  let bits = 0;
  for (let i = 0; i < bytes.length; i++) bits += LENGTHS[bytes[i]];
  return Math.ceil(bits / 8);
}

/** Huffman-encodes `bytes`, padding the last octet with one bits. */
export function encode(bytes: Uint8Array): Uint8Array {
  const out = new Uint8Array(encodedLength(bytes));
  // `pending` holds the `bits` not yet written, fewer than 8 between symbols. A code of up to 30 bits could push it
  // past 31 bits, so such a code goes in two parts to keep to int32 arithmetic.
  let pending = 0;
  let bits = 0;
  let at = 0;
  for (let i = 0; i < bytes.length; i++) {
    let code = CODES[bytes[i]];
    let len = LENGTHS[bytes[i]];
    if (bits + len > 31) {
      pending = (pending << (len - 16)) | (code >>> 16);
      bits += len - 16;
      for (; bits >= 8; bits -= 8) out[at++] = pending >>> (bits - 8);
      pending &= (1 << bits) - 1;
      code &= 0xffff;
      len = 16;
    }
    pending = (pending << len) | code;
    bits += len;
    for (; bits >= 8; bits -= 8) out[at++] = pending >>> (bits - 8);
    pending &= (1 << bits) - 1;
  }
  if (bits > 0) out[at] = (pending << (8 - bits)) | (0xff >> bits);
  return out;
}

/**
 * Decodes a Huffman string. Throws {@link HuffmanError} "malformed" for EOS inside the string or bad padding, and
 * "too-long" as soon as the output would pass `maxOut` bytes.
 */
export function decode(bytes: Uint8Array, maxOut: number): Uint8Array {
  // Codes are at least five bits long, so `bytes` holds at most 8/5 symbols per byte.
  const out = new Uint8Array(Math.min(maxOut, Math.floor((bytes.length * 8) / 5)));
  let state = 0;
  let at = 0;
  for (let i = 0; i < bytes.length; i++) {
    for (let shift = 4; shift >= 0; shift -= 4) {
      const step = STEP[(state << 4) | ((bytes[i] >> shift) & 0xf)];
      if (step & FAIL) throw new HuffmanError("Huffman string contains the EOS symbol", "malformed");
      if (step & EMIT) {
        if (at === maxOut) throw new HuffmanError(`Huffman string decodes to more than ${maxOut} bytes`, "too-long");
        out[at++] = step & 0xff;
      }
      state = step >>> 16;
    }
  }
  // The input may end at the root or after up to seven padding bits, all ones (RFC 7541 §5.2).
  if (state !== 0 && ONES[state] === 0) {
    throw new HuffmanError("Huffman string ends inside a code or with padding that is not all ones", "malformed");
  }
  if (ONES[state] > 7) throw new HuffmanError(`Huffman string ends with ${ONES[state]} bits of padding`, "malformed");
  return out.subarray(0, at);
}
