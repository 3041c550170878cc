"""Opens COUNT client connections to the forkpool socket, has the service answer a `ping` on
each (so every one is accepted and registered, not waiting in the listen backlog), then
prints the master's VmRSS in KiB with all of them open and idle, and closes them.

Usage: idle_clients.py SOCKET COUNT MASTER_PID
"""
import json
import socket
import sys

path, count, master = sys.argv[1], int(sys.argv[2]), sys.argv[3]
clients = []
for n in range(count):
    client = socket.socket(socket.AF_UNIX)
    client.connect(path)
    client.sendall(json.dumps({"id": n, "op": "ping"}).encode() + b"\n")
    clients.append(client)
for client in clients:
    answer = b""
    while not answer.endswith(b"\n"):
        chunk = client.recv(4096)
        if not chunk:
            sys.exit("idle_clients.py: the service closed a connection")
        answer += chunk
    if b'"ok":true' not in answer.replace(b" ", b""):
        sys.exit(f"idle_clients.py: unexpected answer {answer!r}")
with open(f"/proc/{master}/status") as status:
    rss = next(line.split()[1] for line in status if line.startswith("VmRSS:"))
print(rss)
for client in clients:
    client.close()
