#!/usr/bin/env python3
"""A TCP relay for the tests: forwards each connection to UPSTREAM and cuts
the first request whose request line contains MATCH, once. Logs every
connection's first request line to LOG (with " range=VALUE" appended when
it has a Range header), "CUT " in front of the one cut, and at each
connection's end "RELAYED N" (bytes sent back to the client).

  flaky_proxy.py UPSTREAM_PORT MATCH LOG PORTFILE [MODE]

MODE "upload" (the default) cuts while the request's body is being sent,
after reading part of it. MODE "response:N" sends the request on and cuts
the answer after relaying N bytes of it (status line and headers
included): a download interrupted mid-body.
"""
import os
import socket
import sys
import threading

UP, MATCH, LOG, PORTFILE = int(sys.argv[1]), sys.argv[2].encode(), sys.argv[3], sys.argv[4]
MODE = sys.argv[5] if len(sys.argv) > 5 else "upload"
CUT_RESPONSE_AT = int(MODE.split(":", 1)[1]) if MODE.startswith("response:") else None
lock = threading.Lock()
state = {"cut": False}


def log(text):
    with lock:
        with open(LOG, "a") as f:
            f.write(text + "\n")


def reset(sock):
    """Closes with RST, as a crashed peer or a broken path would."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    except OSError:
        pass
    sock.close()


def pipe(src, dst, counter=None, limit=None):
    """Copies SRC to DST; with LIMIT, stops after that many bytes and
    returns True (the caller then cuts)."""
    try:
        while True:
            want = 65536 if limit is None else min(65536, limit - counter[0])
            if want <= 0:
                return True
            data = src.recv(want)
            if not data:
                break
            dst.sendall(data)
            if counter is not None:
                counter[0] += len(data)
    except OSError:
        pass
    finally:
        if limit is None:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
    return False


def range_of(head):
    for line in head.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"range":
            return value.strip().decode("latin-1")
    return None


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
    rng = range_of(head)
    log(("CUT " if cut else "") + line.decode("latin-1") + (f" range={rng}" if rng else ""))
    if cut and CUT_RESPONSE_AT is None:
        # Read a little of the body, then drop the connection mid-upload.
        try:
            client.recv(16384)
        except OSError:
            pass
        reset(client)
        return
    upstream = socket.create_connection(("127.0.0.1", UP))
    upstream.sendall(head)
    client.settimeout(None)
    relayed = [0]
    if cut:
        # The answer up to CUT_RESPONSE_AT bytes, then both sides reset.
        threading.Thread(target=pipe, args=(client, upstream), daemon=True).start()
        pipe(upstream, client, relayed, CUT_RESPONSE_AT)
        reset(client)
        reset(upstream)
        log(f"RELAYED {relayed[0]}")
        return
    back = threading.Thread(target=pipe, args=(upstream, client, relayed), daemon=True)
    back.start()
    pipe(client, upstream)
    back.join(timeout=30)
    log(f"RELAYED {relayed[0]}")


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
