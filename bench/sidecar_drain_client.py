"""The load for bench/sidecar_drain.py (runs in the remote netns): exactly N requests on a fixed
schedule, one new connection each, SIGTERM sent to the agent after K of them.

    sidecar_drain_client.py HOST PORT --requests 1000 --rate 200 --sigterm-pid PID --sigterm-after 200

Classification (tests/sidecar/loadgen.py's `one`): ok, refused (never accepted: nobody listening any
more), refused_after_connect (queued by the kernel, closed unread), failed (accepted, then cut).
Prints one JSON line: counts, the time of the signal and of the first non-ok answer.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.sidecar.loadgen import one  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--sigterm-pid", type=int, required=True)
    ap.add_argument("--sigterm-after", type=int, default=200)
    args = ap.parse_args()
    counts: dict[str, int] = {}
    first_bad = signalled = None
    start = next_at = time.monotonic()
    for i in range(args.requests):
        if i == args.sigterm_after:
            os.kill(args.sigterm_pid, signal.SIGTERM)
            signalled = time.monotonic() - start
        now = time.monotonic()
        if now < next_at:
            time.sleep(next_at - now)
        next_at += 1.0 / args.rate
        result = one(args.host, args.port, 2.0)
        counts[result] = counts.get(result, 0) + 1
        if result != "ok" and first_bad is None:
            first_bad = (round(time.monotonic() - start, 3), i, result)
    print(json.dumps({"counts": counts, "signal_at_s": signalled, "first_not_ok": first_bad,
                      "elapsed_s": time.monotonic() - start}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
