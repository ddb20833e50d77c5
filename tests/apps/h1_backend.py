"""An HTTP/1.1-only backend on Python's http.server (not Skiff's codec), for the waypoint's protocol tests.

Listens on 127.0.0.1 (a free port), prints it, serves until stdin closes. Every request is answered with a JSON
description of what arrived (method, path, version, headers, body, request trailers), in a chunked body followed
by a trailer section `x-checksum: <body length>`.
Expect: 100-continue is answered 100 by http.server itself. `GET /slow...` answers after 1 s with a Content-Length body.
"""
import http.server
import json
import socketserver
import sys
import threading
import time


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def read_body(self):
        trailers = {}
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    break
                body += self.rfile.read(size)
                self.rfile.readline()
            while True:
                line = self.rfile.readline().strip()
                if not line:
                    break
                k, v = line.decode().split(":", 1)
                trailers[k.strip().lower()] = v.strip()
            return body, trailers
        n = int(self.headers.get("content-length", "0"))
        return self.rfile.read(n), trailers

    def answer(self):
        body, trailers = self.read_body()
        if self.path.startswith("/slow"):
            time.sleep(1)
            out = b"slow done"
            self.send_response(200)
            self.send_header("content-length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)
            return
        out = json.dumps({
            "method": self.command,
            "path": self.path,
            "version": self.request_version,
            "headers": [[k.lower(), v] for k, v in self.headers.items()],
            "body": body.decode(),
            "trailers": trailers,
        }).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("transfer-encoding", "chunked")
        self.send_header("trailer", "x-checksum")
        self.end_headers()
        self.wfile.write(b"%x\r\n%s\r\n0\r\nx-checksum: %d\r\n\r\n" % (len(out), out, len(out)))

    do_GET = do_POST = do_PUT = answer


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


if __name__ == "__main__":
    server = Server(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sys.stdin.read()
    server.shutdown()
