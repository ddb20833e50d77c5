import assert from "node:assert/strict";
import net from "node:net";
import { FakeResolver, queryMessage } from "../../../tests/harness/dns.ts";
import { logger } from "../../../mesh/log.ts";
import { MeshState } from "../../../mesh/store.ts";
import { loadSocketSupport } from "../../sockets_linux.ts";
import { AnswerCache, parseResolvConf } from "./forwarder.ts";
import { DnsProxy } from "./mod.ts";
import { parseQuery, parseResponse, RCODE, readName, TYPE } from "./wire.ts";

loadSocketSupport();

Deno.test("parseResolvConf() reads nameservers and the timeout as glibc does", async (t) => {
  const cases: { name: string; text: string; servers: string[]; timeoutMs: number }[] = [
    { name: "empty", text: "", servers: [], timeoutMs: 5000 },
    {
      name: "servers in order, comments and search ignored",
      text: "# generated\nsearch corp.example\nnameserver 10.0.0.2 ; primary\nnameserver 10.0.0.3\n",
      servers: ["10.0.0.2", "10.0.0.3"],
      timeoutMs: 5000,
    },
    {
      name: "at most three (MAXNS)",
      text: "nameserver 1.1.1.1\nnameserver 1.1.1.2\nnameserver 1.1.1.3\nnameserver 1.1.1.4\n",
      servers: ["1.1.1.1", "1.1.1.2", "1.1.1.3"],
      timeoutMs: 5000,
    },
    {
      name: "IPv6 servers skipped (ztunnel forwards over IPv4)",
      text: "nameserver fd00::1\nnameserver 10.0.0.2",
      servers: ["10.0.0.2"],
      timeoutMs: 5000,
    },
    { name: "options timeout:2", text: "options ndots:5 timeout:2\n", servers: [], timeoutMs: 2000 },
    { name: "timeout clamped to 30 s", text: "options timeout:999", servers: [], timeoutMs: 30000 },
  ];
  for (const c of cases) {
    await t.step(
      c.name,
      () => assert.deepEqual(parseResolvConf(c.text), { servers: c.servers, timeoutMs: c.timeoutMs }),
    );
  }
});

Deno.test("AnswerCache is bounded, least recently used first out, and honours TTLs", async (t) => {
  let now = 0;
  const cache = new AnswerCache(3, () => now);
  const r = (n: number) => Uint8Array.of(n);
  await t.step("never more than its bound", () => {
    for (let i = 0; i < 10; i++) cache.set(`k${i}`, r(i), 60);
    assert.equal(cache.size, 3);
    assert.equal(cache.get("k0"), undefined);
    assert.deepEqual(cache.get("k9"), r(9));
  });
  await t.step("a read keeps an entry; the least recently used goes", () => {
    cache.get("k7");
    cache.set("k10", r(10), 60);
    assert.equal(cache.get("k8"), undefined, "k8 was the least recently used");
    assert.deepEqual(cache.get("k7"), r(7));
  });
  await t.step("an expired entry is gone; TTL 0 is never kept; TTLs cap at 300 s", () => {
    cache.set("short", r(1), 1);
    cache.set("zero", r(2), 0);
    cache.set("long", r(3), 86_400);
    now += 1_000;
    assert.equal(cache.get("short"), undefined);
    assert.equal(cache.get("zero"), undefined);
    assert.deepEqual(cache.get("long"), r(3));
    now += 300_000;
    assert.equal(cache.get("long"), undefined);
  });
});

function meshState(): MeshState {
  const s = new MeshState();
  s.services.upsert({
    name: "web",
    namespace: "shop",
    hostname: "web.shop.svc.cluster.local",
    addresses: [{ network: "", address: "10.96.0.10" }],
    ports: [{ port: 80, targetPort: 8080 }],
    subjectAltNames: [],
  });
  return s;
}

async function udpAsk(port: number, message: Uint8Array): Promise<Uint8Array> {
  const conn = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
  try {
    await conn.send(message, { transport: "udp", hostname: "127.0.0.1", port });
    const timer = setTimeout(() => conn.close(), 5000);
    try {
      return (await conn.receive())[0];
    } finally {
      clearTimeout(timer);
    }
  } finally {
    try {
      conn.close();
    } catch { /* closed by the timer */ }
  }
}

/** Sends `messages` framed in one write on one TCP connection; returns the `count` answers read. */
function tcpAsk(port: number, messages: Uint8Array[], count = messages.length): Promise<Uint8Array[]> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: "127.0.0.1", port });
    let buf = new Uint8Array(0);
    const answers: Uint8Array[] = [];
    const timer = setTimeout(() => socket.destroy(new Error("tcpAsk: timed out")), 5000);
    socket.on("error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
    socket.on("connect", () => {
      const parts = messages.flatMap((m) => [Uint8Array.of(m.length >> 8, m.length & 0xff), m]);
      socket.write(Uint8Array.from(parts.flatMap((p) => [...p])));
    });
    socket.on("data", (chunk: Uint8Array) => {
      buf = Uint8Array.from([...buf, ...chunk]);
      while (buf.length >= 2 && buf.length >= 2 + ((buf[0] << 8) | buf[1])) {
        const n = (buf[0] << 8) | buf[1];
        answers.push(buf.slice(2, 2 + n));
        buf = buf.slice(2 + n);
      }
      if (answers.length >= count) {
        clearTimeout(timer);
        socket.destroy();
        resolve(answers);
      }
    });
  });
}

/** The A addresses in an answer (after its question), in order. */
function addresses(answer: Uint8Array): string[] {
  const count = (answer[6] << 8) | answer[7];
  let pos = readName(answer, 12).next + 4;
  const out: string[] = [];
  for (let i = 0; i < count; i++) {
    pos = readName(answer, pos).next;
    const type = (answer[pos] << 8) | answer[pos + 1];
    const len = (answer[pos + 8] << 8) | answer[pos + 9];
    if (type === TYPE.A) out.push([...answer.subarray(pos + 10, pos + 14)].join("."));
    pos += 10 + len;
  }
  return out;
}

const rcode = (answer: Uint8Array) => answer[3] & 0xf;
const flagsOf = (answer: Uint8Array) => ({ aa: (answer[2] & 0x04) !== 0, tc: (answer[2] & 0x02) !== 0 });

Deno.test("DnsProxy on loopback: mesh answers, forwarding with a cache, TCP framing, truncation, refusals", async (t) => {
  const big = Array.from({ length: 60 }, (_, i) => `192.0.2.${i + 1}`);
  await using upstream = FakeResolver.start([{ label: "up", host: "127.0.0.1", port: 0 }], {
    "example.test": ["192.0.2.7"],
    "big.test": big,
  });
  const upstreamPort = upstream.ports.get("up")!;
  const proxy = new DnsProxy({
    state: meshState,
    log: logger("dns-test"),
    upstream: () => ({ servers: ["127.0.0.1"], port: upstreamPort, timeoutMs: 2000 }),
  });
  const listeners = await proxy.serve({ host: "127.0.0.1", port: 0 }, "shop");
  try {
    await t.step("UDP: a mesh name (short form) is answered from the model, authoritative", async () => {
      const answer = await udpAsk(listeners.udpPort, queryMessage("web", TYPE.A, { id: 11 }));
      assert.equal((answer[0] << 8) | answer[1], 11);
      assert.equal(rcode(answer), RCODE.NOERROR);
      assert.deepEqual(addresses(answer), ["10.96.0.10"]);
      assert.equal(flagsOf(answer).aa, true);
      assert.equal(upstream.seen.length, 0, "a mesh name never goes upstream");
    });
    await t.step("UDP: AAAA for a mesh name is an empty NOERROR", async () => {
      const answer = await udpAsk(listeners.udpPort, queryMessage("web.shop.svc.cluster.local", TYPE.AAAA));
      assert.equal(rcode(answer), RCODE.NOERROR);
      assert.equal((answer[6] << 8) | answer[7], 0);
    });
    await t.step("UDP: another name is forwarded, then served from the cache", async () => {
      for (const id of [21, 22]) {
        const answer = await udpAsk(listeners.udpPort, queryMessage("example.test", TYPE.A, { id }));
        assert.equal((answer[0] << 8) | answer[1], id, "the client's own id, whatever was sent upstream");
        assert.deepEqual(addresses(answer), ["192.0.2.7"]);
      }
      assert.equal(upstream.at("up").filter((q) => q.name === "example.test").length, 1, "the second from the cache");
    });
    await t.step("UDP: NXDOMAIN passes through", async () => {
      const answer = await udpAsk(listeners.udpPort, queryMessage("nope.test"));
      assert.equal(rcode(answer), RCODE.NXDOMAIN);
    });
    await t.step("UDP: an answer over 512 octets is truncated; TCP carries it whole", async () => {
      const udp = await udpAsk(listeners.udpPort, queryMessage("big.test"));
      assert.equal(flagsOf(udp).tc, true);
      assert.deepEqual(addresses(udp), []);
      const [tcp] = await tcpAsk(listeners.tcpPort, [queryMessage("big.test")]);
      assert.equal(flagsOf(tcp).tc, false);
      assert.deepEqual(addresses(tcp), big);
    });
    await t.step("TCP: two queries in one write are answered in order on one connection", async () => {
      const answers = await tcpAsk(listeners.tcpPort, [
        queryMessage("web.shop", TYPE.A, { id: 1 }),
        queryMessage("example.test", TYPE.A, { id: 2 }),
      ]);
      assert.deepEqual(answers.map((a) => (a[0] << 8) | a[1]), [1, 2]);
      assert.deepEqual(answers.map(addresses), [["10.96.0.10"], ["192.0.2.7"]]);
    });
    await t.step("malformed: FORMERR when the header is whole, dropped when not; serving goes on", async () => {
      const formerr = Uint8Array.of(0, 77, 1, 0, 0, 2, 0, 0, 0, 0, 0, 0);
      const answer = await udpAsk(listeners.udpPort, formerr);
      assert.equal((answer[0] << 8) | answer[1], 77);
      assert.equal(rcode(answer), RCODE.FORMERR);
      const [tcpFormerr, next] = await tcpAsk(listeners.tcpPort, [formerr, queryMessage("web", TYPE.A, { id: 78 })]);
      assert.equal(rcode(tcpFormerr), RCODE.FORMERR);
      assert.deepEqual(addresses(next), ["10.96.0.10"]);
      assert.equal(await proxy.answer(Uint8Array.of(1, 2, 3), "shop", "udp"), undefined, "no header: dropped");
      const dropped = proxy.counts.get("dropped") ?? 0;
      // A runt on the wire is dropped, and the query after it on the same socket is answered.
      const conn = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
      try {
        const to = { transport: "udp" as const, hostname: "127.0.0.1", port: listeners.udpPort };
        await conn.send(Uint8Array.of(1, 2, 3), to);
        await conn.send(queryMessage("web", TYPE.A, { id: 79 }), to);
        const [reply] = await conn.receive();
        assert.equal((reply[0] << 8) | reply[1], 79);
      } finally {
        conn.close();
      }
      assert.equal(proxy.counts.get("dropped"), dropped + 1);
    });
    await t.step("an opcode other than QUERY: NOTIMP", async () => {
      const q = queryMessage("web");
      q[2] |= 2 << 3; // opcode 2 (STATUS)
      const answer = await udpAsk(listeners.udpPort, q);
      assert.equal(rcode(answer), RCODE.NOTIMP);
    });
  } finally {
    listeners.close();
  }
});

Deno.test("DnsProxy: no upstream answering is SERVFAIL, never a hang or a crash", async () => {
  // A port with nothing on it: take one, then free it.
  const probe = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
  const dead = (probe.addr as Deno.NetAddr).port;
  probe.close();
  const proxy = new DnsProxy({
    state: meshState,
    log: logger("dns-test"),
    upstream: () => ({ servers: ["127.0.0.1"], port: dead, timeoutMs: 1000 }),
  });
  for (const transport of ["udp", "tcp"] as const) {
    const answer = await proxy.answer(queryMessage("example.test"), "shop", transport);
    assert.ok(answer);
    assert.equal(rcode(answer), RCODE.SERVFAIL, transport);
    parseResponse(answer, parseQuery(queryMessage("example.test")).questionBytes);
  }
  const none = new DnsProxy({
    state: meshState,
    log: logger("dns-test"),
    upstream: () => ({ servers: [], timeoutMs: 1 }),
  });
  assert.equal(rcode((await none.answer(queryMessage("example.test"), "shop", "udp"))!), RCODE.SERVFAIL);
  assert.equal(proxy.forwarder.cache.size, 0, "failures are not cached");
});
