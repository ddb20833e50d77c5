import assert from "node:assert/strict";
import { queryMessage } from "../../../tests/harness/dns.ts";
import {
  buildAnswer,
  DnsWireError,
  parseQuery,
  parseResponse,
  RCODE,
  readName,
  truncateForUdp,
  TYPE,
  udpLimit,
  withId,
} from "./wire.ts";

const hex = (s: string) => Uint8Array.from(s.replace(/\s+/g, "").match(/../g)!.map((b) => parseInt(b, 16)));

Deno.test("parseQuery() reads a query's id, flags, question and EDNS size", async (t) => {
  const cases: { name: string; message: Uint8Array; want: Record<string, unknown> }[] = [
    {
      name: "a plain A query",
      message: queryMessage("web.shop.svc.cluster.local", TYPE.A, { id: 7 }),
      want: { id: 7, name: "web.shop.svc.cluster.local", type: TYPE.A, class: 1, ednsPayload: undefined },
    },
    {
      name: "case is kept as asked",
      message: queryMessage("WeB.Shop", TYPE.AAAA),
      want: { name: "WeB.Shop", type: TYPE.AAAA },
    },
    {
      name: "an OPT record's payload size",
      message: queryMessage("example.test", TYPE.A, { edns: 4096 }),
      want: { ednsPayload: 4096 },
    },
    {
      name: "an OPT size below 512 counts as 512 (RFC 6891 §6.2.3)",
      message: queryMessage("example.test", TYPE.A, { edns: 100 }),
      want: { ednsPayload: 512 },
    },
    { name: "the root name", message: hex("0001 0100 0001 0000 0000 0000 00 0002 0001"), want: { name: "", type: 2 } },
  ];
  for (const c of cases) {
    await t.step(c.name, () => {
      const q = parseQuery(c.message);
      for (const [k, v] of Object.entries(c.want)) assert.deepEqual(q[k as keyof typeof q], v, k);
      assert.equal(q.recursionDesired, true);
    });
  }
});

Deno.test("parseQuery() refuses malformed messages with a DnsWireError, never a crash", async (t) => {
  const long = Array.from({ length: 5 }, () => "a".repeat(60)).join(".");
  const good = queryMessage("example.test");
  const cases: { name: string; message: Uint8Array; id?: number; error: RegExp }[] = [
    { name: "empty", message: new Uint8Array(0), error: /shorter than a header/ },
    { name: "11 octets", message: good.slice(0, 11), error: /shorter than a header/ },
    { name: "a response (QR set)", message: hex("0009 8100 0001 0000 0000 0000 00 0001 0001"), id: 9, error: /QR/ },
    { name: "no question", message: hex("0009 0100 0000 0000 0000 0000"), id: 9, error: /0 questions/ },
    { name: "two questions", message: hex("0009 0100 0002 0000 0000 0000 00 0001 0001"), id: 9, error: /2 questions/ },
    { name: "answers in a query", message: hex("0009 0100 0001 0001 0000 0000 00 0001 0001"), id: 9, error: /answers/ },
    { name: "question cut short", message: good.slice(0, good.length - 2), id: 0x1234, error: /truncated question/ },
    { name: "label past the end", message: hex("0009 0100 0001 0000 0000 0000 05 6162"), id: 9, error: /past the end/ },
    { name: "no terminating zero", message: hex("0009 0100 0001 0000 0000 0000 01 61"), id: 9, error: /past the end/ },
    { name: "a name over 255 octets", message: queryMessage(long), id: 0x1234, error: /longer than 255/ },
    {
      name: "a pointer to itself (a loop)",
      message: hex("0009 0100 0001 0000 0000 0000 c00c 0001 0001"),
      id: 9,
      error: /point backwards/,
    },
    {
      name: "a pointer forwards",
      message: hex("0009 0100 0001 0000 0000 0000 c010 0001 0001 00"),
      id: 9,
      error: /point backwards/,
    },
    {
      name: "label type 0x40",
      message: hex("0009 0100 0001 0000 0000 0000 41 00 0001 0001"),
      id: 9,
      error: /label type/,
    },
    { name: "trailing octets", message: Uint8Array.from([...good, 0]), id: 0x1234, error: /after the last record/ },
    {
      name: "an additional record cut short",
      message: hex("0009 0100 0001 0000 0000 0001 00 0001 0001 00 0029"),
      id: 9,
      error: /truncated header/,
    },
    {
      name: "two OPT records",
      message: hex("0009 0100 0001 0000 0000 0002 00 0001 0001 00 0029 1000 00000000 0000 00 0029 1000 00000000 0000"),
      id: 9,
      error: /more than one OPT/,
    },
  ];
  for (const c of cases) {
    await t.step(c.name, () => {
      let caught: unknown;
      try {
        parseQuery(c.message);
      } catch (error) {
        caught = error;
      }
      assert.ok(caught instanceof DnsWireError, `expected DnsWireError, got ${caught}`);
      assert.match(caught.message, c.error);
      assert.equal(caught.id, c.id);
    });
  }
  await t.step("every truncation of a valid query is refused or read, never thrown otherwise", () => {
    const q = queryMessage("web.shop.svc.cluster.local", TYPE.A, { edns: 1232 });
    for (let n = 0; n < q.length; n++) {
      try {
        parseQuery(q.slice(0, n));
      } catch (error) {
        assert.ok(error instanceof DnsWireError, `${n} octets: ${error}`);
      }
    }
  });
});

Deno.test("buildAnswer() writes answers a reader gets back", async (t) => {
  const query = parseQuery(queryMessage("Web.shop", TYPE.A, { id: 0xbeef, edns: 1232 }));
  await t.step("A records and a CNAME, AA, RA, RD, the question echoed, an OPT", () => {
    const answer = buildAnswer(query, {
      rcode: RCODE.NOERROR,
      authoritative: true,
      answers: [
        { name: "Web.shop", type: TYPE.CNAME, ttl: 30, target: "web.shop.svc.cluster.local" },
        { name: "web.shop.svc.cluster.local", type: TYPE.A, ttl: 30, address: "10.96.0.1" },
      ],
    });
    assert.equal((answer[0] << 8) | answer[1], 0xbeef);
    assert.equal(answer[2], 0x85, "QR, AA, RD");
    assert.equal(answer[3], 0x80, "RA, NOERROR");
    assert.deepEqual([...answer.subarray(4, 12)], [0, 1, 0, 2, 0, 0, 0, 1]);
    const facts = parseResponse(answer, query.questionBytes);
    assert.deepEqual(facts, { id: 0xbeef, rcode: 0, truncated: false, minTtl: 30 });
    // The A record's data is the last 4 octets before the OPT record (11 octets).
    assert.deepEqual([...answer.subarray(answer.length - 15, answer.length - 11)], [10, 96, 0, 1]);
    const cname = readName(answer, 12 + query.questionBytes.length);
    assert.equal(cname.name, "Web.shop");
  });
  await t.step("FORMERR for a query whose header alone could be read: no question", () => {
    const answer = buildAnswer({ id: 5 }, { rcode: RCODE.FORMERR });
    assert.deepEqual([...answer], [0, 5, 0x80, 0x81, 0, 0, 0, 0, 0, 0, 0, 0]);
  });
  await t.step("an AAAA record is a bug: Skiff never writes one", () => {
    assert.throws(
      () => buildAnswer(query, { rcode: 0, answers: [{ name: "a", type: TYPE.AAAA, ttl: 1, address: "::1" }] }),
      /BUG/,
    );
  });
});

Deno.test("truncateForUdp() keeps what fits and cuts the rest to header + question with TC", async (t) => {
  const plain = parseQuery(queryMessage("big.test"));
  const many = Array.from({ length: 40 }, (_, i) => ({
    name: "big.test",
    type: TYPE.A,
    ttl: 60,
    address: `192.0.2.${i}`,
  } as const));
  const whole = buildAnswer(plain, { rcode: 0, answers: many });
  const cases = [
    { name: "no EDNS: 512", limit: udpLimit(plain), truncated: true },
    {
      name: "EDNS 4096 is capped at 1232, which 40 records fit",
      limit: udpLimit({ ednsPayload: 4096 }),
      truncated: false,
    },
    { name: "EDNS 600", limit: udpLimit({ ednsPayload: 600 }), truncated: true },
  ];
  assert.ok(whole.length > 600 && whole.length < 1232, `${whole.length}`);
  for (const c of cases) {
    await t.step(c.name, () => {
      const out = truncateForUdp(whole, c.limit);
      const facts = parseResponse(out, plain.questionBytes);
      assert.equal(facts.truncated, c.truncated);
      assert.ok(out.length <= c.limit);
      if (c.truncated) assert.deepEqual([...out.subarray(6, 12)], [0, 0, 0, 0, 0, 0]);
    });
  }
});

Deno.test("parseResponse() accepts only the answer to the question asked", async (t) => {
  const asked = parseQuery(queryMessage("example.test"));
  const answer = buildAnswer(asked, {
    rcode: 0,
    answers: [{ name: "example.test", type: TYPE.A, ttl: 9, address: "1.2.3.4" }],
  });
  const other = buildAnswer(parseQuery(queryMessage("other.test")), { rcode: 0 });
  const cases: { name: string; message: Uint8Array; error?: RegExp }[] = [
    { name: "the answer", message: answer },
    {
      name: "the answer with the name in another case (RFC 4343)",
      message: buildAnswer(parseQuery(queryMessage("EXAMPLE.test")), { rcode: 0 }),
    },
    { name: "another question", message: other, error: /another question/ },
    { name: "a query, not a response", message: queryMessage("example.test"), error: /QR/ },
    { name: "cut in its answer", message: answer.slice(0, answer.length - 2), error: /past the end/ },
  ];
  for (const c of cases) {
    await t.step(c.name, () => {
      if (c.error) assert.throws(() => parseResponse(c.message, asked.questionBytes), c.error);
      else parseResponse(c.message, asked.questionBytes);
    });
  }
  await t.step("withId() changes the id only", () => {
    const changed = withId(answer, 0xabcd);
    assert.equal((changed[0] << 8) | changed[1], 0xabcd);
    assert.deepEqual(changed.subarray(2), answer.subarray(2));
  });
});
