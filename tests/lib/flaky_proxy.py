#!/usr/bin/env python3
"""A TCP relay for the S3 tests: forwards each connection to UPSTREAM, and
cuts the first request whose request line contains MATCH (after reading
part of its body), once. Logs every request line to LOG.

  flaky_proxy.py UPSTREAM_PORT MATCH LOG PORTFILE
"""
import os
import socket
import sys
import threading

UP, MATCH, LOG, PORTFILE = int(sys.argv[1]), sys.argv[2].encode(), sys.argv[3], sys.argv[4]
lock = threading.Lock()
state = {"cut": False}


def pipe(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def handle(client):
    client.settimeout(30)
    head = b""
    try:
        while b"\r\n\r\n" not in head and len(head) < 65536:
            data = client.recv(65536)
            if not data:
                client.close()
                return
            head += data
    except OSError:
        client.close()
        return
    line = head.split(b"\r\n", 1)[0]
    with lock:
        cut = MATCH in line and not state["cut"]
        if cut:
            state["cut"] = True
        with open(LOG, "a") as log:
            log.write(("CUT " if cut else "") + line.decode("latin-1") + "\n")
    if cut:
        # Read a little of the body, then drop the connection mid-upload.
        try:
            client.recv(16384)
        except OSError:
            pass
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        client.close()
        return
    upstream = socket.create_connection(("127.0.0.1", UP))
    upstream.sendall(head)
    client.settimeout(None)
    threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()
    pipe(client, upstream)


server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", 0))
server.listen(64)
with open(PORTFILE + ".tmp", "w") as f:
    f.write(str(server.getsockname()[1]))
os.rename(PORTFILE + ".tmp", PORTFILE)
while True:
    conn, _ = server.accept()
    threading.Thread(target=handle, args=(conn,), daemon=True).start()
