"""A gRPC peer on Debian's python3-grpcio (gRPC's C core), not Skiff's own HTTP/2: the waypoint's interop tests.

  grpcio_peer.py server           listens on 127.0.0.1 (a free port), prints it, serves until stdin closes
  grpcio_peer.py client TARGET    runs every case against TARGET and prints one JSON line per case

Methods (raw bytes, no protoc): /t.T/Unary echoes; /t.T/Fail aborts at once (a trailers-only response) with
NOT_FOUND and trailing metadata; /t.T/Stream sends N messages then OK with trailing metadata; /t.T/StreamFail sends
2 messages then FAILED_PRECONDITION; /t.T/Slow sleeps 2 s before answering (the client cancels it after 300 ms).
"""
import json
import sys
import threading
import time
from concurrent import futures

import grpc

ident = lambda b: b


def unary(req, ctx):
    ctx.set_trailing_metadata((("x-trail", "unary"),))
    return b"echo:" + req


def fail(req, ctx):
    ctx.set_trailing_metadata((("x-trail", "fail"),))
    ctx.abort(grpc.StatusCode.NOT_FOUND, "no such thing")


def stream(req, ctx):
    ctx.set_trailing_metadata((("x-trail", "stream"),))
    for i in range(int(req.decode() or "3")):
        yield b"m%d" % i


def stream_fail(req, ctx):
    yield b"m0"
    yield b"m1"
    ctx.set_trailing_metadata((("x-trail", "stream-fail"),))
    ctx.abort(grpc.StatusCode.FAILED_PRECONDITION, "stopped half way")


def slow(req, ctx):
    time.sleep(2)
    return b"late"


def serve():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary, ident, ident),
        "Fail": grpc.unary_unary_rpc_method_handler(fail, ident, ident),
        "Stream": grpc.unary_stream_rpc_method_handler(stream, ident, ident),
        "StreamFail": grpc.unary_stream_rpc_method_handler(stream_fail, ident, ident),
        "Slow": grpc.unary_unary_rpc_method_handler(slow, ident, ident),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.T", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    sys.stdin.read()
    server.stop(0)


def outcome(call_fn):
    try:
        result = call_fn()
        return result
    except grpc.RpcError as e:
        return {
            "code": e.code().name,
            "details": e.details(),
            "trailers": dict(e.trailing_metadata() or ()),
        }


def client(target):
    with grpc.insecure_channel(target) as ch:
        def unary_case():
            resp, call = ch.unary_unary("/t.T/Unary", ident, ident).with_call(b"hi", timeout=5)
            return {"code": call.code().name, "body": resp.decode(), "trailers": dict(call.trailing_metadata())}

        def fail_case():
            ch.unary_unary("/t.T/Fail", ident, ident)(b"x", timeout=5)
            return {"code": "OK"}

        def stream_case():
            it = ch.unary_stream("/t.T/Stream", ident, ident)(b"3", timeout=5)
            got = [m.decode() for m in it]
            return {"code": it.code().name, "body": got, "trailers": dict(it.trailing_metadata())}

        def stream_fail_case():
            it = ch.unary_stream("/t.T/StreamFail", ident, ident)(b"", timeout=5)
            got = []
            try:
                for m in it:
                    got.append(m.decode())
            except grpc.RpcError as e:
                return {"code": e.code().name, "details": e.details(), "body": got,
                        "trailers": dict(e.trailing_metadata() or ())}
            return {"code": "OK", "body": got}

        def cancel_case():
            # Cancelled by the client, with no deadline the server could answer first (a deadline races the
            # server's own DEADLINE_EXCEEDED, which grpc-timeout hands it).
            future = ch.unary_unary("/t.T/Slow", ident, ident).future(b"x")
            time.sleep(0.3)
            future.cancel()
            try:
                future.result()
            except grpc.FutureCancelledError:
                return {"code": "CANCELLED"}
            return {"code": future.code().name}

        for name, fn in [("unary", unary_case), ("fail", fail_case), ("stream", stream_case),
                         ("stream-fail", stream_fail_case), ("cancel", cancel_case)]:
            print(json.dumps({"case": name, **outcome(fn)}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        serve()
    else:
        client(sys.argv[2])
