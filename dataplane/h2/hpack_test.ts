import assert from "node:assert/strict";
import { type HeaderField, HpackDecoder, HpackEncoder, HpackError, type TableSnapshot } from "./hpack.ts";
import { encode as huffmanEncode } from "./huffman.ts";

const hex = (bytes: Uint8Array) => Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
const unhex = (text: string) => Uint8Array.from(text.replace(/\s/g, "").match(/../g) ?? [], (h) => parseInt(h, 16));
const byteHex = (s: string) => hex(Uint8Array.from(s, (c) => c.charCodeAt(0)));
const fromByteHex = (h: string) => String.fromCharCode(...unhex(h));

/** An HPACK integer (RFC 7541 §5.1), written independently of the encoder under test. */
function int(value: number, prefixBits: number, flags = 0): string {
  const max = 2 ** prefixBits - 1;
  if (value < max) return hex(Uint8Array.of(flags | value));
  const out = [flags | max];
  for (value -= max; value >= 128; value = Math.floor(value / 128)) out.push(128 + (value % 128));
  return hex(Uint8Array.from([...out, value]));
}

/** A raw (not Huffman) string literal. */
const str = (s: string) => int(s.length, 7) + byteHex(s);

function rejects(decoder: HpackDecoder, block: string, kind: HpackError["kind"], message?: RegExp) {
  assert.throws(() => decoder.decode(unhex(block)), (e: unknown) => {
    assert.ok(e instanceof HpackError, `expected an HpackError, got ${e}`);
    assert.equal(e.kind, kind, e.message);
    if (message) assert.match(e.message, message);
    return true;
  });
}

/** A seeded PRNG (mulberry32), so a failing random case can be replayed. */
function prng(seed: number): (n: number) => number {
  return (n) => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return Math.floor((((t ^ (t >>> 14)) >>> 0) / 2 ** 32) * n);
  };
}

const COMMON_NAMES = [
  ":method",
  ":path",
  ":authority",
  ":status",
  "content-type",
  "user-agent",
  "cookie",
  "set-cookie",
  "authorization",
  "proxy-authorization",
  "x-request-id",
  "cache-control",
];

/**
 * Random header lists for one connection. Fields repeat across lists (so the dynamic table is hit), values use
 * all 256 byte values, and a few are larger than the table. Names are lowercase; `anyByteNames` adds other bytes.
 */
function randomLists(seed: number, count: number, anyByteNames: boolean): HeaderField[][] {
  const rand = prng(seed);
  const seen: HeaderField[] = [];
  const randomBytes = (length: number, alphabet: (i: number) => number) =>
    String.fromCharCode(...Array.from({ length }, alphabet));
  const value = () => {
    const size = [rand(8), rand(40), rand(300), 1000 + rand(4000)][[0, 0, 1, 1, 1, 1, 2, 2, 3][rand(9)]];
    return rand(2) ? randomBytes(size, () => 0x20 + rand(95)) : randomBytes(size, () => rand(256));
  };
  const name = () => {
    const lower = "abcdefghijklmnopqrstuvwxyz0123456789-_";
    if (!anyByteNames || rand(4)) return randomBytes(1 + rand(20), () => lower.charCodeAt(rand(lower.length)));
    return randomBytes(1 + rand(10), () => [0x00, 0x3a, 0x7f, 0x80, 0xc0, 0xff, 0x61][rand(7)]);
  };
  const lists: HeaderField[][] = [];
  for (let i = 0; i < count; i++) {
    const list: HeaderField[] = [];
    for (let n = rand(12); n > 0; n--) {
      const pick = rand(10);
      const field: HeaderField = pick < 4 && seen.length > 0
        ? seen[rand(seen.length)]
        : pick < 7
        ? [COMMON_NAMES[rand(COMMON_NAMES.length)], value()]
        : [name(), value()];
      list.push([field[0], field[1]]);
      if (seen.length < 40) seen.push(field);
      else seen[rand(40)] = field;
    }
    lists.push(list);
  }
  return lists;
}

const sensitive = ([name, value]: HeaderField) =>
  ["authorization", "proxy-authorization", "set-cookie"].includes(name) || (name === "cookie" && value.length < 20);

// RFC 7541 Appendix C. Each step: the block, the header list it decodes to, then the dynamic table after it.
type Example = { block: string; fields: HeaderField[]; table: HeaderField[]; size: number };

const REQUEST_FIELDS: HeaderField[][] = [
  [[":method", "GET"], [":scheme", "http"], [":path", "/"], [":authority", "www.example.com"]],
  [[":method", "GET"], [":scheme", "http"], [":path", "/"], [":authority", "www.example.com"], [
    "cache-control",
    "no-cache",
  ]],
  [[":method", "GET"], [":scheme", "https"], [":path", "/index.html"], [":authority", "www.example.com"], [
    "custom-key",
    "custom-value",
  ]],
];
const REQUEST_TABLES: [HeaderField[], number][] = [
  [[[":authority", "www.example.com"]], 57],
  [[["cache-control", "no-cache"], [":authority", "www.example.com"]], 110],
  [[["custom-key", "custom-value"], ["cache-control", "no-cache"], [":authority", "www.example.com"]], 164],
];
const DATE_1 = "Mon, 21 Oct 2013 20:13:21 GMT";
const DATE_2 = "Mon, 21 Oct 2013 20:13:22 GMT";
const COOKIE = "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1";
const RESPONSE_FIELDS: HeaderField[][] = [
  [[":status", "302"], ["cache-control", "private"], ["date", DATE_1], ["location", "https://www.example.com"]],
  [[":status", "307"], ["cache-control", "private"], ["date", DATE_1], ["location", "https://www.example.com"]],
  [
    [":status", "200"],
    ["cache-control", "private"],
    ["date", DATE_2],
    ["location", "https://www.example.com"],
    ["content-encoding", "gzip"],
    ["set-cookie", COOKIE],
  ],
];
const RESPONSE_TABLES: [HeaderField[], number][] = [
  [[["location", "https://www.example.com"], ["date", DATE_1], ["cache-control", "private"], [":status", "302"]], 222],
  [[[":status", "307"], ["location", "https://www.example.com"], ["date", DATE_1], ["cache-control", "private"]], 222],
  [[["set-cookie", COOKIE], ["content-encoding", "gzip"], ["date", DATE_2]], 215],
];
const steps = (blocks: string[], fields: HeaderField[][], tables: [HeaderField[], number][]): Example[] =>
  blocks.map((block, i) => ({ block, fields: fields[i], table: tables[i][0], size: tables[i][1] }));

const EXAMPLES: [string, number, Example[]][] = [
  ["C.2.1 literal field with indexing", 4096, [{
    block: "400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572",
    fields: [["custom-key", "custom-header"]],
    table: [["custom-key", "custom-header"]],
    size: 55,
  }]],
  ["C.2.2 literal field without indexing", 4096, [{
    block: "040c 2f73 616d 706c 652f 7061 7468",
    fields: [[":path", "/sample/path"]],
    table: [],
    size: 0,
  }]],
  ["C.2.3 literal field never indexed", 4096, [{
    block: "1008 7061 7373 776f 7264 0673 6563 7265 74",
    fields: [["password", "secret"]],
    table: [],
    size: 0,
  }]],
  ["C.2.4 indexed field", 4096, [{ block: "82", fields: [[":method", "GET"]], table: [], size: 0 }]],
  [
    "C.3 requests without Huffman coding",
    4096,
    steps(
      [
        "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
        "8286 84be 5808 6e6f 2d63 6163 6865",
        "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
      ],
      REQUEST_FIELDS,
      REQUEST_TABLES,
    ),
  ],
  [
    "C.4 requests with Huffman coding",
    4096,
    steps(
      [
        "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
        "8286 84be 5886 a8eb 1064 9cbf",
        "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
      ],
      REQUEST_FIELDS,
      REQUEST_TABLES,
    ),
  ],
  [
    "C.5 responses without Huffman coding, 256-byte table",
    256,
    steps(
      [
        "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3120 474d" +
        "546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
        "4803 3330 37c1 c0bf",
        "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d 54c0 5a04 677a 6970 7738 666f" +
        "6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049 5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b" +
        "2076 6572 7369 6f6e 3d31",
      ],
      RESPONSE_FIELDS,
      RESPONSE_TABLES,
    ),
  ],
  [
    "C.6 responses with Huffman coding, 256-byte table",
    256,
    steps(
      [
        "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 2d1b ff6e 919d 29ad 1718 63c7" +
        "8f0b 97c8 e9ae 82ae 43d3",
        "4883 640e ffc1 c0bf",
        "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab 77ad 94e7 821d d7f2 e6c7 b335" +
        "dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07",
      ],
      RESPONSE_FIELDS,
      RESPONSE_TABLES,
    ),
  ],
];

const example = (section: string) => EXAMPLES.find(([name]) => name.startsWith(section))![2];

Deno.test("HpackDecoder decodes the examples of RFC 7541 Appendix C and keeps the same dynamic table", async (t) => {
  for (const [name, tableSize, examples] of EXAMPLES) {
    await t.step(name, () => {
      const decoder = new HpackDecoder({ maxTableSize: tableSize });
      examples.forEach(({ block, fields, table, size }, i) => {
        assert.deepEqual(decoder.decode(unhex(block)), fields, `block ${i + 1}`);
        const want: TableSnapshot = { size, maxSize: tableSize, entries: table };
        assert.deepEqual(decoder.table, want, `table after block ${i + 1}`);
      });
    });
  }
});

Deno.test("HpackEncoder reproduces RFC 7541 C.4 and C.6.1 exactly, and C.5.2 where Huffman is not shorter", () => {
  const requests = new HpackEncoder();
  REQUEST_FIELDS.forEach((fields, i) =>
    assert.equal(hex(requests.encode(fields)), hex(unhex(example("C.4")[i].block)))
  );
  assert.deepEqual(requests.table.entries, REQUEST_TABLES[2][0]);
  const responses = new HpackEncoder({ maxTableSize: 256 });
  assert.equal(hex(responses.encode(RESPONSE_FIELDS[0])), hex(unhex(example("C.6")[0].block)));
  // "307" is 3 bytes either way, so we send it raw: the C.5.2 block, not C.6.2's.
  assert.equal(hex(responses.encode(RESPONSE_FIELDS[1])), hex(unhex(example("C.5")[1].block)));
  assert.deepEqual(responses.table, { size: 222, maxSize: 256, entries: RESPONSE_TABLES[1][0] });
});

Deno.test("integers follow RFC 7541 C.1: 10 and 1337 on a 5-bit prefix, 42 on an 8-bit boundary", () => {
  // The 5-bit prefix is the one of a dynamic table size update.
  const encoder = new HpackEncoder();
  encoder.setMaxTableSize(10);
  assert.equal(hex(encoder.encode([])), "2a"); // 001 01010
  encoder.setMaxTableSize(1337);
  assert.equal(hex(encoder.encode([])), "3f9a0a"); // 001 11111, 10011010, 00001010
  const decoder = new HpackDecoder({ maxTableSize: 4096 });
  decoder.decode(unhex("3f9a0a"));
  assert.equal(decoder.table.maxSize, 1337);
  decoder.decode(unhex("2a"));
  assert.equal(decoder.table.maxSize, 10);
  // HPACK has no 8-bit prefix; 42 fits a 7-bit string length prefix in one byte the same way.
  assert.deepEqual(new HpackDecoder().decode(unhex("0001" + byteHex("x") + str("y".repeat(42)))), [[
    "x",
    "y".repeat(42),
  ]]);
  assert.equal(str("y".repeat(42)).slice(0, 2), "2a");
});

Deno.test("HpackDecoder refuses malformed blocks with a compression error", async (t) => {
  const cases: [string, string, RegExp][] = [
    ["index 0", "80", /index 0/],
    ["indexed field past the static table", "be", /index 62 is past the 61/],
    ["indexed name past the tables", "7e" + str("v"), /index 62 is past/],
    ["never-indexed name past the tables", int(62, 4, 0x10) + str("v"), /index 62 is past/],
    ["integer of 2^31", int(2 ** 31, 7, 0x80), /larger than 2\^31-1/],
    ["integer of 2^32+126", "ff ffff ffff 0f", /larger than 2\^31-1/],
    ["integer with 6 continuation bytes", "3f 8080 8080 8000", /more than 5 continuation bytes/],
    ["size update after a field", "82 20", /size update after a header field/],
    ["three size updates", "20 20 20 82", /more than two/],
    ["size update past our limit", int(4097, 5, 0x20), /update to 4097 passes our limit of 4096/],
    ["raw string past the end", "40 05 6162", /string of 5 bytes runs past the end/],
    ["value one byte past the end", "00 0161 02 62", /string of 2 bytes runs past the end/],
    ["Huffman string past the end", "00 81 1f 85 00", /string of 5 bytes runs past the end/],
    ["string length of 2^31-1 past the end", "00 01 61" + int(2 ** 31 - 1, 7), /runs past the end/],
    ["block ends after an indexed name", "41", /ends inside a header field/],
    ["block ends before a new name", "40", /ends inside a header field/],
    ["block ends after a new name", "40 0161", /ends inside a header field/],
    ["block ends inside an integer", "3f e1", /ends inside an integer/],
    ["block ends inside a string length", "40 7f", /ends inside an integer/],
    ["Huffman EOS in a name", "00 84 ffff ffff 00", /EOS/],
    ["Huffman padding of 8 bits", "00 81 ff 00", /8 bits of padding/],
    ["Huffman padding of 11 bits", "00 82 1fff 00", /11 bits of padding/],
    ["Huffman padding with a zero", "00 81 1e 00", /not all ones/],
    ["Huffman EOS in a value", "41 84 ffff ffff", /EOS/],
  ];
  for (const [name, block, message] of cases) {
    await t.step(name, () => rejects(new HpackDecoder(), block, "compression", message));
  }
  await t.step("the boundaries just inside the rules decode", () => {
    const decoder = new HpackDecoder();
    // Five continuation bytes (leading zeros are allowed), two size updates, Huffman with 3 bits of padding.
    assert.deepEqual(decoder.decode(unhex("3f 8080 8080 00 3fe11f 00 81 1f 80")), [["a", ""]]);
    assert.equal(decoder.table.maxSize, 4096);
    assert.deepEqual(decoder.decode(unhex(int(4096, 5, 0x20) + int(61, 7, 0x80))), [["www-authenticate", ""]]);
  });
});

Deno.test("HpackDecoder requires a size update after we lower SETTINGS_HEADER_TABLE_SIZE (RFC 7541 §4.2)", () => {
  const decoder = new HpackDecoder();
  decoder.decode(unhex("4001 61" + str("x".repeat(100)))); // 133 bytes in the table
  decoder.setMaxTableSize(100);
  rejects(decoder, "82", "compression", /no dynamic table size update after we lowered/);
  const again = new HpackDecoder();
  again.decode(unhex("4001 61" + str("x".repeat(100))));
  again.setMaxTableSize(100);
  rejects(again, int(101, 5, 0x20) + "82", "compression", /update to 101 passes our limit of 100/);
  const ok = new HpackDecoder();
  ok.decode(unhex("4001 61" + str("x".repeat(100))));
  ok.setMaxTableSize(100);
  assert.deepEqual(ok.decode(unhex(int(100, 5, 0x20) + "82")), [[":method", "GET"]]);
  assert.deepEqual(ok.table, { size: 0, maxSize: 100, entries: [] });
  // Raising the limit needs no update: the peer may go on using the smaller table.
  ok.setMaxTableSize(8192);
  assert.deepEqual(ok.decode(unhex("82")), [[":method", "GET"]]);
});

Deno.test("HpackDecoder evicts oldest first and empties the table for an entry larger than it (§4.4)", () => {
  const decoder = new HpackDecoder({ maxTableSize: 100 });
  decoder.decode(unhex("40" + str("a") + str("1".repeat(30)) + "40" + str("b") + str("2".repeat(30))));
  assert.deepEqual(decoder.table.entries, [["b", "2".repeat(30)]], "a (63 bytes) made way for b (63 bytes)");
  // A literal with an indexed name can name the entry its own insertion evicts (RFC 7541 §4.4).
  assert.deepEqual(decoder.decode(unhex("7e" + str("3".repeat(30)))), [["b", "3".repeat(30)]]);
  assert.deepEqual(decoder.table.entries, [["b", "3".repeat(30)]]);
  assert.deepEqual(decoder.decode(unhex("40" + str("c") + str("4".repeat(68)))), [["c", "4".repeat(68)]]);
  assert.deepEqual(decoder.table, { size: 0, maxSize: 100, entries: [] });
});

Deno.test("HpackDecoder keeps its table in step through a too-large block, then decodes the next one", () => {
  const encoder = new HpackEncoder();
  const decoder = new HpackDecoder({ maxHeaderListSize: 200 });
  const big: HeaderField[] = [["x-one", "1".repeat(100)], ["x-two", "2".repeat(100)], ["x-three", "3"]];
  rejects(decoder, hex(encoder.encode(big)), "too-large", /passes the 200 bytes of SETTINGS_MAX_HEADER_LIST_SIZE/);
  assert.deepEqual(decoder.table, encoder.table, "all three fields were indexed anyway");
  const next = encoder.encode(big.slice(1));
  assert.equal(hex(next), "bfbe", "the next block only references them");
  assert.deepEqual(decoder.decode(next), big.slice(1));
});

Deno.test("HpackDecoder bounds a small block that repeats a large entry (the hpack.js expansion)", () => {
  const decoder = new HpackDecoder();
  decoder.decode(unhex("40" + str("x") + str("y".repeat(4000))));
  // 3 bytes on the wire, 4033 bytes each decoded: 1000 references would be 4 MB without the limit.
  rejects(decoder, "be".repeat(1000), "too-large");
  assert.deepEqual(decoder.decode(unhex("be")), [["x", "y".repeat(4000)]]);
});

Deno.test("HpackDecoder skips a string longer than both limits but still applies its indexing", async (t) => {
  for (const [name, literal] of [["raw", str("v".repeat(300))], ["Huffman", int(225, 7, 0x80) + "00".repeat(225)]]) {
    await t.step(name, () => {
      // 225 bytes of zeros decode to 360 '0' characters.
      const decoder = new HpackDecoder({ maxTableSize: 256, maxHeaderListSize: 200 });
      decoder.decode(unhex("40" + str("a") + str("b")));
      rejects(decoder, "40" + str("big") + literal + "82", "too-large");
      assert.deepEqual(decoder.table, { size: 0, maxSize: 256, entries: [] }, "a 300+ byte entry empties a 256 table");
      rejects(decoder, "be", "compression", /index 62 is past the 61/);
    });
  }
  await t.step("a string over the list limit but within the table is still indexed", () => {
    const decoder = new HpackDecoder({ maxTableSize: 4096, maxHeaderListSize: 200 });
    rejects(decoder, "40" + str("big") + str("v".repeat(300)), "too-large");
    assert.deepEqual(decoder.table.entries, [["big", "v".repeat(300)]]);
  });
});

Deno.test("HpackDecoder's table stays within maxTableSize over many insertions", () => {
  const decoder = new HpackDecoder({ maxTableSize: 4096 });
  for (let i = 0; i < 20_000; i++) {
    const value = String(i).repeat(1 + (i % 7));
    assert.deepEqual(decoder.decode(unhex("40" + str("k") + str(value))), [["k", value]]);
    const { size, entries } = decoder.table;
    assert.ok(size <= 4096 && entries.length <= 4096 / 32, `size ${size} with ${entries.length} entries`);
    if (i % 1000 === 999) assert.deepEqual(decoder.decode(unhex("be")), [["k", value]]);
  }
});

Deno.test("HpackEncoder never indexes sensitive fields and indexes the rest that fit", async (t) => {
  const cases: [HeaderField, string][] = [
    [["authorization", "Bearer abc"], "1f 08"],
    [["proxy-authorization", "Basic Zm9v"], "1f 22"],
    [["set-cookie", "id=1; Secure"], "1f 28"],
    [["cookie", "id=1234567890abcdef"], "1f 11"],
  ];
  for (const [[name, value], prefix] of cases) {
    await t.step(`${name}: never indexed, named from the static table`, () => {
      const encoder = new HpackEncoder();
      const block = hex(encoder.encode([[name, value], [name, value]]));
      assert.ok(block.startsWith(hex(unhex(prefix))), block);
      assert.equal(encoder.table.entries.length, 0);
      assert.deepEqual(new HpackDecoder().decode(unhex(block)), [[name, value], [name, value]]);
    });
  }
  await t.step("a cookie of 20 bytes or more is indexed", () => {
    const encoder = new HpackEncoder();
    const block = hex(encoder.encode([["cookie", "id=1234567890abcdefg"], ["cookie", "id=1234567890abcdefg"]]));
    assert.ok(block.startsWith("60") && block.endsWith("be"), block);
  });
  await t.step("a field over 3/4 of the table is sent without indexing", () => {
    const encoder = new HpackEncoder({ maxTableSize: 256 });
    assert.ok(hex(encoder.encode([["x", "y".repeat(160)]])).startsWith("00"));
    assert.ok(hex(encoder.encode([["x", "y".repeat(150)]])).startsWith("40"));
    assert.equal(encoder.table.entries.length, 1);
  });
  await t.step("a name from the dynamic table is reused for a new value", () => {
    const encoder = new HpackEncoder();
    encoder.encode([["x-trace", "1"]]);
    assert.equal(hex(encoder.encode([["x-trace", "2"]])), "7e0132");
  });
});

Deno.test("HpackEncoder uses Huffman coding only when it is shorter", () => {
  const encoder = new HpackEncoder();
  // "x": 7 bits, 1 byte either way, so raw; "aaaa": 20 bits, 3 bytes coded; "\x00": 13 bits, 2 bytes coded, so raw.
  assert.equal(
    hex(encoder.encode([["x", "aaaa"]])),
    "40017883" + hex(huffmanEncode(Uint8Array.of(0x61, 0x61, 0x61, 0x61))),
  );
  assert.equal(hex(encoder.encode([["y", "\x00"]])), "4001790100");
});

Deno.test("HpackEncoder refuses names and values that are not byte strings, leaving its table untouched", () => {
  const encoder = new HpackEncoder();
  const cases: [HeaderField, RegExp][] = [
    [["X-Upper", "v"], /HTTP\/2 names are lowercase/],
    [["x-Z", "v"], /lowercase/],
    [["x-foo-A", "v"], /lowercase/],
    [["caf\u00e9\u0100", "v"], /char 4 is not a byte/],
    [["ok", "snow \u2603"], /value of header "ok": char 5 is not a byte/],
  ];
  for (const [field, message] of cases) {
    assert.throws(() => encoder.encode([["x-first", "indexed?"], field]), (e: unknown) => {
      assert.ok(e instanceof TypeError, `expected a TypeError, got ${e}`);
      assert.match(e.message, message);
      return true;
    });
  }
  assert.equal(encoder.table.entries.length, 0);
  // Latin-1 letters above 0x7f are bytes like any other, as are the neighbours of A-Z; only A-Z are refused.
  assert.deepEqual(new HpackDecoder().decode(encoder.encode([["@[", ""]])), [["@[", ""]]);
  assert.deepEqual(new HpackDecoder().decode(encoder.encode([["\u00c9t\u00e9", "\u00ff"]])), [[
    "\u00c9t\u00e9",
    "\u00ff",
  ]]);
});

Deno.test("HpackEncoder signals table size changes: the smallest since the last block, then the final", async (t) => {
  const cases: [string, number[], string][] = [
    ["no change", [4096], ""],
    ["above our cap of 4096 changes nothing", [65536], ""],
    ["one decrease", [100], int(100, 5, 0x20)],
    ["down and back up", [100, 65536], int(100, 5, 0x20) + int(4096, 5, 0x20)],
    ["down twice", [1000, 0], int(0, 5, 0x20)],
    ["down, up, down", [0, 3000, 2000], int(0, 5, 0x20) + int(2000, 5, 0x20)],
  ];
  for (const [name, sizes, prefix] of cases) {
    await t.step(name, () => {
      const encoder = new HpackEncoder();
      const decoder = new HpackDecoder();
      decoder.decode(encoder.encode([["x-a", "1"], ["x-b", "2"]]));
      for (const size of sizes) encoder.setMaxTableSize(size);
      for (const size of sizes) decoder.setMaxTableSize(size);
      const block = encoder.encode([[":method", "GET"]]);
      assert.equal(hex(block), hex(unhex(prefix + "82")));
      decoder.decode(block);
      assert.deepEqual(decoder.table, encoder.table);
      assert.equal(hex(encoder.encode([[":method", "GET"]])), "82", "only once");
    });
  }
});

Deno.test("HpackEncoder → HpackDecoder round-trips random lists through table size changes", () => {
  const rand = prng(41);
  for (let connection = 0; connection < 4; connection++) {
    const encoder = new HpackEncoder();
    const decoder = new HpackDecoder({ maxHeaderListSize: 1 << 20 });
    randomLists(100 + connection, 150, true).forEach((fields, i) => {
      if (rand(8) === 0) {
        for (let n = 1 + rand(2); n > 0; n--) {
          const size = [0, 50, 256, 1000, 4096, 10000][rand(6)];
          encoder.setMaxTableSize(size);
          decoder.setMaxTableSize(size);
        }
      }
      const block = encoder.encode(fields);
      assert.deepEqual(decoder.decode(block), fields, `connection ${connection}, list ${i}`);
      assert.deepEqual(decoder.table, encoder.table, `connection ${connection}, table after list ${i}`);
    });
  }
});

// Interop with Debian's python3-hpack, an independent implementation: one python process per direction.
const PYTHON = "/usr/bin/python3";
const IN_CI = Deno.env.get("CI") === "true";
const HAVE_PYTHON_HPACK = await (async () => {
  try {
    return (await new Deno.Command(PYTHON, { args: ["-c", "import hpack"], stdout: "null", stderr: "null" }).output())
      .success;
  } catch {
    return false; // no such file: spawning throws before there is a promise
  }
})();

async function python(script: string, input: unknown): Promise<unknown> {
  if (!HAVE_PYTHON_HPACK) {
    throw new Error(
      `Cannot run the HPACK interop test: ${PYTHON} has no hpack module (apt-get install python3-hpack); ` +
        "CI=true, so it may not be skipped",
    );
  }
  const child = new Deno.Command(PYTHON, { args: ["-c", script], stdin: "piped", stdout: "piped", stderr: "piped" })
    .spawn();
  const writer = child.stdin.getWriter();
  await writer.write(new TextEncoder().encode(JSON.stringify(input)));
  await writer.close();
  const { success, stdout, stderr } = await child.output();
  assert.ok(success, `python3-hpack failed: ${new TextDecoder().decode(stderr)}`);
  return JSON.parse(new TextDecoder().decode(stdout));
}

type PythonConnection = { tableSize: number | null; fields: [string, string, boolean][]; huffman: boolean }[];

const PYTHON_ENCODE = `
import json, sys
from hpack import Encoder
out = []
for connection in json.load(sys.stdin):
    encoder, blocks = Encoder(), []
    for block in connection:
        if block["tableSize"] is not None:
            encoder.header_table_size = block["tableSize"]
        fields = [(bytes.fromhex(n), bytes.fromhex(v), s) for n, v, s in block["fields"]]
        blocks.append(encoder.encode(fields, huffman=block["huffman"]).hex())
    out.append(blocks)
json.dump(out, sys.stdout)
`;

const PYTHON_DECODE = `
import json, sys
from hpack import Decoder, NeverIndexedHeaderTuple
out = []
for connection in json.load(sys.stdin):
    decoder, lists = Decoder(max_header_list_size=1 << 30), []
    for block in connection:
        if block["tableSize"] is not None:
            decoder.max_allowed_table_size = block["tableSize"]
        fields = decoder.decode(bytes.fromhex(block["block"]), raw=True)
        lists.append([[f[0].hex(), f[1].hex(), isinstance(f, NeverIndexedHeaderTuple)] for f in fields])
    out.append(lists)
json.dump(out, sys.stdout)
`;

Deno.test({
  name: "python3-hpack's blocks decode to its header lists with HpackDecoder",
  ignore: !HAVE_PYTHON_HPACK && !IN_CI,
  fn: async () => {
    const rand = prng(7);
    const connections: HeaderField[][][] = [1, 2, 3].map((seed) => randomLists(seed, 120, true));
    const sizes = connections.map((lists) =>
      lists.map(() => rand(10) === 0 ? [0, 64, 256, 1000, 4096, 10000][rand(6)] : null)
    );
    const request: PythonConnection[] = connections.map((lists, c) =>
      lists.map((fields, i) => ({
        tableSize: sizes[c][i],
        fields: fields.map(([n, v]): [string, string, boolean] => [byteHex(n), byteHex(v), rand(10) === 0]),
        huffman: rand(4) !== 0,
      }))
    );
    const blocks = await python(PYTHON_ENCODE, request) as string[][];
    connections.forEach((lists, c) => {
      const decoder = new HpackDecoder({ maxHeaderListSize: 1 << 20 });
      lists.forEach((fields, i) => {
        if (sizes[c][i] !== null) decoder.setMaxTableSize(sizes[c][i]!);
        assert.deepEqual(decoder.decode(unhex(blocks[c][i])), fields, `connection ${c}, block ${i}: ${blocks[c][i]}`);
      });
    });
  },
});

Deno.test({
  name: "HpackEncoder's blocks decode to the same header lists with python3-hpack",
  ignore: !HAVE_PYTHON_HPACK && !IN_CI,
  fn: async () => {
    const rand = prng(8);
    const connections: HeaderField[][][] = [4, 5, 6].map((seed) => randomLists(seed, 120, true));
    const request = connections.map((lists) => {
      const encoder = new HpackEncoder();
      return lists.map((fields) => {
        const tableSize = rand(10) === 0 ? [0, 64, 256, 1000, 4096, 10000][rand(6)] : null;
        if (tableSize !== null) encoder.setMaxTableSize(tableSize);
        return { tableSize, block: hex(encoder.encode(fields)) };
      });
    });
    const decoded = await python(PYTHON_DECODE, request) as [string, string, boolean][][][];
    connections.forEach((lists, c) =>
      lists.forEach((fields, i) => {
        const got = decoded[c][i].map(([n, v, neverIndexed]) => [fromByteHex(n), fromByteHex(v), neverIndexed]);
        assert.deepEqual(got, fields.map((f) => [...f, sensitive(f)]), `connection ${c}, block ${i}`);
      })
    );
  },
});
