"""Waits until the forkpool service at SOCKET reports COUNT idle workers; prints the
milliseconds since SPAWNED_NS (time.time_ns() of the moment `forkpool run` was started).

Usage: wait_ready.py SOCKET COUNT SERVICE_PID SPAWNED_NS

It polls because readiness has no event a client can wait on: first for the socket to
accept and answer `ping`, then `status` until every worker is idle. Polls are 1 ms apart
so the poller does not take the cores the workers boot on.
"""
import json
import os
import socket
import sys
import time

PATIENCE_S = 60
POLL_S = 0.001

path, count, pid, spawned_ns = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])


def ask(op):
    with socket.socket(socket.AF_UNIX) as conn:
        conn.connect(path)
        conn.sendall(json.dumps({"id": 1, "op": op}).encode() + b"\n")
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = conn.recv(65536)
            if not chunk:
                raise ConnectionError("closed without answering")
            answer += chunk
    return json.loads(answer)


def idle_workers():
    status = ask("status")["result"]
    return sum(1 for worker in status["workers"] if worker["state"] == "idle")


pinged = False
while True:
    if time.time_ns() - spawned_ns > PATIENCE_S * 1e9:
        sys.exit(f"wait_ready.py: {count} workers not idle after {PATIENCE_S} s")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit("wait_ready.py: forkpool run exited (see its log)")
    try:
        if not pinged:
            pinged = ask("ping")["ok"]
        if pinged and idle_workers() >= count:
            break
    except (FileNotFoundError, ConnectionError, OSError):
        pass
    time.sleep(POLL_S)
print(round((time.time_ns() - spawned_ns) / 1e6))
