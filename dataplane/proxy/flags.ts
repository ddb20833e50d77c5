/**
 * Response flags, as both proxies report them in the `response_flags` label and the access log: ztunnel's L4
 * names (upstream `src/proxy.rs` errors as Istio's metrics name them, reference §7) and Envoy's short L7 codes
 * the waypoint uses (Envoy access-log `%RESPONSE_FLAGS%`). One union, so a misspelt flag does not type-check,
 * and one map from a failure to its flag.
 *
 * @module
 */

/** One response flag; `-` for none. */
export type ResponseFlag =
  | "-"
  // ztunnel's L4 flags (and the waypoint's L4 passthrough, which reports as ztunnel does).
  | "CONNECT"
  | "NETWORK_POLICY"
  | "TLS_FAILURE"
  | "IDENTITY_ERROR"
  | "H2_HANDSHAKE_FAILURE"
  | "DENY"
  | "SELF_CALL"
  | "NO_ROUTE"
  | "NO_HEALTHY_UPSTREAM"
  // Envoy's codes: downstream closed, upstream overflow, RBAC denied, no route, downstream protocol error,
  // no healthy upstream, upstream timeout, upstream connection closed, upstream failure, retries exhausted,
  // upstream protocol error.
  | "DC"
  | "UO"
  | "RBAC"
  | "NR"
  | "DPE"
  | "UH"
  | "UT"
  | "UC"
  | "UF"
  | "URX"
  | "UPE";

/** The flags of one request: one flag, or two when retries ran out before a failure (`URX,UF`). */
export type ResponseFlags = ResponseFlag | `${ResponseFlag},${ResponseFlag}`;

/** Istio's response flag for a failure, in one place (reference §7 metrics). */
export function responseFlag(error: unknown): ResponseFlag {
  const code = (error as { code?: string })?.code;
  switch (code) {
    case "TIMEOUT":
      return "NETWORK_POLICY";
    case "TLS":
      return "TLS_FAILURE";
    case "IDENTITY":
      return "IDENTITY_ERROR";
    case "STREAM":
      return "H2_HANDSHAKE_FAILURE";
    case "DENY":
      return "DENY";
    default:
      return "CONNECT";
  }
}
