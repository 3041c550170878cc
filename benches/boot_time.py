"""Starts `forkpool run` the way systemd does (NOTIFY_SOCKET set) and prints the milliseconds
from the spawn to its READY=1, which the master sends once every worker is serving; then
stops it with SIGTERM and waits for its exit.

Usage: boot_time.py FORKPOOL CONFIG

READY=1 is the service's own event for "all workers up": no polling, and no client
connection that could wake the master early.
"""
import os
import socket
import subprocess
import sys
import tempfile
import time

PATIENCE_S = 60

forkpool, config = sys.argv[1], sys.argv[2]
with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(path)
    listener.settimeout(PATIENCE_S)
    env = dict(os.environ, NOTIFY_SOCKET=path, RUST_LOG="warn")
    started = time.monotonic_ns()
    service = subprocess.Popen([forkpool, "run", "--config", config], env=env)
    try:
        while True:
            message = listener.recv(4096).decode()
            if "READY=1" in message.split("\n"):
                print(f"{(time.monotonic_ns() - started) / 1e6:.1f}")
                break
    finally:
        service.terminate()
        service.wait()
