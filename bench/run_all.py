"""Run every benchmark and print one table: figure, ours, baseline, ratio, target, verdict.

    sudo /opt/agent/bin/python bench/run_all.py            # the full run (about 4 minutes)
    sudo /opt/agent/bin/python bench/run_all.py --quick    # shorter windows, fewer repeats (~1 minute)
    ... --json results.json                                # also write every raw figure

Every figure is measured against its baseline in the same run, on the same machine, medians over
repeated runs. Each sidecar benchmark runs in network namespaces of its own (default ports, no
collision with anything else); the istio-iptables one is bench/iptables_apply.py (owned by the
iptables-apply helper), imported and driven from here. Benchmarks print figures; nothing here
asserts timing (the verdict column is for the reader).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
PY = "/opt/agent/bin/python" if os.path.exists("/opt/agent/bin/python") else sys.executable

FULL = {
    "start": ["-n", "7"], "idle": ["--window", "60"], "latency": ["--requests", "2000", "--rounds", "3"],
    "prometheus": ["-n", "15"], "prometheus_default": ["-n", "15", "--matcher", "istio-default"],
    "drain": ["--rounds", "3"], "drain_short": ["--rounds", "0", "--termination", "3"],
    "drain_closed": ["--rounds", "0", "--termination", "3", "--drain-duration", "2s"], "iptables_n": 15,
}
QUICK = {
    "start": ["-n", "3"], "idle": ["--window", "10"], "latency": ["--requests", "400", "--rounds", "1"],
    "prometheus": ["-n", "5"], "prometheus_default": ["-n", "5", "--matcher", "istio-default"],
    "drain": ["--rounds", "1"], "drain_short": ["--rounds", "0", "--termination", "3"],
    "drain_closed": ["--rounds", "0", "--termination", "3", "--drain-duration", "2s"], "iptables_n": 5,
}
SCRIPTS = {"start": "sidecar_start.py", "idle": "sidecar_idle.py", "latency": "sidecar_latency.py",
           "prometheus": "sidecar_prometheus.py", "prometheus_default": "sidecar_prometheus.py",
           "drain": "sidecar_drain.py", "drain_short": "sidecar_drain.py", "drain_closed": "sidecar_drain.py"}


def run_script(name: str, args: list[str]) -> dict:
    """Run one bench script; its last stdout line is its JSON result."""
    started = time.monotonic()
    cp = subprocess.run([PY, str(HERE / SCRIPTS[name]), *args], capture_output=True, text=True,
                        env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=900)
    try:
        result = json.loads(cp.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        result = {"error": f"exit {cp.returncode}: {(cp.stderr or cp.stdout)[-1500:]}"}
    result["bench_seconds"] = round(time.monotonic() - started, 1)
    return result


def run_iptables(n: int) -> dict:
    """bench/iptables_apply.py's pieces, measured the same way its own main() does."""
    try:
        spec = importlib.util.spec_from_file_location("iptables_apply", HERE / "iptables_apply.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        text = mod.rule_text()
        mod.run_ours(), mod.run_floor(text)  # warm-up
        ours, floor = [], []
        for i in range(n):
            pair = (mod.run_ours, lambda: mod.run_floor(text))
            for fn in (pair if i % 2 == 0 else pair[::-1]):
                (ours if fn is mod.run_ours else floor).append(fn()[0])
        calls = mod.count_with_shims()
        with mod.Pod.create(prefix="bp") as pod:  # context: a bare interpreter through the same wrapper
            bare = [mod.run_python(pod)[0] for _ in range(n)]
        return {"figure": "iptables", "ours_ms": statistics.median(ours) * 1000,
                "python_S_ms": statistics.median(bare) * 1000,
                "floor_ms": statistics.median(floor) * 1000, "ratio": statistics.median(ours) / statistics.median(floor),
                "processes": len(calls), "process_list": calls, "runs": n}
    except BaseException as e:  # noqa: BLE001 - one failing benchmark must not hide the others
        return {"error": f"{type(e).__name__}: {e}"}


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("met" if ok else "MISSED")


def rows(r: dict) -> list[tuple[str, str, str, str, str, str]]:
    out = []

    def add(figure, ours, base, ratio, target, ok):
        out.append((figure, ours, base, ratio, target, verdict(ok)))

    def err(figure, res):
        out.append((figure, "error", "", "", "", "ERROR (see --json): " + res.get("error", "?").strip().splitlines()[-1][:80]))

    s = r["start"]
    if "error" in s:
        err("start to ready", s)
    else:
        add("start to ready (exec -> ready 200)", f"{s['ours_s'] * 1000:.0f} ms", f"{s['baseline_s'] * 1000:.0f} ms envoy",
            f"{s['ratio']:.2f}x", "<= 1.2x", s["ratio"] <= 1.2)
    i = r["iptables"]
    if "error" in i:
        err("istio-iptables apply", i)
    else:
        add("istio-iptables apply (init rule set)", f"{i['ours_ms']:.1f} ms", f"{i['floor_ms']:.1f} ms iptables-restore",
            f"{i['ratio']:.2f}x", "<= 4x", i["ratio"] <= 4)
        add("istio-iptables processes spawned", str(i["processes"]), "1 (iptables-restore)", "", "<= 4", i["processes"] <= 4)
        if "python_S_ms" in i:
            add("  context: bare `python -S -c pass`, same wrapper", f"{i['python_S_ms']:.1f} ms", f"{i['floor_ms']:.1f} ms iptables-restore",
                f"{i['python_S_ms'] / i['floor_ms']:.2f}x", "", None)
    d = r["idle"]
    if "error" in d:
        err("agent idle", d)
    else:
        add("agent RSS, idle + ready (Envoy excluded)", f"{d['rss_mib']:.1f} MiB", f"{d['bare_python_mib']:.1f} MiB python -c pass",
            f"{d['rss_ratio']:.2f}x", "<= 40 MiB", d["rss_mib"] <= 40)
        add(f"agent CPU, idle {d['cpu_window_s']:.0f} s", f"{d['cpu_pct_core']:.3f} % core", "none", "", "<= 1 %",
            d["cpu_pct_core"] <= 1.0)
    lat = r["latency"]
    if "error" in lat:
        err("/healthz/ready latency", lat)
    else:
        add(f"/healthz/ready p50 @ {lat['rate']:.0f} req/s", f"{lat['ours_p50_ms']:.2f} ms", f"{lat['envoy_p50_ms']:.2f} ms admin /ready",
            f"{lat['p50_ratio']:.2f}x", "(report)", None)
        add(f"/healthz/ready p99 @ {lat['rate']:.0f} req/s", f"{lat['ours_p99_ms']:.2f} ms", f"{lat['envoy_p99_ms']:.2f} ms admin /ready",
            f"{lat['p99_ratio']:.2f}x", "<= 2x", lat["p99_ratio"] <= 2)
    for key, label in (("prometheus", "cluster.* stats"), ("prometheus_default", "Istio default stats")):
        p = r[key]
        if "error" in p:
            err(f"merged /stats/prometheus ({label})", p)
            continue
        add(f"merged /stats/prometheus, {p['clusters']} clusters, {label} ({p['ours_body_bytes'] / 1e6:.2f} MB)",
            f"{p['ours_ms']:.1f} ms", f"{p['envoy_ms']:.1f} ms envoy :15090", f"{p['ratio']:.2f}x", "<= 1.3x", p["ratio"] <= 1.3)
        add(f"  agent memory growth while scraping ({label})", f"{p['growth_bytes'] / 2**20:.2f} MiB",
            f"{p['ours_body_bytes'] / 2**20:.2f} MiB body", f"{p['growth_over_body']:.2f}x", "<= 2x body",
            p["growth_over_body"] <= 2)
        if "first_scrape_bytes" in p:
            add(f"  one-time: RSS added by the first scrape ({label})", f"{p['first_scrape_bytes'] / 2**20:.2f} MiB",
                "", "", "(report)", None)
    for key in ("drain", "drain_short", "drain_closed"):
        dr = r[key]
        if "error" in dr:
            err(key, dr)
            continue
        c = dr["drain"]["counts"]
        when = {"drain": "load ends inside the drain window", "drain_short": "Envoy stopped under load",
                "drain_closed": "listener closed (drainDuration 2s) before Envoy is stopped"}[key]
        add(f"drain: accepted requests failed ({dr['requests']} @ {dr['rate']:.0f}/s, SIGTERM, "
            f"terminationDrainDuration {dr['termination_drain_s']} s: {when})", str(dr["failed"]),
            f"ok {c.get('ok', 0)}, refused {c.get('refused', 0)}", "", "0", dr["failed"] == 0)
        if dr["exit_on_zero_s"] is not None:
            add("exit-on-zero: last connection closed -> agent exit", f"{dr['exit_on_zero_s'] * 1000:.0f} ms",
                "1000 ms poll interval", f"{dr['exit_on_zero_s']:.2f}x", "<= 1.5 s", dr["exit_on_zero_s"] <= 1.5)
    return out


def table(lines: list[tuple[str, ...]]) -> str:
    head = ("figure", "ours", "baseline", "ratio", "target", "verdict")
    widths = [max(len(x[i]) for x in [head, *lines]) for i in range(6)]
    fmt = lambda row: "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |"  # noqa: E731
    return "\n".join([fmt(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(fmt, lines)])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="shorter windows and fewer repeats (CPU window 10 s)")
    ap.add_argument("--json", help="also write the raw results here")
    ap.add_argument("--only", nargs="*", help="run only these (start idle latency prometheus drain iptables)")
    args = ap.parse_args()
    plan = QUICK if args.quick else FULL
    results: dict = {}
    wanted = set(args.only or ["start", "iptables", "idle", "latency", "prometheus", "drain"])
    if "prometheus" in wanted:
        wanted.add("prometheus_default")
    if "drain" in wanted:
        wanted |= {"drain_short", "drain_closed"}
    for name in ("start", "iptables", "idle", "latency", "prometheus", "prometheus_default", "drain", "drain_short",
                 "drain_closed"):
        if name not in wanted:
            results[name] = {"error": "not run (--only)"}
            continue
        print(f"running {name} ...", file=sys.stderr, flush=True)
        results[name] = run_iptables(plan["iptables_n"]) if name == "iptables" else run_script(name, plan[name])
    load = open("/proc/loadavg").read().split()[0]
    print(f"\n{'quick' if args.quick else 'full'} run, {os.cpu_count()} CPUs, load average {load}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    print(table(rows(results)))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
