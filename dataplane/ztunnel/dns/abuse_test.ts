/**
 * Hostile clients of the DNS proxy: a pod's app is untrusted, and one pod's abuse must cost neither ztunnel's CPU
 * (shared by every pod on the node) nor another pod's DNS.
 */
import assert from "node:assert/strict";
import net from "node:net";
import { FakeResolver, queryMessage } from "../../../tests/harness/dns.ts";
import { logger } from "../../../mesh/log.ts";
import { MeshState } from "../../../mesh/store.ts";
import { loadSocketSupport } from "../../sockets_linux.ts";
import { MAX_IN_FLIGHT } from "./forwarder.ts";
import { DnsProxy, MAX_TCP_QUEUED } from "./mod.ts";
import { DnsWireError, parseQuery, RCODE } from "./wire.ts";

loadSocketSupport();

const rcode = (answer: Uint8Array) => answer[3] & 0xf;

/**
 * A query for `a` whose first additional record carries, as its data, a chain of `hops` compression pointers each
 * pointing at the one before (the first at the question's root label), followed by `records` records whose owner
 * name is a pointer to the chain's end: every record's name costs `hops` pointer reads.
 */
function pointerChainQuery(hops: number, records: number): Uint8Array {
  const out: number[] = [0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, (records + 1) >> 8, (records + 1) & 0xff];
  out.push(1, 0x61, 0, 0, 1, 0, 1); // question: "a" A IN; its root label is at offset 14
  out.push(0, 0, 99, 0, 1, 0, 0, 0, 0, (hops * 2) >> 8, (hops * 2) & 0xff); // a record of unknown type 99
  let previous = 14;
  for (let i = 0; i < hops; i++) {
    const here = out.length;
    out.push(0xc0 | (previous >> 8), previous & 0xff);
    previous = here;
  }
  for (let i = 0; i < records; i++) out.push(0xc0 | (previous >> 8), previous & 0xff, 0, 99, 0, 1, 0, 0, 0, 0, 0, 0);
  return Uint8Array.from(out);
}

Deno.test("parseQuery() bounds the work one query can cost", async (t) => {
  await t.step("a few pointers and records are well-formed", () => {
    assert.equal(parseQuery(pointerChainQuery(3, 2)).name, "a");
  });
  // Unbounded, 8,000 pointers read by 4,000 records fill 64 KB and cost 32 million reads (87 ms measured).
  await t.step("a name reached through 200 chained pointers is FORMERR", () => {
    assert.throws(
      () => parseQuery(pointerChainQuery(200, 1)),
      (e) => e instanceof DnsWireError && e.id === 0x1234 && /pointers/.test(e.message),
    );
  });
  await t.step("a query with 4,000 additional records is FORMERR before any is read", () => {
    const message = pointerChainQuery(100, 4_000);
    assert.ok(message.length <= 65_535, "fits one TCP DNS message");
    assert.throws(() => parseQuery(message), (e) => e instanceof DnsWireError && /records/.test(e.message));
  });
});

/** Opens a TCP connection to `port`, writes `bytes` in one write, resolves when the proxy closes it. */
function writeAndWaitClose(port: number, bytes: Uint8Array): Promise<void> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: "127.0.0.1", port });
    const timer = setTimeout(() => socket.destroy(new Error("the proxy never closed the connection")), 15_000);
    socket.on("connect", () => socket.write(bytes));
    socket.on("data", () => {});
    socket.on("error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
    socket.on("close", () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

Deno.test("DnsProxy: a TCP client's pipelined frames are taken at most MAX_TCP_QUEUED ahead", async () => {
  const proxy = new DnsProxy({
    state: () => new MeshState(),
    log: logger("dns-abuse-test"),
    upstream: () => ({ servers: [], timeoutMs: 1 }),
  });
  const listeners = await proxy.serve({ host: "127.0.0.1", port: 0 }, "shop");
  try {
    // 20,000 empty frames in one 40 KB write: the first is dropped (no header), which ends the connection.
    await writeAndWaitClose(listeners.tcpPort, new Uint8Array(40_000));
    // Let whatever was queued run out.
    await new Promise((r) => setTimeout(r, 200));
    const handled = proxy.counts.get("dropped") ?? 0;
    assert.ok(handled >= 1, "the first frame was read");
    assert.ok(handled <= MAX_TCP_QUEUED, `${handled} frames handled after the connection was over`);
  } finally {
    listeners.close();
  }
});

/** An upstream on loopback that answers NXDOMAIN at once, except names starting `slow`, which it never answers. */
function partialUpstream() {
  const conn = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
  let received = 0;
  const loop = (async () => {
    for (;;) {
      let got;
      try {
        got = await conn.receive();
      } catch {
        return;
      }
      received++;
      const [query, from] = got;
      if (query[13] === 0x73) continue; // first label starts with "s"
      const reply = query.slice();
      reply[2] |= 0x80; // QR
      reply[3] = (reply[3] & 0xf0) | RCODE.NXDOMAIN;
      await conn.send(reply, from).catch(() => {});
    }
  })();
  return {
    port: (conn.addr as Deno.NetAddr).port,
    get received() {
      return received;
    },
    async [Symbol.asyncDispose]() {
      conn.close();
      await loop;
    },
  };
}

Deno.test("DnsProxy: one pod flooding slow names upstream does not starve another pod's queries", async () => {
  await using upstream = partialUpstream();
  const proxy = new DnsProxy({
    state: () => new MeshState(),
    log: logger("dns-abuse-test"),
    upstream: () => ({ servers: ["127.0.0.1"], port: upstream.port, timeoutMs: 4_000 }),
  });
  const attacker = await proxy.serve({ host: "127.0.0.1", port: 0 }, "attacker");
  const victim = await proxy.serve({ host: "127.0.0.1", port: 0 }, "shop");
  const client = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
  const flood = MAX_IN_FLIGHT + 44;
  try {
    // Each flood query goes upstream (and hangs there) or is refused or dropped at once; sent in batches, each waited
    // for, so that none is lost to a full socket buffer.
    const accounted = () =>
      upstream.received + (proxy.counts.get("servfail") ?? 0) + (proxy.counts.get("dropped") ?? 0);
    for (let sent = 0; sent < flood;) {
      for (const end = Math.min(flood, sent + 32); sent < end; sent++) {
        await client.send(queryMessage(`slow${sent}.test`, 1, { id: sent }), {
          transport: "udp",
          hostname: "127.0.0.1",
          port: attacker.udpPort,
        });
      }
      for (let i = 0; i < 200 && accounted() < sent; i++) await new Promise((r) => setTimeout(r, 10));
      assert.equal(accounted(), sent, "every flood query was taken");
    }
    await client.send(queryMessage("good.test", 1, { id: 0xbeef }), {
      transport: "udp",
      hostname: "127.0.0.1",
      port: victim.udpPort,
    });
    let answer: Uint8Array;
    do [answer] = await client.receive(); while (((answer[0] << 8) | answer[1]) !== 0xbeef);
    assert.equal(
      rcode(answer),
      RCODE.NXDOMAIN,
      `the victim pod's query: rcode ${rcode(answer)}, ${proxy.forwarder.upstreamRequests} upstream queries in flight`,
    );
  } finally {
    client.close();
    attacker.close();
    victim.close();
    // The flood's upstream queries end at their timeout; wait for them so no socket outlives the test.
    const answered = () => ["servfail", "dropped", "forwarded"].reduce((n, k) => n + (proxy.counts.get(k) ?? 0), 0);
    for (let i = 0; i < 200 && answered() < flood + 1; i++) await new Promise((r) => setTimeout(r, 50));
  }
});

Deno.test("DnsProxy: an answer fetched with CD set is not served from the cache to a client without", async () => {
  // A validating resolver (RFC 4035 §3.2.2) returns data that fails DNSSEC validation when CD is set; cached under
  // the same key, one pod's CD=1 query would hand that data to every pod that asked for validated answers.
  await using upstream = FakeResolver.start([{ label: "up", host: "127.0.0.1", port: 0 }], {
    "signed.test": ["192.0.2.9"],
  });
  const proxy = new DnsProxy({
    state: () => new MeshState(),
    log: logger("dns-abuse-test"),
    upstream: () => ({ servers: ["127.0.0.1"], port: upstream.ports.get("up")!, timeoutMs: 2_000 }),
  });
  const unchecked = queryMessage("signed.test", 1, { id: 1 });
  unchecked[3] |= 0x10; // CD
  assert.equal(parseQuery(unchecked).checkingDisabled, true);
  assert.equal(rcode((await proxy.answer(unchecked, "attacker", "udp"))!), RCODE.NOERROR);
  assert.equal(rcode((await proxy.answer(queryMessage("signed.test", 1, { id: 2 }), "shop", "udp"))!), RCODE.NOERROR);
  assert.equal(upstream.at("up").length, 2, "the CD=0 query went upstream, not to the CD=1 answer in the cache");
  assert.equal(rcode((await proxy.answer(queryMessage("signed.test", 1, { id: 3 }), "shop", "udp"))!), RCODE.NOERROR);
  assert.equal(upstream.at("up").length, 2, "and is cached for CD=0 clients");
});

Deno.test("DnsProxy: a cached answer echoes the question as this client asked it (0x20 case)", async () => {
  // Resolvers that randomise the case of the name (draft-vixie-dnsext-dns0x20) check that the answer echoes it.
  await using upstream = FakeResolver.start([{ label: "up", host: "127.0.0.1", port: 0 }], {
    "mixed.test": ["192.0.2.10"],
  });
  const proxy = new DnsProxy({
    state: () => new MeshState(),
    log: logger("dns-abuse-test"),
    upstream: () => ({ servers: ["127.0.0.1"], port: upstream.ports.get("up")!, timeoutMs: 2_000 }),
  });
  for (const name of ["MiXeD.tEsT", "mIxEd.TeSt"]) {
    const query = queryMessage(name);
    const answer = (await proxy.answer(query, "shop", "udp"))!;
    assert.equal(rcode(answer), RCODE.NOERROR);
    const question = parseQuery(query).questionBytes;
    assert.deepEqual(answer.subarray(12, 12 + question.length), question, `the answer to ${name}`);
  }
  assert.equal(upstream.at("up").length, 1, "the second from the cache");
});
