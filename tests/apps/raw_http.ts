/**
 * Sends HTTP/1.1 requests exactly as written (request targets curl would normalize, such as `//admin` or
 * `/admin#x`) on one connection and prints each response's status line, one per line. Run inside a pod:
 *
 *     deno run --allow-net tests/apps/raw_http.ts HOST PORT TARGET...
 */

const [host, port, ...targets] = Deno.args;
const conn = await Deno.connect({ hostname: host, port: Number(port) });
const enc = new TextEncoder();
const buf = new Uint8Array(64 * 1024);
let pending = "";
for (const target of targets) {
  await conn.write(enc.encode(`GET ${target} HTTP/1.1\r\nhost: ${host}\r\n\r\n`));
  // Reads one response: its head, then a body of content-length bytes.
  for (;;) {
    const end = pending.indexOf("\r\n\r\n");
    if (end >= 0) {
      const head = pending.slice(0, end);
      const length = Number(/content-length:\s*(\d+)/i.exec(head)?.[1] ?? 0);
      if (pending.length >= end + 4 + length) {
        console.log(head.split("\r\n")[0]);
        pending = pending.slice(end + 4 + length);
        break;
      }
    }
    const n = await conn.read(buf);
    if (n === null) {
      console.log("closed");
      Deno.exit(0);
    }
    pending += new TextDecoder().decode(buf.subarray(0, n));
  }
}
conn.close();
