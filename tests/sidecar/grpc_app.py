"""A gRPC app for the pod: gRPC's own health server (grpcio-health-checking) on one port.

    grpc_app.py --port 9090

Services: "" and "serving-svc" SERVING, "down-svc" NOT_SERVING; any other name is unknown
(NOT_FOUND). Prints `ready` once listening.
"""
from __future__ import annotations

import argparse
import sys
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    server = grpc.server(futures.ThreadPoolExecutor(2))
    servicer = health.HealthServicer()
    status = health_pb2.HealthCheckResponse.ServingStatus
    for name, value in (("", status.SERVING), ("serving-svc", status.SERVING), ("down-svc", status.NOT_SERVING)):
        servicer.set(name, value)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    server.add_insecure_port(f"0.0.0.0:{args.port}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()
    return 0


if __name__ == "__main__":
    sys.exit(main())
