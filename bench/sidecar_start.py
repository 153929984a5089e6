"""Benchmark: start to ready, the agent against bare Envoy, in a netns of its own.

    /opt/agent/bin/python bench/sidecar_start.py [-n 7]

* ours:     exec `pilot-agent proxy sidecar --standalone` -> first 200 from :15020/healthz/ready
* baseline: exec Envoy with the very argv the agent used (`envoy -c <the same bootstrap> ...`, the
            bootstrap copied while the agent ran) -> first 200 `LIVE` from admin :15000/ready

Both are polled every 2 ms with a raw HTTP GET on a new connection. Runs alternate sides. Prints the
medians and the ratio (target <= 1.2x) as one JSON line.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.sidecar_common import (BASE_ENV, Agent, cmdline, emit, http_get, in_own_netns, median,  # noqa: E402
                                  wait_for, wait_port_free)

PORTS = (15000, 15001, 15006, 15020, 15021, 15090)


def _ports_free() -> None:
    for port in PORTS:
        wait_port_free(port)


def run_ours(keep: Path | None = None) -> tuple[float, list[str] | None]:
    """Seconds to ready; with `keep`, also copy the bootstrap there and return Envoy's argv."""
    _ports_free()
    agent = Agent("--concurrency", "2", env={"TERMINATION_DRAIN_DURATION_SECONDS": "0"})
    try:
        took = agent.wait_ready()
        argv = None
        if keep is not None:
            envoy = wait_for(agent.envoy_pid, 5, 0.01, "envoy pid")
            argv = cmdline(envoy)
            config = argv[argv.index("-c") + 1]
            shutil.copy(config, keep)
            argv[argv.index("-c") + 1] = str(keep)
        agent.stop()
        return took, argv
    finally:
        agent.close()


def run_envoy(argv: list[str], work: Path) -> float:
    _ports_free()
    with open(work / "envoy.log", "ab") as log:
        start = time.monotonic()
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=BASE_ENV, cwd=str(work))
    try:
        def live():
            if proc.poll() is not None:
                raise RuntimeError(f"envoy exited {proc.returncode}: {(work / 'envoy.log').read_text()[-2000:]}")
            status, body = http_get(15000, "/ready", timeout=1)
            return status == 200 and body.strip() == b"LIVE"
        wait_for(live, 30, 0.002, "envoy LIVE")
        return time.monotonic() - start
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=7, help="runs per side")
    args = ap.parse_args()
    if (code := in_own_netns()) is not None:
        return code
    work = Path(tempfile.mkdtemp(prefix="pib-start-"))
    try:
        _, envoy_argv = run_ours(keep=work / "bootstrap.json")  # warm-up, and the baseline's argv
        run_envoy(envoy_argv, work)
        ours, bare = [], []
        for i in range(args.n):
            for side in ((0, 1) if i % 2 == 0 else (1, 0)):
                if side == 0:
                    ours.append(run_ours()[0])
                else:
                    bare.append(run_envoy(envoy_argv, work))
        emit({"figure": "start_to_ready", "ours_s": median(ours), "baseline_s": median(bare),
              "ratio": median(ours) / median(bare), "runs": args.n, "ours_all": ours, "baseline_all": bare,
              "envoy_argv": " ".join(envoy_argv)})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
