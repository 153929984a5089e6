"""Answers each connection with where it was really going (stdlib only; runs as uid 1337).

    origdst_listener.py --tcp 15001,15006 --udp 15053 --tag proxy [--transparent]

Listens on 0.0.0.0 and :: (v6-only socket, when IPv6 is up) for every port. Each TCP connection
gets one JSON line and is closed:

    {"tag": "proxy", "listener": 15006, "orig": "198.18.0.10:8080", "peer": "198.18.0.20:40000",
     "uid": 1337, "how": "SO_ORIGINAL_DST"}

`orig` is SO_ORIGINAL_DST (what REDIRECT rewrote; SOL_IP/SOL_IPV6 option 80) or, for TPROXY
(`--transparent` sets IP_TRANSPARENT so the kernel hands us the flow), the accepted socket's local
address, which TPROXY leaves as the original destination. Without a NAT entry it is the local
address too (`how` says which). UDP datagrams (the DNS port) get the same JSON back, with `orig`
the local address. Prints `ready` on stdout once every socket is bound.
"""
from __future__ import annotations

import argparse
import json
import os
import select
import socket
import struct
import sys

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h; IP6T_SO_ORIGINAL_DST has the same number
IP_TRANSPARENT = 19
IPV6_TRANSPARENT = 75
SOL_IPV6 = 41


def _fmt(addr) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def original_dst(conn: socket.socket) -> tuple[str, str]:
    try:
        if conn.family == socket.AF_INET:
            raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
            port, packed = struct.unpack_from("!2xH4s", raw)
            return _fmt((socket.inet_ntop(socket.AF_INET, packed), port)), "SO_ORIGINAL_DST"
        raw = conn.getsockopt(SOL_IPV6, SO_ORIGINAL_DST, 28)
        port, packed = struct.unpack_from("!2xH4x16s", raw)
        return _fmt((socket.inet_ntop(socket.AF_INET6, packed), port)), "SO_ORIGINAL_DST"
    except OSError:
        return _fmt(conn.getsockname()), "local"


def _sockets(ports: list[int], kind: int, transparent: bool) -> list[socket.socket]:
    out = []
    have_v6 = os.path.exists("/proc/net/if_inet6") and open("/proc/net/if_inet6").read().strip()
    for port in ports:
        for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            if family == socket.AF_INET6 and not have_v6:
                continue
            s = socket.socket(family, kind)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if transparent:
                level, opt = ((socket.SOL_IP, IP_TRANSPARENT) if family == socket.AF_INET
                              else (SOL_IPV6, IPV6_TRANSPARENT))
                s.setsockopt(level, opt, 1)
            s.bind((host, port))
            if kind == socket.SOCK_STREAM:
                s.listen(64)
            s.setblocking(False)
            out.append(s)
    return out


def _ports(text: str) -> list[int]:
    return [int(p) for p in text.split(",") if p]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tcp", default="")
    ap.add_argument("--udp", default="")
    ap.add_argument("--tag", default="proxy")
    ap.add_argument("--transparent", action="store_true")
    args = ap.parse_args()
    tcp = _sockets(_ports(args.tcp), socket.SOCK_STREAM, args.transparent)
    udp = _sockets(_ports(args.udp), socket.SOCK_DGRAM, args.transparent)
    print("ready", flush=True)
    base = {"tag": args.tag, "uid": os.getuid()}
    while True:
        readable, _, _ = select.select(tcp + udp, [], [])
        for s in readable:
            listener = s.getsockname()[1]
            try:
                if s.type == socket.SOCK_STREAM:
                    conn, peer = s.accept()
                    orig, how = original_dst(conn)
                    reply = dict(base, listener=listener, orig=orig, peer=_fmt(peer), how=how)
                    conn.setblocking(True)
                    conn.sendall((json.dumps(reply) + "\n").encode())
                    conn.close()
                else:
                    data, peer = s.recvfrom(4096)
                    reply = dict(base, listener=listener, orig=_fmt(s.getsockname()),
                                 peer=_fmt(peer), how="udp", got=data.decode(errors="replace"))
                    s.sendto((json.dumps(reply) + "\n").encode(), peer)
            except Exception as exc:  # one bad peer must not stop the listener
                print(f"error {exc}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
