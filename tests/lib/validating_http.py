#!/usr/bin/env python3
"""An HTTP origin with validators, for the source cache tests, on loopback.

  validating_http.py DIR LOG PORTFILE

Binds 127.0.0.1 on a free port (written to PORTFILE once listening) and
serves the files of DIR, read again on every request (so a test changes a
source by rewriting its file). Appends one line per request to LOG:

  METHOD PATH STATUS COND BODY_BYTES

COND is "inm" (If-None-Match sent), "ims" (If-Modified-Since sent) or "-".

  /etag/NAME        ETag (a hash of the content) and Last-Modified (the
                    file's mtime); honours If-None-Match, else
                    If-Modified-Since, with 304
  /lm/NAME          Last-Modified only; honours If-Modified-Since
  /plain/NAME       no validator at all
  /slow/NAME?ms=N   as /etag/, after waiting N ms (at most 10 s) before
                    answering: lets several clients ask at once
Anything else, or a missing file: 404.
"""
import email.utils
import hashlib
import http.server
import os
import socketserver
import sys
import threading
import time
import urllib.parse

ROOT, LOG, PORTFILE = sys.argv[1:4]
LOG_LOCK = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _log(self, status, cond, nbytes):
        with LOG_LOCK, open(LOG, "a") as log:
            log.write("%s %s %d %s %d\n" % (self.command, self.path, status, cond, nbytes))

    def _answer(self, status, headers, body):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        if status != 304:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if status != 304 and self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        parts = url.path.split("/")
        inm = self.headers.get("If-None-Match")
        ims = self.headers.get("If-Modified-Since")
        cond = "inm" if inm else "ims" if ims else "-"
        if len(parts) != 3 or parts[1] not in ("etag", "lm", "plain", "slow"):
            self._log(404, cond, 0)
            return self._answer(404, [], b"no such route\n")
        mode, name = parts[1], os.path.basename(urllib.parse.unquote(parts[2]))
        if mode == "slow":
            query = urllib.parse.parse_qs(url.query)
            ms = min(int(query.get("ms", ["500"])[0]), 10000)
            time.sleep(ms / 1000.0)
            mode = "etag"
        path = os.path.join(ROOT, name)
        try:
            with open(path, "rb") as f:
                body = f.read()
            mtime = os.stat(path).st_mtime
        except OSError:
            self._log(404, cond, 0)
            return self._answer(404, [], b"not found\n")
        etag = '"%s"' % hashlib.sha256(body).hexdigest()[:32]
        last_modified = email.utils.formatdate(int(mtime), usegmt=True)
        headers = []
        if mode == "etag":
            headers.append(("ETag", etag))
        if mode in ("etag", "lm"):
            headers.append(("Last-Modified", last_modified))
        fresh = False
        if mode == "etag" and inm is not None:
            fresh = etag in [t.strip() for t in inm.split(",")] or inm.strip() == "*"
        elif mode in ("etag", "lm") and ims is not None:
            try:
                since = email.utils.parsedate_to_datetime(ims).timestamp()
                fresh = int(mtime) <= since
            except (TypeError, ValueError):
                fresh = False
        if fresh:
            self._log(304, cond, 0)
            return self._answer(304, headers, b"")
        self._log(200, cond, len(body))
        self._answer(200, headers, body)


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        # A client that gave up (a cancelled fetch) is no error of ours.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


server = Server(("127.0.0.1", 0), Handler)
with open(PORTFILE + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.rename(PORTFILE + ".tmp", PORTFILE)
server.serve_forever()
