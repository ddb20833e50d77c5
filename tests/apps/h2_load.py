"""A bounded HTTP/2 load on python3-h2 (python-hyper's h2, not Skiff's own HTTP/2): the churn test's h2c client.

  h2_load.py HOST PORT SECONDS RATE CONCURRENCY PATH...

Opens one h2c connection (prior knowledge, RFC 9113 §3.3) to HOST:PORT and, for SECONDS, starts RATE GET requests a
second, at most CONCURRENCY at once, cycling through the PATHs; then waits (up to 10 s) for those still open. Each
PATH names the backend that must answer it in its query, `?to=NAME`: a request is ok only when it is answered 200
with `x-served-by: NAME`. A connection that closes, or a GOAWAY, fails every request still open on it, and a new
connection is opened for the rest. Prints one JSON line: sent, ok, failed, wrong (answered 200 by another backend),
statuses (the codes of failed answers), connections (opened), errors (the first few reasons).
"""
import json
import select
import socket
import sys
import time

import h2.config
import h2.connection
import h2.events

host, port = sys.argv[1], int(sys.argv[2])
seconds, rate, concurrency = float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
paths = sys.argv[6:]
result = {"sent": 0, "ok": 0, "failed": 0, "wrong": 0, "statuses": {}, "connections": 0, "errors": []}


def fail(n, why):
    if n == 0:
        return
    result["failed"] += n
    if len(result["errors"]) < 10:
        result["errors"].append(f"{n}: {why}")


def expected(path):
    return path.split("to=", 1)[1].split("&", 1)[0]


def connect():
    s = socket.create_connection((host, port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    c.initiate_connection()
    s.sendall(c.data_to_send())
    result["connections"] += 1
    return s, c


def judge(st):
    if st.get("status") == "200" and st.get("served") == expected(st["path"]):
        result["ok"] += 1
    elif st.get("status") == "200":
        result["wrong"] += 1
        if len(result["errors"]) < 10:
            result["errors"].append(f"{st['path']} answered by {st.get('served')}")
    else:
        code = st.get("status") or "none"
        result["statuses"][code] = result["statuses"].get(code, 0) + 1
        fail(1, f"{st['path']} answered {code}")


sock, conn = connect()
streams = {}
start = time.monotonic()
end = start + seconds
next_send = start
i = 0
while True:
    now = time.monotonic()
    sending = now < end
    if not sending and not streams:
        break
    if now > end + 10:
        fail(len(streams), "no answer within 10 s of the end")
        break
    if next_send < now - 1:
        next_send = now  # fell behind (the concurrency cap): no burst to catch up
    while sending and now >= next_send and len(streams) < concurrency:
        path = paths[i % len(paths)]
        i += 1
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, [(":method", "GET"), (":scheme", "http"), (":authority", host), (":path", path)],
                          end_stream=True)
        streams[sid] = {"path": path}
        result["sent"] += 1
        next_send += 1 / rate
    data = conn.data_to_send()
    try:
        if data:
            sock.sendall(data)
        wait = max(0.0, min(next_send - time.monotonic(), 0.05)) if sending else 0.05
        readable, _, _ = select.select([sock], [], [], wait)
        chunk = sock.recv(65536) if readable else None
        why = "connection closed"
    except OSError as error:
        chunk, why = b"", f"connection failed: {error}"
    if chunk is None:
        continue
    events = [] if chunk == b"" else conn.receive_data(chunk)
    for ev in events:
        if isinstance(ev, h2.events.ResponseReceived):
            headers = dict(ev.headers)
            st = streams.get(ev.stream_id)
            if st is not None:
                st["status"], st["served"] = headers.get(":status"), headers.get("x-served-by")
        elif isinstance(ev, h2.events.DataReceived):
            conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, h2.events.StreamEnded):
            st = streams.pop(ev.stream_id, None)
            if st is not None:
                judge(st)
        elif isinstance(ev, h2.events.StreamReset):
            st = streams.pop(ev.stream_id, None)
            if st is not None:
                fail(1, f"{st['path']} reset with {ev.error_code}")
        elif isinstance(ev, h2.events.ConnectionTerminated):
            chunk, why = b"", f"GOAWAY {ev.error_code}"
    if chunk == b"":
        fail(len(streams), why)
        streams.clear()
        sock.close()
        if time.monotonic() >= end:
            break
        sock, conn = connect()
sock.close()
print(json.dumps(result))
