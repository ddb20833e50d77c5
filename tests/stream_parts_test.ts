/**
 * The snapshot in parts through a real control plane (config_stream.ts): a client of today asks for parts and
 * holds the whole mesh once the last has come; a client that does not ask (one older than the parts) still gets
 * one line; and the control plane says how many parts it sent.
 */
import assert from "node:assert/strict";
import pino from "pino";
import { ClientConfig, ControlConnection, runConfigClient } from "../mesh/control_client.ts";
import { decodeStreamMessage, STREAM_PATH } from "../mesh/protocol/config_stream.ts";
import { ControlProcess } from "./harness/control.ts";

const PODS = 2_500;

function manifests(): Record<string, string> {
  const docs = [
    "apiVersion: v1\nkind: Namespace\nmetadata: { name: big, labels: { istio.io/dataplane-mode: ambient } }",
  ];
  for (let i = 0; i < PODS; i++) {
    docs.push(`apiVersion: v1
kind: Pod
metadata: { name: pod-${i}, namespace: big }
spec: { nodeName: node-a, containers: [{ name: app }] }
status: { podIP: 10.40.${Math.floor(i / 256)}.${i % 256}, phase: Running }`);
  }
  return { "big.yaml": docs.join("\n---\n") };
}

Deno.test("a 2,500-workload snapshot comes in 3 parts to a client that asks, in one line to one that does not", async () => {
  await using control = await ControlProcess.start(manifests());
  await control.process.waitForLog((l) => l.msg === "pushed", 60_000);
  const token = await control.addNode("node-a");
  const endpoint = { url: control.url, tokenFile: token, caFile: token.replace(/token$/, "root-cert.pem") };

  const config = new ClientConfig(pino({ level: "silent" }));
  const controller = new AbortController();
  const applied: number[] = [];
  const run = runConfigClient({
    connection: new ControlConnection(endpoint),
    config,
    log: pino({ level: "silent" }),
    signal: controller.signal,
    onChange: (c) => applied.push(c.updated),
  });
  try {
    const subscribed = await control.process.waitForLog((l) => l.msg === "client subscribed", 20_000);
    assert.equal(subscribed.parts, 3);
    const deadline = Date.now() + 20_000;
    while (applied.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(applied, [PODS], "the three parts were applied as one snapshot");
    assert.equal(config.state.workloads.size, PODS);
  } finally {
    controller.abort();
    await run;
  }

  // As a client from before the parts: no header, one line holding everything.
  const old = new ControlConnection(endpoint);
  try {
    const response = await old.request("POST", STREAM_PATH, { known: {} });
    const reader = response.body!.pipeThrough(new TextDecoderStream()).getReader();
    let text = "";
    while (!text.includes("\n")) {
      const { value, done } = await reader.read();
      if (done) break;
      text += value;
    }
    await reader.cancel();
    const first = decodeStreamMessage(text.slice(0, text.indexOf("\n")));
    assert.equal(first.type, "snapshot");
    assert.equal(first.type === "snapshot" && first.resources.length, PODS);
    assert.equal(first.type === "snapshot" && first.more, undefined);
  } finally {
    old.close();
  }
});
