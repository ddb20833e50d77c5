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
