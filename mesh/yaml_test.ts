import assert from "node:assert/strict";
import { LineCounter, parseDocument } from "yaml";
import { lineOfField, pathSegments } from "./yaml.ts";

Deno.test("pathSegments() splits field paths, keys with slashes and dots included", () => {
  assert.deepEqual(pathSegments('workloads[1].services["a/b.c"][0].port'), [
    "workloads",
    1,
    "services",
    "a/b.c",
    0,
    "port",
  ]);
  assert.deepEqual(pathSegments(""), []);
});

Deno.test("lineOfField() finds a field's line, and a missing field's parent", () => {
  const lines = new LineCounter();
  const doc = parseDocument("a:\n  b:\n    - x: 1\n    - x: 2\n      y: {z: 3}\n", { lineCounter: lines });
  assert.equal(lineOfField(doc, lines, "a.b[1].y.z"), 5);
  assert.equal(lineOfField(doc, lines, "a.b[0].x"), 3);
  assert.equal(lineOfField(doc, lines, "a.b[0].missing"), 3);
  assert.equal(lineOfField(doc, lines, ""), 1);
});
