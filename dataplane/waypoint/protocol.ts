/**
 * Which protocol the waypoint speaks to a backend: the one its Service port declares, as Istio decides it
 * (`pkg/config/protocol` `Parse`, case-insensitively): `http` is HTTP/1.1; `http2`, `grpc`, `grpc-web` and
 * `kubernetes.io/h2c` are HTTP/2 (Istio's `IsHTTP2()`). The control plane fills `appProtocol` from the port's name
 * (`http-web`, `grpc`) when the Service does not set it, as istiod does (`control/build/services.ts`). Anything
 * else, or nothing declared, is what Envoy's sniffed clusters do: the client's own protocol
 * (`USE_DOWNSTREAM_PROTOCOL`).
 *
 * @module
 */

/** The two HTTP versions the waypoint forwards with. */
export type HttpVersion = "http1" | "http2";

/** The HTTP version `appProtocol` names, or undefined when it names none the waypoint picks a version by. */
export function declaredHttpVersion(appProtocol: string | undefined): HttpVersion | undefined {
  switch (appProtocol?.toLowerCase()) {
    case "http":
      return "http1";
    case "http2":
    case "grpc":
    case "grpc-web":
    case "kubernetes.io/h2c":
      return "http2";
    default:
      return undefined;
  }
}

/** The protocol of the request towards a backend whose port declares `appProtocol`, for a `downstream` client. */
export function upstreamHttpVersion(appProtocol: string | undefined, downstream: HttpVersion): HttpVersion {
  return declaredHttpVersion(appProtocol) ?? downstream;
}
