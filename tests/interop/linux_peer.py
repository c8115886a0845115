#!/usr/bin/env python3
"""A Linux-kernel TCP peer for interop tests with the dataplane.

Run inside a test network namespace. Two modes:

  client HOST PORT BYTES   connect, send BYTES of a deterministic pattern
                           while reading the echo, verify every echoed byte,
                           then close in order (shutdown(SHUT_WR), wait for
                           the peer's FIN). Prints a JSON summary.
  server HOST PORT         accept one connection, echo every byte until the
                           peer closes, then close in order. Prints a JSON
                           summary.

Exit status 0 on success, 1 on any verification or protocol failure.
"""

import json
import selectors
import socket
import sys
import time

CHUNK = 65536
TIMEOUT = 60.0


def pattern_byte_block(offset, length):
    """Bytes [offset, offset+length) of the pattern: byte i is (i*7 + i//251) mod 256."""
    return bytes(((i * 7) + (i // 251)) & 0xFF for i in range(offset, offset + length))


def run_client(host, port, total):
    sock = socket.create_connection((host, port), timeout=TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
    sent = 0
    received = 0
    pending = b""
    write_closed = False
    peer_closed = False
    deadline = time.monotonic() + TIMEOUT
    while not peer_closed:
        if time.monotonic() > deadline:
            raise SystemExit(fail("timeout", sent=sent, received=received))
        for _key, mask in sel.select(timeout=1.0):
            if mask & selectors.EVENT_WRITE and not write_closed:
                if not pending and sent < total:
                    pending = pattern_byte_block(sent, min(CHUNK, total - sent))
                if pending:
                    try:
                        n = sock.send(pending)
                    except BlockingIOError:
                        n = 0
                    sent += n
                    pending = pending[n:]
                if sent == total and not pending:
                    sock.shutdown(socket.SHUT_WR)
                    write_closed = True
                    sel.modify(sock, selectors.EVENT_READ)
            if mask & selectors.EVENT_READ:
                try:
                    data = sock.recv(CHUNK)
                except BlockingIOError:
                    continue
                if not data:
                    peer_closed = True
                    break
                want = pattern_byte_block(received, len(data))
                if data != want:
                    bad = next(i for i, (a, b) in enumerate(zip(data, want)) if a != b)
                    raise SystemExit(fail("corrupt echo", at=received + bad))
                received += len(data)
                if received > total:
                    raise SystemExit(fail("echo longer than sent", received=received))
    sock.close()
    if received != total:
        raise SystemExit(fail("echo short", sent=sent, received=received))
    print(json.dumps({"ok": True, "mode": "client", "sent": sent, "received": received}))


def run_server(host, port):
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((host, port))
    lsock.listen(8)
    lsock.settimeout(TIMEOUT)
    print(json.dumps({"listening": port}), flush=True)
    conn, peer = lsock.accept()
    conn.settimeout(TIMEOUT)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    echoed = 0
    while True:
        data = conn.recv(CHUNK)
        if not data:
            break
        conn.sendall(data)
        echoed += len(data)
    conn.shutdown(socket.SHUT_WR)
    conn.close()
    lsock.close()
    print(json.dumps({"ok": True, "mode": "server", "peer": peer[0], "echoed": echoed}))


def fail(why, **kw):
    print(json.dumps({"ok": False, "error": why, **kw}), flush=True)
    return 1


def main(argv):
    if len(argv) >= 5 and argv[1] == "client":
        run_client(argv[2], int(argv[3]), int(argv[4]))
    elif len(argv) >= 4 and argv[1] == "server":
        run_server(argv[2], int(argv[3]))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
