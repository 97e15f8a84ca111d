#!/usr/bin/env python3
"""Misbehaving clients for bench/soak.sh, run side by side until DEADLINE
(Unix seconds): slowloris senders, readers that stall on a download, and
clients that reset their connection in the middle of a body.

    misbehave.py HOST:PORT PREVIEW_HOST DEADLINE
"""
import socket, struct, sys, threading, time

ADDR, HOST, DEADLINE = sys.argv[1], sys.argv[2], float(sys.argv[3])
ip, port = ADDR.rsplit(":", 1)
counts = {"slowloris": 0, "stalled": 0, "resets": 0}


def connect():
    s = socket.create_connection((ip, int(port)), timeout=5)
    s.settimeout(None)
    return s


def reset(s):
    # RST instead of FIN: what a client that dies mid-transfer looks like.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def slowloris():
    while time.time() < DEADLINE:
        try:
            s = connect()
            s.sendall(f"GET / HTTP/1.1\r\nHost: {HOST}\r\n".encode())
            counts["slowloris"] += 1
            while time.time() < DEADLINE:
                time.sleep(3)
                s.sendall(b"X-a: b\r\n")  # never the blank line
        except OSError:
            pass  # the proxy closed it: open another


def stalled_reader():
    while time.time() < DEADLINE:
        try:
            s = connect()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(f"GET /download/1073741824 HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
            counts["stalled"] += 1
            time.sleep(20)  # read nothing
            reset(s)
        except OSError:
            time.sleep(1)


def resetter(kind):
    while time.time() < DEADLINE:
        try:
            s = connect()
            if kind == "download":
                s.sendall(f"GET /download/104857600 HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
                s.recv(256 * 1024)
            else:
                s.sendall(f"POST /upload HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 104857600\r\n\r\n".encode())
                s.sendall(b"x" * (1024 * 1024))
            reset(s)
            counts["resets"] += 1
            time.sleep(0.2)
        except OSError:
            time.sleep(0.5)


threads = [threading.Thread(target=slowloris, daemon=True) for _ in range(100)]
threads += [threading.Thread(target=stalled_reader, daemon=True) for _ in range(10)]
threads += [threading.Thread(target=resetter, args=(k,), daemon=True) for k in ("download", "upload") for _ in range(2)]
for t in threads:
    t.start()
while time.time() < DEADLINE:
    time.sleep(1)
print(" ".join(f"{k}={v}" for k, v in counts.items()))
