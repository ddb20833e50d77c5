/**
 * A test backend: an HTTP/1.1 server (Deno.serve) that names itself in every answer. `GET /headers` answers the
 * request's headers as JSON; `/ws` is a WebSocket that echoes each message after `NAME:`; `/status/CODE` answers that code; `/slow/MS` answers after MS milliseconds; a
 * request with a body answers its length. Run inside a pod's namespace with `ip netns exec`:
 *
 *     deno run --allow-net tests/apps/http_echo.ts NAME PORT
 */

const [name, port] = [Deno.args[0] ?? "echo", Number(Deno.args[1] ?? 8080)];

Deno.serve({ hostname: "0.0.0.0", port, onListen: () => console.log(`listening ${name} ${port}`) }, async (req) => {
  const url = new URL(req.url);
  if (url.pathname === "/ws" && req.headers.get("upgrade") === "websocket") {
    const { socket, response } = Deno.upgradeWebSocket(req);
    socket.onmessage = (e) => socket.send(`${name}:${e.data}`);
    return response;
  }
  if (url.pathname === "/headers") {
    return Response.json({ name, headers: Object.fromEntries(req.headers) });
  }
  const status = /^\/status\/(\d{3})$/.exec(url.pathname);
  if (status) return new Response(`${name} ${status[1]}\n`, { status: Number(status[1]) });
  const slow = /^\/slow\/(\d+)$/.exec(url.pathname);
  if (slow) await new Promise((r) => setTimeout(r, Number(slow[1])));
  if (req.body) {
    let n = 0;
    for await (const chunk of req.body) n += chunk.byteLength;
    return new Response(`${name} ${req.method} ${url.pathname} ${n}\n`);
  }
  return new Response(`${name} ${req.method} ${url.pathname}\n`, { headers: { "x-served-by": name } });
});
