"""Run the test ADS control plane (tests/xds/server.py) as a process, e.g. inside a netns.

    ads_main.py --port 15012 --backend-port 8080 --listener-port 10000

Holds back until it reads `release` on stdin; prints `ready`, then `released`, `acked`.
"""
from __future__ import annotations

import argparse
import sys

from tests.xds.server import CLUSTER, LISTENER, AdsServer, static_cluster, tcp_listener


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=15012)
    ap.add_argument("--backend-port", type=int, default=8080)
    ap.add_argument("--listener-port", type=int, default=10000)
    args = ap.parse_args()
    with AdsServer("127.0.0.1", args.port, hold=True) as ads:
        ads.set(clusters=[static_cluster("backend", "127.0.0.1", args.backend_port)],
                listeners=[tcp_listener("front", "127.0.0.1", args.listener_port, "backend")])
        print("ready", flush=True)
        for line in sys.stdin:
            if line.strip() == "release":
                ads.release()
                print("released", flush=True)
                ads.wait_acked(CLUSTER)
                ads.wait_acked(LISTENER)
                print("acked", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
