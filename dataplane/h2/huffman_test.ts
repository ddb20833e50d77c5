import assert from "node:assert/strict";
import { decode, encode, encodedLength, HuffmanError } from "./huffman.ts";

const hex = (bytes: Uint8Array) => Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
const unhex = (text: string) => Uint8Array.from(text.replace(/\s/g, "").match(/../g) ?? [], (h) => parseInt(h, 16));
const bytes = (text: string) => Uint8Array.from(text, (c) => c.charCodeAt(0));
const text = (b: Uint8Array) => String.fromCharCode(...b);

/** Packs a string of '0' and '1' into bytes; the length must be a multiple of 8. */
function bits(pattern: string): Uint8Array {
  const clean = pattern.replace(/\s/g, "");
  assert.equal(clean.length % 8, 0, "test bug: bit pattern is not whole bytes");
  return Uint8Array.from(clean.match(/.{8}/g)!, (b) => parseInt(b, 2));
}

function rejects(input: Uint8Array, kind: HuffmanError["kind"], message: RegExp, maxOut = 100) {
  assert.throws(() => decode(input, maxOut), (e: unknown) => {
    assert.ok(e instanceof HuffmanError, `expected a HuffmanError, got ${e}`);
    assert.equal(e.kind, kind, e.message);
    assert.match(e.message, message);
    return true;
  });
}

Deno.test("encode() gives the Huffman strings of RFC 7541 Appendix C.4 and C.6", async (t) => {
  const cases: [string, string][] = [
    ["www.example.com", "f1e3 c2e5 f23a 6ba0 ab90 f4ff"],
    ["no-cache", "a8eb 1064 9cbf"],
    ["custom-key", "25a8 49e9 5ba9 7d7f"],
    ["custom-value", "25a8 49e9 5bb8 e8b4 bf"],
    ["302", "6402"],
    ["307", "640e ff"],
    ["private", "aec3 771a 4b"],
    ["Mon, 21 Oct 2013 20:13:21 GMT", "d07a be94 1054 d444 a820 0595 040b 8166 e082 a62d 1bff"],
    ["Mon, 21 Oct 2013 20:13:22 GMT", "d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff"],
    ["https://www.example.com", "9d29 ad17 1863 c78f 0b97 c8e9 ae82 ae43 d3"],
    ["gzip", "9bd9 ab"],
    [
      "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1",
      "94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07",
    ],
  ];
  for (const [plain, coded] of cases) {
    await t.step(plain, () => {
      assert.equal(hex(encode(bytes(plain))), hex(unhex(coded)));
      assert.equal(encodedLength(bytes(plain)), unhex(coded).length);
      assert.equal(text(decode(unhex(coded), plain.length)), plain);
    });
  }
});

Deno.test("encode() and decode() handle the edges of the code table", () => {
  assert.equal(encode(new Uint8Array(0)).length, 0);
  assert.equal(decode(new Uint8Array(0), 0).length, 0);
  // '0' has the shortest code (5 bits, 00000); byte 10 one of the longest (30 bits, 3ffffffc).
  assert.equal(hex(encode(bytes("0"))), "07");
  assert.equal(hex(encode(Uint8Array.of(10))), "fffffff3");
  assert.equal(hex(encode(Uint8Array.of(10, 10))), "fffffff3ffffffcf");
  // Every byte value, alone and after an odd number of bits so the long codes cross byte boundaries everywhere.
  for (let b = 0; b < 256; b++) {
    for (const prefix of [[], [0x30], [0x30, 0x61], [0x30, 0x30, 0x30]]) {
      const input = Uint8Array.of(...prefix, b);
      assert.deepEqual(decode(encode(input), input.length), input, `byte ${b} after ${prefix}`);
    }
  }
});

Deno.test("decode() inverts encode() on random bytes", () => {
  let seed = 7;
  const random = () => (seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) >>> 24;
  for (let round = 0; round < 300; round++) {
    const input = Uint8Array.from({ length: random() % 64 }, () => round % 2 ? random() : 0x20 + (random() % 95));
    const coded = encode(input);
    assert.equal(coded.length, encodedLength(input));
    assert.deepEqual(decode(coded, input.length), input);
  }
});

Deno.test("decode() accepts exactly the canonical encodings among all one- and two-byte inputs", () => {
  // A valid input decodes to symbols whose encoding, padded with at most 7 one bits, is the input itself; so any
  // input decode() accepts must come back unchanged from encode(), and the rest must be HuffmanErrors.
  let accepted = 0;
  for (let n = 0; n < 0x10100; n++) {
    const input = n < 0x100 ? Uint8Array.of(n) : Uint8Array.of((n - 0x100) >> 8, n & 0xff);
    let output: Uint8Array;
    try {
      output = decode(input, 4);
    } catch (e) {
      assert.ok(e instanceof HuffmanError && e.kind === "malformed", `${hex(input)}: ${e}`);
      continue;
    }
    assert.equal(hex(encode(output)), hex(input), `${hex(input)} decoded to ${hex(output)}`);
    accepted++;
  }
  // And none is missing: counted from the code lengths of Appendix B, 74 symbol sequences take 1..8 bits (one symbol
  // of 5 to 8 bits) and 14717 take 9..16 bits, each with exactly one padded encoding.
  assert.equal(accepted, 74 + 14717);
});

Deno.test("decode() refuses EOS and bad padding (RFC 7541 §5.2)", async (t) => {
  const cases: [string, Uint8Array, RegExp][] = [
    ["EOS alone (30 ones) and padding", bits("11111111 11111111 11111111 11111111"), /EOS/],
    ["EOS after a symbol", bits("00011" + "1".repeat(35)), /EOS/],
    ["EOS followed by a symbol", bits("1".repeat(30) + "00000 11111"), /EOS/],
    ["8 bits of padding alone", bits("11111111"), /8 bits of padding/],
    ["11 bits of padding after 'a'", bits("00011 111 11111111"), /11 bits of padding/],
    ["padding with a zero bit", bits("00011 110"), /not all ones/],
    ["padding of zeros", bits("00011 000"), /not all ones/],
    ["16 one bits", bits("11111111 11111111"), /16 bits of padding/],
    ["'\"' and the start of an 8-bit code", bits("11111110 01 111110"), /inside a code/],
  ];
  for (const [name, input, message] of cases) await t.step(name, () => rejects(input, "malformed", message));
  await t.step("the same strings padded correctly decode", () => {
    assert.equal(text(decode(bits("00011 111"), 1)), "a");
    assert.equal(text(decode(bits("00011 00011 00000 1"), 3)), "aa0");
  });
});

Deno.test("decode() stops when the output would pass maxOut", () => {
  const coded = encode(bytes("www.example.com"));
  assert.equal(text(decode(coded, 15)), "www.example.com");
  rejects(coded, "too-long", /more than 14 bytes/, 14);
  rejects(coded, "too-long", /more than 0 bytes/, 0);
});
