"""Open one TCP connection and keep it until stdin closes (stdlib only).

    hold_client.py 198.18.0.10 7070      -> prints `connected <first line>`, closes on EOF of stdin
"""
import socket
import sys

s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
print("connected", s.recv(100).decode().strip(), flush=True)
sys.stdin.read()
s.close()
print("closed", flush=True)
