"""One HTTP request, one JSON line out (stdlib only), so tests compare data, not exit codes.

    httpget.py http://198.18.0.10:15020/healthz/ready [--method POST] [--timeout 3]

Prints {"status": <code>, "body": <text>} for any HTTP answer (4xx/5xx included) or
{"error": "..."} when there is none; always exits 0.
"""
from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--method", default="GET")
    ap.add_argument("--timeout", type=float, default=3)
    args = ap.parse_args()
    req = urllib.request.Request(args.url, method=args.method,
                                 data=b"" if args.method == "POST" else None)
    # No proxy from the environment: requests must go exactly where the test says.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=args.timeout) as resp:
            out = {"status": resp.status, "body": resp.read().decode(errors="replace")}
    except urllib.error.HTTPError as exc:
        out = {"status": exc.code, "body": exc.read().decode(errors="replace")}
    except (OSError, ValueError) as exc:
        out = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
