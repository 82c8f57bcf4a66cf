#!/usr/bin/env python3
"""A webhook receiver for the tests, on 127.0.0.1.

  webhook_receiver.py DIR PORTFILE

POST /fail/N/NAME   answers 500 to the first N requests for NAME, then 200
POST /hang/NAME     never answers (holds the connection for 60 s at most)
POST /ok/NAME       200
Each request is saved as DIR/NAME.N.json (body) and DIR/NAME.N.sig (the
Clipfarm-Signature header), N counting from 1.
"""
import http.server
import os
import socketserver
import sys
import threading
import time

DIR, PORTFILE = sys.argv[1], sys.argv[2]
counts = {}
lock = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        parts = self.path.strip("/").split("/")
        name = parts[-1]
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with lock:
            counts[name] = counts.get(name, 0) + 1
            n = counts[name]
        with open(os.path.join(DIR, "%s.%d.json" % (name, n)), "wb") as f:
            f.write(body)
        with open(os.path.join(DIR, "%s.%d.sig" % (name, n)), "w") as f:
            f.write(self.headers.get("Clipfarm-Signature", ""))
        if parts[0] == "hang":
            time.sleep(60)
            return
        status = 500 if parts[0] == "fail" and n <= int(parts[1]) else 200
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


server = Server(("127.0.0.1", 0), Handler)
with open(PORTFILE + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.rename(PORTFILE + ".tmp", PORTFILE)
server.serve_forever()
