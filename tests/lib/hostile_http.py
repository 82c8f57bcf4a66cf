#!/usr/bin/env python3
"""A small HTTP server for the hostile-client tests, on a loopback address.

  hostile_http.py ADDR DIR LOG PORTFILE

Binds ADDR on a free port (written to PORTFILE once listening), serves
DIR and appends one line per request ("METHOD PATH") to LOG, so a test can
tell whether a request that should never have been sent arrived.

  /files/NAME            the file
  /slow/NAME?bps=N       the file at N bytes per second (Content-Length set)
  /stall/NAME            headers and half the file, then nothing for 60 s
  /nolength/NAME         the file without Content-Length (ends at close)
  /redirect?to=URL       302 to URL
Every request ends by itself: nothing here runs for more than 60 s.
"""
import http.server
import os
import socketserver
import sys
import time
import urllib.parse

ADDR, ROOT, LOG, PORTFILE = sys.argv[1:5]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _file(self, name):
        path = os.path.join(ROOT, os.path.basename(name))
        with open(path, "rb") as f:
            return f.read()

    def do_GET(self):
        with open(LOG, "a") as log:
            log.write("GET %s\n" % self.path)
        url = urllib.parse.urlparse(self.path)
        query = urllib.parse.parse_qs(url.query)
        parts = url.path.strip("/").split("/", 1)
        try:
            if parts[0] == "redirect":
                self.send_response(302)
                self.send_header("Location", query["to"][0])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data = self._file(parts[1])
        except (IndexError, KeyError, OSError):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if parts[0] == "nolength":
            self.send_header("Connection", "close")
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        deadline = time.monotonic() + 60
        try:
            if parts[0] in ("files", "nolength"):
                self.wfile.write(data)
            elif parts[0] == "slow":
                bps = max(1, int(query.get("bps", ["1000"])[0]))
                step = max(1, bps // 10)
                for i in range(0, len(data), step):
                    if time.monotonic() > deadline:
                        break
                    self.wfile.write(data[i:i + step])
                    self.wfile.flush()
                    time.sleep(0.1)
            elif parts[0] == "stall":
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                while time.monotonic() < deadline:
                    time.sleep(0.2)
        except (BrokenPipeError, ConnectionResetError):
            pass


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    address_family = __import__("socket").AF_INET6 if ":" in ADDR else __import__("socket").AF_INET


server = Server((ADDR, 0), Handler)
with open(PORTFILE + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.rename(PORTFILE + ".tmp", PORTFILE)
server.serve_forever()
