#!/usr/bin/env python3
"""A TCP relay on 127.0.0.1 that misbehaves once, on purpose.

HTTP mode: forwards each connection to UPSTREAM and cuts the first request
whose request line contains MATCH, once. Logs every connection's first
request line to LOG (with " range=VALUE" appended when it has a Range
header), "CUT " in front of the one cut, and at each connection's end
"RELAYED N" (bytes sent back to the client).

  flaky_proxy.py UPSTREAM_PORT MATCH LOG PORTFILE [MODE]

MODE "upload" (the default) cuts while the request's body is being sent,
after reading part of it. MODE "response:N" sends the request on and cuts
the answer after relaying N bytes of it (status line and headers
included): a download interrupted mid-body.

TCP mode (e.g. between a node and Postgres): relays bytes both ways. The
first client chunk that contains every --match (Python escapes allowed:
'\\x00') arms its connection: the server's next answer on it is swallowed
(the client never hears it), the connection is held open --hold-ms, then
every connection is closed and new ones are refused (accepted and closed
at once) for --down-ms. Once only. Logs what it did to LOG.

  flaky_proxy.py tcp UPSTREAM_PORT LOG PORTFILE --match BYTES [--match ...]
                 [--hold-ms 1000] [--down-ms 5000]
"""
import codecs
import os
import socket
import sys
import threading
import time

if len(sys.argv) > 1 and sys.argv[1] == "tcp":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("mode")
    ap.add_argument("upstream", type=int)
    ap.add_argument("log")
    ap.add_argument("portfile")
    ap.add_argument("--match", action="append", required=True)
    ap.add_argument("--hold-ms", type=int, default=1000)
    ap.add_argument("--down-ms", type=int, default=5000)
    args = ap.parse_args()
    matches = [codecs.escape_decode(m.encode())[0] for m in args.match]
    lock = threading.Lock()
    conns = []  # (client, upstream) of every open connection
    tcp = {"fired": False, "refuse_until": 0.0}

    def log(line):
        with lock, open(args.log, "a") as f:
            f.write("%.3f %s\n" % (time.time(), line))

    def close_all():
        with lock:
            pairs = list(conns)
            conns.clear()
        for pair in pairs:
            for s in pair:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def outage():
        time.sleep(args.hold_ms / 1000)
        with lock:
            tcp["refuse_until"] = time.time() + args.down_ms / 1000
        close_all()
        log("closed every connection; refusing new ones for %d ms" % args.down_ms)

    def relay(src, dst, armed, upward):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if upward:
                    with lock:
                        hit = not tcp["fired"] and all(m in data for m in matches)
                        if hit:
                            tcp["fired"] = True
                            armed["on"] = True
                    if hit:
                        log("matched a client chunk of %d bytes: its answer will be lost" % len(data))
                elif armed["on"]:
                    armed["on"] = False
                    log("swallowed the server's answer (%d bytes)" % len(data))
                    threading.Thread(target=outage, daemon=True).start()
                    continue
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    with open(args.portfile + ".tmp", "w") as f:
        f.write(str(server.getsockname()[1]))
    os.rename(args.portfile + ".tmp", args.portfile)
    while True:
        client, _ = server.accept()
        with lock:
            refusing = time.time() < tcp["refuse_until"]
        if refusing:
            client.close()
            log("refused a connection")
            continue
        try:
            upstream = socket.create_connection(("127.0.0.1", args.upstream))
        except OSError:
            client.close()
            continue
        with lock:
            conns.append((client, upstream))
        armed = {"on": False}
        threading.Thread(target=relay, args=(client, upstream, armed, True), daemon=True).start()
        threading.Thread(target=relay, args=(upstream, client, armed, False), daemon=True).start()

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
