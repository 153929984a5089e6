"""Benchmark: drain under load, and exit-on-zero, through the real capture path.

    /opt/agent/bin/python bench/sidecar_drain.py [--requests 1000] [--rounds 3]

A pod netns with the init container's rules (`pilot-agent istio-iptables`), an app (uid 1000) on
8080 (+ a connection holder on 7070), the standalone sidecar with Envoy as uid 1337, and a remote
netns across a veth sending the traffic (tests/support/netns.py).

* drain: 1,000 requests at 200/s from the remote side to the app (captured into Envoy's inbound
  listener); SIGTERM to the agent after 200 of them (t = 1 s). With the default
  terminationDrainDuration (5 s) the whole load falls inside the drain window; with `--termination 3`
  the window ends at t = 4 s while the load runs on to t = 5 s: the agent closes the inbound
  listener once connections stop arriving (at most 2 s later), then stops Envoy once nothing it
  accepted is in flight. `--requests 2000` makes the load outlast that bound too (the listener then
  closes under load). Figure: requests accepted and then failed (target 0). Also reported: ok, and
  refused (after the close nobody listens: never accepted, so not "dropped").
* exit-on-zero: EXIT_ON_ZERO_ACTIVE_CONNECTIONS=true, MINIMUM_DRAIN_DURATION=1s; one connection
  held open through Envoy; SIGTERM; 1.5 s later the connection is closed. Figure: time from that
  close to the agent's exit, median of `--rounds` (target <= 1.5 s; the agent polls every 1 s).

Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.sidecar_common import emit, median  # noqa: E402
from tests.support.agent import APP, HOLD_CLIENT, Agent  # noqa: E402
from tests.support.netns import APP_UID, POD4, PROXY_UID, Pod  # noqa: E402
from tests.support.process import PY  # noqa: E402

INIT_FLAGS = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "",
              "-b", "*", "-d", "15090,15021,15020"]
CLIENT = str(Path(__file__).resolve().parent / "sidecar_drain_client.py")
HOLD = HOLD_CLIENT


def exit_watch(agent: Agent) -> dict:
    """Records the monotonic time at which the agent process is reaped."""
    box: dict = {}

    def wait() -> None:
        box["code"] = agent.proc.wait()
        box["at"] = time.monotonic()
    threading.Thread(target=wait, daemon=True).start()
    return box


def drain_round(pod: Pod, work: Path, n: int, rate: float, termination: int, drain_duration: str | None) -> dict:
    extra = ["--drainDuration", drain_duration] if drain_duration else []
    agent = Agent.start(pod.ns, work, "--concurrency", "1", *extra, uid=PROXY_UID,
                        env={"INSTANCE_IP": POD4, "TERMINATION_DRAIN_DURATION_SECONDS": str(termination)})
    agent.wait_ready()
    box = exit_watch(agent)
    cp = pod.remote.run([PY, CLIENT, POD4, "8080", "--requests", str(n), "--rate", str(rate),
                         "--sigterm-pid", str(agent.proc.pid), "--sigterm-after", str(n // 5)],
                        timeout=n / rate * 3 + 60)
    result = json.loads(cp.stdout.strip().splitlines()[-1])
    deadline = time.monotonic() + 30
    while "at" not in box and time.monotonic() < deadline:
        time.sleep(0.05)
    result["exit_code"] = box.get("code")
    result["envoy_left"] = agent.envoy_pids()
    return result


def exit_on_zero_round(pod: Pod, work: Path) -> float:
    agent = Agent.start(pod.ns, work, "--concurrency", "1", uid=PROXY_UID, env={
        "INSTANCE_IP": POD4, "EXIT_ON_ZERO_ACTIVE_CONNECTIONS": "true", "MINIMUM_DRAIN_DURATION": "1s",
        "TERMINATION_DRAIN_DURATION_SECONDS": "1"})
    agent.wait_ready()
    box = exit_watch(agent)
    held = subprocess.Popen(pod.remote.argv([PY, HOLD, POD4, "7070"]), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    pod.remote.procs.append(held)
    if held.stdout.readline().strip() != "connected held":
        raise SystemExit("exit-on-zero: the held connection did not go through Envoy")
    agent.signal(signal.SIGTERM)
    time.sleep(1.5)
    if "at" in box:
        raise SystemExit(f"exit-on-zero: agent exited with a connection still open:\n{agent.log()[-2000:]}")
    closed = time.monotonic()
    held.stdin.close()
    held.stdout.readline()
    deadline = time.monotonic() + 30
    while "at" not in box and time.monotonic() < deadline:
        time.sleep(0.005)
    if "at" not in box:
        raise SystemExit(f"exit-on-zero: agent did not exit:\n{agent.log()[-2000:]}")
    return box["at"] - closed


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--rounds", type=int, default=3, help="exit-on-zero rounds (0: skip)")
    ap.add_argument("--termination", type=int, default=5,
                    help="TERMINATION_DRAIN_DURATION_SECONDS for the drain run (default 5, Istio's)")
    ap.add_argument("--drain-duration", help="--drainDuration (Envoy's --drain-time-s) for the drain run (default 45s)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pib-drain-"))
    work.chmod(0o755)  # Envoy and the agent run as uid 1337
    pod = Pod.create(prefix="pid")
    try:
        init = pod.istio_iptables(*INIT_FLAGS)
        if init.returncode != 0:
            raise SystemExit(f"istio-iptables failed: {init.stderr}")
        pod.spawn([PY, APP, "--http", "8080", "--hold", "7070"], uid=APP_UID, wait_ready=True)
        drain = drain_round(pod, work / "drain", args.requests, args.rate, args.termination, args.drain_duration)
        eoz = [exit_on_zero_round(pod, work / f"eoz{i}") for i in range(args.rounds)]
    finally:
        pod.close()
        shutil.rmtree(work, ignore_errors=True)
    emit({"figure": "drain", "requests": args.requests, "rate": args.rate, "drain": drain,
          "termination_drain_s": args.termination, "drain_duration": args.drain_duration or "45s",
          "failed": drain["counts"].get("failed", 0) + drain["counts"].get("refused_after_connect", 0),
          "exit_on_zero_s": median(eoz) if eoz else None, "exit_on_zero_all": eoz})
    return 0


if __name__ == "__main__":
    sys.exit(main())
