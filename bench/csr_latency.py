"""Benchmark: one workload certificate = key + CSR + CreateCertificate RPC, RSA 2048 and ECDSA P-256.

    /opt/agent/bin/python bench/csr_latency.py [-n 30]

Against the test CA (tests/mesh/ca_server.py) on loopback with TLS and a real JWT check,
through the agent's own CAClient; the CA runs in the same process and event loop, so
"rpc" includes its JWT check and signing. The channel is dialled once per key type, as the
agent keeps its CA channel: the first request (dial + TLS handshake) is printed apart. Prints, per key type,
the median and p90 of each phase and of the total in milliseconds. Figures only; no
pass/fail (the issue asks for them to be reported).
"""
from __future__ import annotations

import argparse
import asyncio
import pathlib
import statistics
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from agent.mesh.ca_client import CAClient, CAClientOptions  # noqa: E402
from agent.mesh.keys import KeyOptions, WorkloadIdentity, build_csr, generate_key, private_key_pem  # noqa: E402
from tests.mesh.ca_server import TestCA, TestPKI  # noqa: E402

KINDS = {"RSA 2048": KeyOptions(), "ECDSA P-256": KeyOptions(ecc_signature_algorithm="ECDSA")}
IDENTITY = WorkloadIdentity("cluster.local", "bench", "bench")


def _p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[-1] if len(values) > 1 else values[0]


async def _one(client: CAClient, options: KeyOptions) -> tuple[float, float, float]:
    t0 = time.perf_counter()
    key = generate_key(options)
    t1 = time.perf_counter()
    private_key_pem(key, options.pkcs8)
    csr = build_csr(key, IDENTITY)
    t2 = time.perf_counter()
    await client.create_certificate(csr, 86400)
    t3 = time.perf_counter()
    return (t1 - t0) * 1000, (t2 - t1) * 1000, (t3 - t2) * 1000


async def main(runs: int) -> None:
    pki = TestPKI()
    with tempfile.TemporaryDirectory() as tmp:
        root, token = pathlib.Path(tmp, "root-cert.pem"), pathlib.Path(tmp, "istio-token")
        pki.write_root(root)
        token.write_text(pki.token("bench", "bench"))
        async with TestCA(pki) as ca:
            print(f"{'key':<12} {'phase':<6} {'median ms':>10} {'p90 ms':>8}   (n={runs}, TLS, loopback)")
            for name, options in KINDS.items():
                client = CAClient(CAClientOptions(address=ca.address, root_cert_path=str(root),
                                                  token_path=str(token)))
                first = sum(await _one(client, options))
                print(f"{name:<12} {'first':<6} {first:>10.1f} {'':>8}   (key + CSR + dial + TLS + RPC)")
                samples = [await _one(client, options) for _ in range(runs)]
                await client.close()
                phases = {"key": [s[0] for s in samples], "csr": [s[1] for s in samples],
                          "rpc": [s[2] for s in samples], "total": [sum(s) for s in samples]}
                for phase, values in phases.items():
                    print(f"{name:<12} {phase:<6} {statistics.median(values):>10.1f} {_p90(values):>8.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=30, help="runs per key type (default 30)")
    asyncio.run(main(parser.parse_args().n))
