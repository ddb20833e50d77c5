/**
 * Opens a WebSocket to `ws://HOST:PORT/ws`, sends each argument as a message, and prints the answers as one JSON
 * array. Run inside a pod: `deno run --allow-net tests/apps/ws_client.ts HOST PORT MESSAGE...`
 */

const [host, port, ...messages] = Deno.args;
const ws = new WebSocket(`ws://${host}:${port}/ws`);
const answers: string[] = [];
await new Promise<void>((resolve, reject) => {
  ws.onerror = (e) => reject(new Error(`websocket error: ${(e as ErrorEvent).message}`));
  ws.onopen = () => ws.send(messages[0]);
  ws.onmessage = (e) => {
    answers.push(String(e.data));
    if (answers.length === messages.length) resolve();
    else ws.send(messages[answers.length]);
  };
});
ws.close();
console.log(JSON.stringify(answers));
