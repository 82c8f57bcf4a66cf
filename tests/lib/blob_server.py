#!/usr/bin/env python3
"""A stand-in for a peer's blob route (GET /internal/v1/blobs/HASH) that
misbehaves on purpose, for the puller's tests (tests/integration/
test_blob_pull.c). Logs each request line to LOG, with " range=VALUE"
appended when it has a Range header.

  blob_server.py MODE LOG PORTFILE

MODE:
  wrong:N            200 with N bytes that are not the blob asked for
  status:CODE        CODE with a JSON error body, every time
  whole-cut:FILE:N   FILE whole (200, ignoring any Range); the first answer
                     is cut after N body bytes
  stall:N            200 announcing 2N bytes, sends N, then nothing more
"""
import http.server
import json
import os
import sys
import threading
import time

MODE, LOG, PORTFILE = sys.argv[1], sys.argv[2], sys.argv[3]
lock = threading.Lock()
state = {"answers": 0}


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        rng = self.headers.get("Range")
        with lock:
            with open(LOG, "a") as f:
                f.write(self.requestline + (f" range={rng}" if rng else "") + "\n")
            state["answers"] += 1
            first = state["answers"] == 1
        kind, _, arg = MODE.partition(":")
        if kind == "wrong":
            body = b"x" * int(arg)
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif kind == "status":
            body = json.dumps({"error": {"code": "test", "message": "status " + arg,
                                         "field": None}}).encode()
            self.send_response(int(arg))
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif kind == "whole-cut":
            path, _, cut = arg.rpartition(":")
            with open(path, "rb") as f:
                body = f.read()
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if first:
                self.wfile.write(body[: int(cut)])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return
            self.wfile.write(body)
        elif kind == "stall":
            n = int(arg)
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(2 * n))
            self.end_headers()
            self.wfile.write(b"s" * n)
            self.wfile.flush()
            time.sleep(120)
            self.close_connection = True


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
with open(PORTFILE + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.rename(PORTFILE + ".tmp", PORTFILE)
server.serve_forever()
