/**
 * Assertions shared by the unit tests.
 *
 * @module
 */

import assert from "node:assert/strict";
import { ValidationError } from "../../mesh/validate.ts";

/**
 * Asserts that `fn` throws a {@link ValidationError} naming `field`, with the message `field: problem`, and,
 * when given, a message matching `message`. Returns the error for further checks.
 */
export function assertInvalid(fn: () => unknown, field: string, message?: RegExp): ValidationError {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof ValidationError, `expected a ValidationError, got ${caught}`);
  assert.equal(caught.field, field, caught.message);
  assert.equal(caught.code, "INVALID");
  assert.equal(caught.message, `${caught.field}: ${caught.problem}`);
  if (message) assert.match(caught.message, message);
  return caught;
}

/**
 * Polls until `fn` gives something truthy, every `intervalMs`; throws naming `what` and the last value or error
 * after `timeoutMs`.
 */
export async function until<T>(
  what: string,
  fn: () => T | undefined | false | Promise<T | undefined | false>,
  timeoutMs = 20_000,
  intervalMs = 200,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
      last = v;
    } catch (error) {
      last = error;
    }
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms (last: ${String(last)})`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}
