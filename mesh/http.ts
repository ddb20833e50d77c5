/**
 * Reading request bodies with a ceiling, for the control plane's and the CA's HTTPS endpoints: a body larger
 * than the limit is refused as soon as it is, whether or not it declared its length, so a caller cannot make the
 * server buffer without bound.
 *
 * @module
 */

import { ValidationError } from "./validate.ts";

/**
 * Reads `req`'s body as text, at most `max` bytes.
 * @throws {ValidationError} when it is larger.
 */
export async function readBody(req: Request, max: number): Promise<string> {
  const tooLarge = () => new ValidationError("request", `is larger than ${max} bytes`);
  const declared = Number(req.headers.get("content-length") ?? "0");
  if (declared > max) throw tooLarge();
  if (!req.body) return "";
  const chunks: Uint8Array[] = [];
  let size = 0;
  const reader = req.body.getReader();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > max) {
      await reader.cancel();
      throw tooLarge();
    }
    chunks.push(value);
  }
  const all = new Uint8Array(size);
  let at = 0;
  for (const c of chunks) {
    all.set(c, at);
    at += c.byteLength;
  }
  return new TextDecoder().decode(all);
}
