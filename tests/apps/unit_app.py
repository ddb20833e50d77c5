"""A stand-in for a systemd unit's process (tests/host_unit_test.ts): `serve NAME ADDR PORT...` echoes each line
back prefixed with NAME and prints `peer PORT IP` for every connection it accepts; `call IP PORT MESSAGE` connects,
sends MESSAGE, prints the answer and exits 0, or prints `failed: REASON` and exits 1 (2 s timeouts)."""

import selectors
import socket
import sys


def serve(name, addr, ports):
    sel = selectors.DefaultSelector()
    for port in ports:
        s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, int(port)))
        s.listen(64)
        sel.register(s, selectors.EVENT_READ, "listener")
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            if key.data == "listener":
                conn, peer = key.fileobj.accept()
                print(f"peer {key.fileobj.getsockname()[1]} {peer[0]}", flush=True)
                sel.register(conn, selectors.EVENT_READ, "conn")
            else:
                conn = key.fileobj
                try:
                    data = conn.recv(65536)
                except OSError:
                    data = b""
                if data:
                    conn.sendall(name.encode() + b":" + data)
                else:
                    sel.unregister(conn)
                    conn.close()


def call(ip, port, message):
    try:
        s = socket.create_connection((ip, int(port)), timeout=2)
        s.sendall(message.encode())
        answer = s.recv(65536)
        s.close()
        if not answer:
            raise OSError("closed without an answer")
        print(answer.decode(), flush=True)
        return 0
    except OSError as e:
        print(f"failed: {e}", flush=True)
        return 1


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], sys.argv[3], sys.argv[4:])
    else:
        sys.exit(call(sys.argv[2], sys.argv[3], sys.argv[4]))
