"""An HTTP/2 peer on python3-h2 (not Skiff's codec), for the waypoint's protocol tests.

  h2_peer.py server
      HTTP/2 with prior knowledge on 127.0.0.1 (a free port, printed), until stdin closes. Each request is answered
      200 with a JSON description of what arrived (headers, body, request trailers) and the trailers
      `x-checksum: <length>`; a request to /trailers-only is answered with one HEADERS frame carrying END_STREAM.
  h2_peer.py client PORT METHOD PATH [BODY] [TRAILER=VALUE]
      one request (the body, then the trailer section when given); prints one JSON line: status, headers, body,
      trailers, and the frames received on the stream in order ("headers", "headers+end", "data", "data+end",
      "trailers+end", "reset").
"""
import json
import socket
import sys
import threading

import h2.config
import h2.connection
import h2.events


def serve_conn(sock):
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    reqs = {}
    while True:
        data = sock.recv(65536)
        if not data:
            return
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.RequestReceived):
                reqs[ev.stream_id] = {"headers": [[k, v] for k, v in ev.headers], "body": "", "trailers": {}}
                if ev.stream_ended:
                    answer(conn, ev.stream_id, reqs.pop(ev.stream_id))
            elif isinstance(ev, h2.events.DataReceived):
                reqs[ev.stream_id]["body"] += ev.data.decode()
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.TrailersReceived):
                reqs[ev.stream_id]["trailers"] = dict(ev.headers)
            elif isinstance(ev, h2.events.StreamEnded):
                if ev.stream_id in reqs:
                    answer(conn, ev.stream_id, reqs.pop(ev.stream_id))
        sock.sendall(conn.data_to_send())


def answer(conn, sid, req):
    path = dict(req["headers"]).get(":path")
    if path == "/trailers-only":
        conn.send_headers(sid, [(":status", "200"), ("x-only", "yes")], end_stream=True)
        return
    out = json.dumps(req).encode()
    conn.send_headers(sid, [(":status", "200"), ("content-type", "application/json")])
    conn.send_data(sid, out)
    conn.send_headers(sid, [("x-checksum", str(len(out)))], end_stream=True)


def server():
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(16)
    print(lsock.getsockname()[1], flush=True)

    def accept():
        while True:
            s, _ = lsock.accept()
            threading.Thread(target=serve_conn, args=(s,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    sys.stdin.read()


def client(port, method, path, body=None, trailer=None):
    sock = socket.create_connection(("127.0.0.1", int(port)))
    sock.settimeout(5)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    sid = conn.get_next_available_stream_id()
    headers = [(":method", method), (":scheme", "http"), (":path", path), (":authority", "web")]
    conn.send_headers(sid, headers, end_stream=body is None)
    if body is not None:
        conn.send_data(sid, body.encode(), end_stream=trailer is None)
        if trailer is not None:
            k, v = trailer.split("=", 1)
            conn.send_headers(sid, [(k, v)], end_stream=True)
    sock.sendall(conn.data_to_send())
    out = {"status": None, "headers": [], "body": "", "trailers": {}, "frames": []}
    done = False
    while not done:
        data = sock.recv(65536)
        if not data:
            out["frames"].append("eof")
            break
        for ev in conn.receive_data(data):
            if getattr(ev, "stream_id", sid) != sid:
                continue
            if isinstance(ev, h2.events.ResponseReceived):
                out["status"] = dict(ev.headers)[":status"]
                out["headers"] = [[k, v] for k, v in ev.headers if not k.startswith(":")]
                out["frames"].append("headers+end" if ev.stream_ended else "headers")
            elif isinstance(ev, h2.events.DataReceived):
                out["body"] += ev.data.decode()
                conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                out["frames"].append("data+end" if ev.stream_ended else "data")
            elif isinstance(ev, h2.events.TrailersReceived):
                out["trailers"] = dict(ev.headers)
                out["frames"].append("trailers+end")
            elif isinstance(ev, h2.events.StreamReset):
                out["frames"].append("reset")
                done = True
            elif isinstance(ev, h2.events.StreamEnded):
                done = True
        sock.sendall(conn.data_to_send())
    print(json.dumps(out), flush=True)
    sock.close()


if __name__ == "__main__":
    if sys.argv[1] == "server":
        server()
    else:
        client(*sys.argv[2:])
