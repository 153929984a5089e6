"""Run every benchmark and print one table: figure, ours, baseline, ratio, target, verdict.

    /opt/agent/bin/python bench/run_all.py            # the full run, as root (about 4 minutes here)
    /opt/agent/bin/python bench/run_all.py --quick    # shorter windows, fewer repeats (about 1 minute)
    ... --json results.json                           # also write every raw figure
    ... --only mesh_start dns                         # a subset (names: see --help)

Every figure is measured against its baseline in the same run, on the same machine, medians over
repeated runs. Each sidecar and mesh benchmark runs in network namespaces of its own (default ports,
no collision with anything else); the istio-iptables one is bench/iptables_apply.py, imported and
driven from here. Most scripts print JSON, the last stdout line being the result; csr_latency.py and
iptables_imports.py print a text table, parsed here. A benchmark that fails, hangs or prints
something unexpected becomes one ERROR row; the others still run and print. Nothing here asserts
timing (the verdict column is for the reader).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
PY = "/opt/agent/bin/python" if os.path.exists("/opt/agent/bin/python") else sys.executable
TIMEOUT_S = 900

FULL = {
    "start": ["-n", "7"], "idle": ["--window", "60"], "latency": ["--requests", "2000", "--rounds", "3"],
    "prometheus": ["-n", "15"], "prometheus_default": ["-n", "15", "--matcher", "istio-default"],
    "drain": ["--rounds", "3"], "drain_short": ["--rounds", "0", "--termination", "3"],
    "drain_closed": ["--rounds", "0", "--termination", "3", "--drain-duration", "2s"], "iptables_n": 15,
    "mesh_start": ["-n", "7", "--profile"], "agent_rss": ["--window", "10", "-n", "3"],
    "xds_push": ["--clusters", "5000", "--rounds", "3", "--flavour", "both"], "csr": ["-n", "30"],
    "dns": ["--rate", "1000", "--seconds", "6", "--rounds", "3", "--names", "10000"],
    "iptables_imports": ["-n", "25"], "nft_apply": ["-n", "15"],
}
QUICK = {
    "start": ["-n", "3"], "idle": ["--window", "10"], "latency": ["--requests", "400", "--rounds", "1"],
    "prometheus": ["-n", "5"], "prometheus_default": ["-n", "5", "--matcher", "istio-default"],
    "drain": ["--rounds", "1"], "drain_short": ["--rounds", "0", "--termination", "3"],
    "drain_closed": ["--rounds", "0", "--termination", "3", "--drain-duration", "2s"], "iptables_n": 5,
    "mesh_start": ["-n", "3"], "agent_rss": ["--window", "3", "-n", "1"],
    "xds_push": ["--clusters", "5000", "--rounds", "1", "--flavour", "both"], "csr": ["-n", "5"],
    "dns": ["--rate", "1000", "--seconds", "2", "--rounds", "2", "--names", "10000"],
    "iptables_imports": ["-n", "5"], "nft_apply": ["-n", "5"],
}
SCRIPTS = {"start": "sidecar_start.py", "idle": "sidecar_idle.py", "latency": "sidecar_latency.py",
           "prometheus": "sidecar_prometheus.py", "prometheus_default": "sidecar_prometheus.py",
           "drain": "sidecar_drain.py", "drain_short": "sidecar_drain.py", "drain_closed": "sidecar_drain.py",
           "mesh_start": "mesh_start.py", "agent_rss": "agent_rss.py", "xds_push": "xds_push.py",
           "csr": "csr_latency.py", "dns": "dns_proxy.py", "iptables_imports": "iptables_imports.py",
           "nft_apply": "nft_apply.py"}
#: --only names; a name stands for the runs listed with it.
GROUPS = {"start": ["start"], "iptables": ["iptables"], "idle": ["idle"], "latency": ["latency"],
          "prometheus": ["prometheus", "prometheus_default"], "drain": ["drain", "drain_short", "drain_closed"],
          "mesh_start": ["mesh_start"], "agent_rss": ["agent_rss"], "xds_push": ["xds_push"], "csr": ["csr"],
          "dns": ["dns"], "iptables_imports": ["iptables_imports"], "nft_apply": ["nft_apply"]}

CSR_LINE = re.compile(r"^(RSA 2048|ECDSA P-256)\s+(first|key|csr|rpc|total)\s+([\d.]+)(?:\s+([\d.]+))?")
IMPORT_LINE = re.compile(r"^(\S.*?)\s+(-?[\d.]+)ms\s+(-?[\d.]+)ms(.*)$")


def last_json(stdout: str) -> dict:
    """The convention of most scripts: the last stdout line is the result, one JSON object."""
    return json.loads(stdout.strip().splitlines()[-1])


def parse_csr(stdout: str) -> dict:
    """csr_latency.py's table -> {key type: {phase: {median_ms, p90_ms}}}."""
    out: dict = {}
    for line in stdout.splitlines():
        if m := CSR_LINE.match(line):
            kind, phase, med, p90 = m.groups()
            out.setdefault(kind, {})[phase] = {"median_ms": float(med), "p90_ms": float(p90) if p90 else None}
    if not out:
        raise ValueError("no result lines")
    return {"figure": "csr_latency", "kinds": out}


def parse_imports(stdout: str) -> dict:
    """iptables_imports.py's table -> {variant: {median_ms, min_ms, note}}."""
    variants = {}
    for line in stdout.splitlines():
        if m := IMPORT_LINE.match(line):
            name, med, low, note = m.groups()
            variants[name] = {"median_ms": float(med), "min_ms": float(low), "note": note.strip(" ()")}
    if not variants:
        raise ValueError("no result lines")
    return {"figure": "iptables_imports", "variants": variants}


PARSERS: dict[str, Callable[[str], dict]] = {"csr": parse_csr, "iptables_imports": parse_imports}


def run_script(name: str, args: list[str]) -> dict:
    """Run one bench script and read its result; any failure is returned as {"error": ...}."""
    started = time.monotonic()
    try:
        cp = subprocess.run([PY, str(HERE / SCRIPTS[name]), *args], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        tail = (e.stderr or e.stdout or b"")[-1500:]
        tail = tail.decode(errors="replace") if isinstance(tail, bytes) else tail
        return {"error": f"timed out after {TIMEOUT_S} s: {tail}", "bench_seconds": TIMEOUT_S}
    try:
        result = PARSERS.get(name, last_json)(cp.stdout)
        if not isinstance(result, dict):
            raise ValueError("not a JSON object")
    except (IndexError, ValueError):
        result = {"error": f"exit {cp.returncode}: {(cp.stderr or cp.stdout)[-1500:]}"}
    if name in PARSERS or name in ("xds_push", "dns"):  # their text lines say more than the JSON
        result["stdout"] = cp.stdout[-4000:]
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


Row = tuple[str, str, str, str, str, str]


class Rows:
    """The table being built; `add` takes the verdict as a bool (None: report only)."""

    def __init__(self) -> None:
        self.lines: list[Row] = []

    def add(self, figure: str, ours: str, base: str, ratio: str, target: str, ok: bool | None) -> None:
        self.lines.append((figure, ours, base, ratio, target, verdict(ok)))

    def error(self, figure: str, message: str) -> None:
        last = (message.strip().splitlines() or ["?"])[-1][:80]
        self.lines.append((figure, "error", "", "", "", "ERROR (see --json): " + last))


def start_rows(out: Rows, s: dict) -> None:
    out.add("start to ready, standalone (exec -> ready 200)", f"{s['ours_s'] * 1000:.0f} ms",
            f"{s['baseline_s'] * 1000:.0f} ms envoy", f"{s['ratio']:.2f}x", "<= 1.2x", s["ratio"] <= 1.2)


def iptables_rows(out: Rows, i: dict) -> None:
    out.add("istio-iptables apply (init rule set)", f"{i['ours_ms']:.1f} ms", f"{i['floor_ms']:.1f} ms iptables-restore",
            f"{i['ratio']:.2f}x", "<= 4x", i["ratio"] <= 4)
    out.add("istio-iptables processes spawned", str(i["processes"]), "1 (iptables-restore)", "", "<= 4",
            i["processes"] <= 4)
    if "python_S_ms" in i:
        out.add("  context: bare `python -S -c pass`, same wrapper", f"{i['python_S_ms']:.1f} ms",
                f"{i['floor_ms']:.1f} ms iptables-restore", f"{i['python_S_ms'] / i['floor_ms']:.2f}x", "", None)


def nft_apply_rows(out: Rows, n: dict) -> None:
    out.add("istio-iptables --native-nftables apply (init rule set)", f"{n['ours_ms']:.1f} ms",
            f"{n['floor_ms']:.1f} ms one nft -f", f"{n['ratio']:.2f}x", "(report)", None)
    out.add("istio-iptables --native-nftables processes spawned", str(n["processes"]), "1 (nft -f)", "", "(report)",
            None)


def idle_rows(out: Rows, d: dict) -> None:
    out.add("agent RSS, standalone, idle + ready (Envoy excluded)", f"{d['rss_mib']:.1f} MiB",
            f"{d['bare_python_mib']:.1f} MiB python -c pass", f"{d['rss_ratio']:.2f}x", "<= 40 MiB", d["rss_mib"] <= 40)
    out.add(f"agent CPU, standalone, idle {d['cpu_window_s']:.0f} s", f"{d['cpu_pct_core']:.3f} % core", "none", "",
            "<= 1 %", d["cpu_pct_core"] <= 1.0)


def latency_rows(out: Rows, lat: dict) -> None:
    for q, target, ok in (("50", "(report)", None), ("99", "<= 2x", lat["p99_ratio"] <= 2)):
        out.add(f"/healthz/ready p{q} @ {lat['rate']:.0f} req/s", f"{lat[f'ours_p{q}_ms']:.2f} ms",
                f"{lat[f'envoy_p{q}_ms']:.2f} ms admin /ready", f"{lat[f'p{q}_ratio']:.2f}x", target, ok)


def prometheus_rows(label: str) -> Callable[[Rows, dict], None]:
    def rows(out: Rows, p: dict) -> None:
        out.add(f"merged /stats/prometheus, {p['clusters']} clusters, {label} ({p['ours_body_bytes'] / 1e6:.2f} MB)",
                f"{p['ours_ms']:.1f} ms", f"{p['envoy_ms']:.1f} ms envoy :15090", f"{p['ratio']:.2f}x", "<= 1.3x",
                p["ratio"] <= 1.3)
        out.add(f"  agent memory growth while scraping ({label})", f"{p['growth_bytes'] / 2**20:.2f} MiB",
                f"{p['ours_body_bytes'] / 2**20:.2f} MiB body", f"{p['growth_over_body']:.2f}x", "<= 2x body",
                p["growth_over_body"] <= 2)
        if "first_scrape_bytes" in p:
            out.add(f"  one-time: RSS added by the first scrape ({label})", f"{p['first_scrape_bytes'] / 2**20:.2f} MiB",
                    "", "", "(report)", None)
    return rows


DRAIN_WHEN = {"drain": "load ends inside the drain window", "drain_short": "the window ends under load",
              "drain_closed": "the window ends under load, drainDuration 2s"}


def drain_rows(key: str) -> Callable[[Rows, dict], None]:
    def rows(out: Rows, dr: dict) -> None:
        c = dr["drain"]["counts"]
        out.add(f"drain: accepted requests failed ({dr['requests']} @ {dr['rate']:.0f}/s, SIGTERM, "
                f"terminationDrainDuration {dr['termination_drain_s']} s: {DRAIN_WHEN[key]})", str(dr["failed"]),
                f"ok {c.get('ok', 0)}, refused {c.get('refused', 0)}", "", "0", dr["failed"] == 0)
        if dr["exit_on_zero_s"] is not None:
            out.add("exit-on-zero: last connection closed -> agent exit", f"{dr['exit_on_zero_s'] * 1000:.0f} ms",
                    "1000 ms poll interval", f"{dr['exit_on_zero_s']:.2f}x", "<= 1.5 s", dr["exit_on_zero_s"] <= 1.5)
    return rows


def mesh_start_rows(out: Rows, m: dict) -> None:
    out.add("mesh start to ready (injected args, CSR, SDS, xDS proxy -> ready 200)", f"{m['ours_s'] * 1000:.0f} ms",
            f"{m['baseline_s'] * 1000:.0f} ms bare Envoy, Istio bootstrap, file certs -> LIVE + CDS + LDS",
            f"{m['ratio']:.2f}x", "<= 2.5x", m["ratio"] <= 2.5)
    out.add("  context: bare Envoy with a minimal bootstrap", f"{m['ours_s'] * 1000:.0f} ms",
            f"{m['baseline_minimal_s'] * 1000:.0f} ms", f"{m['ratio_to_minimal']:.2f}x", "", None)
    if m.get("agent_spawned_envoy_after_s") is not None:
        out.add("  agent exec -> Envoy spawned (as the agent logs it)", f"{m['agent_spawned_envoy_after_s'] * 1000:.0f} ms",
                "", "", "(report)", None)
    if "imports_total_ms" in m:
        top = ", ".join(f"{name} {ms:.0f}" for name, ms in m["imports_top_ms"][:3])
        out.add("  agent top-level imports, one profiled run (ms)", f"{m['imports_total_ms']:.0f} ms", top, "",
                "(report)", None)


def agent_rss_rows(out: Rows, a: dict) -> None:
    go_mib = 50e6 / 2**20
    out.add(f"agent RSS in the mesh, idle {a['window_s']:.0f} s after ready (Envoy excluded)", f"{a['ours_mib']:.1f} MiB",
            "25-50 MB Istio's Go agent", f"{a['ours_mib'] / go_mib:.2f}x of 50 MB", "<= 55 MiB",
            a["ours_mib"] <= 55)
    out.add("  at ready / peak (VmHWM since exec)", f"{a['at_ready_mib']:.1f} / {a['peak_hwm_mib']:.1f} MiB", "", "",
            "(report)", None)


def xds_push_rows(out: Rows, x: dict) -> None:
    size = x["push_bytes"]
    for flavour in ("delta", "sotw"):
        if flavour not in x:
            continue
        f = x[flavour]
        out.add(f"xDS push, {x['clusters']:,} clusters ({size / 1e6:.1f} MB) -> Envoy CDS update, {flavour}",
                f"{f['proxy_s'] * 1000:.0f} ms via proxy", f"{f['direct_s'] * 1000:.0f} ms Envoy direct to istiod",
                f"{f['ratio']:.2f}x", "<= 1.1x", f["ratio"] <= 1.1)
        out.add(f"  xDS proxy memory growth at peak ({flavour})", f"{f['proxy_growth_bytes'] / 2**20:.1f} MiB",
                f"{size / 2**20:.1f} MiB push", f"{f['growth_vs_push']:.2f}x", "<= 2x push", f["growth_vs_push"] <= 2)
        out.add(f"  xDS proxy memory 0.3 s after the update ({flavour})", f"{f['settled_growth_bytes'] / 2**20:.1f} MiB",
                f"{size / 2**20:.1f} MiB push", f"{f['settled_vs_push']:.2f}x", "(report)", None)


def csr_rows(out: Rows, c: dict) -> None:
    for kind, phases in c["kinds"].items():
        t = phases["total"]
        parts = " + ".join(f"{p} {phases[p]['median_ms']:.1f}" for p in ("key", "csr", "rpc"))
        out.add(f"CSR latency {kind} (key + CSR + RPC), median (p90)", f"{t['median_ms']:.1f} ms ({t['p90_ms']:.1f})",
                parts, "", "(report)", None)
        if "first" in phases:
            out.add(f"  first {kind} certificate (with dial + TLS)", f"{phases['first']['median_ms']:.1f} ms", "", "",
                    "(report)", None)


def dns_rows(out: Rows, d: dict) -> None:
    rate, m, f, base = d["rate_qps"], d["mesh"], d["forwarded"], d["direct"]
    out.add(f"DNS proxy, mesh names ({d['names']:,}-name table) p50 / p99 @ {rate:.0f} q/s",
            f"{m['p50_ms']:.3f} / {m['p99_ms']:.3f} ms", "", "", "(report)", None)
    for q in ("p50", "p99"):
        limit = 1.2 * base[f"{q}_ms"] + 0.5
        out.add(f"DNS proxy, forwarded names {q} @ {rate:.0f} q/s", f"{f[f'{q}_ms']:.3f} ms",
                f"{base[f'{q}_ms']:.3f} ms direct to dnsmasq", f"{f[f'{q}_ms'] / base[f'{q}_ms']:.2f}x",
                f"<= 1.2x + 0.5 ms ({limit:.2f})", f[f"{q}_ms"] <= limit)
    u = d["mesh_during_update"]
    out.add(f"  mesh names during a table rebuild ({u['rebuild_s']} s) p50 / p99 / max",
            f"{u['p50_ms']:.3f} / {u['p99_ms']:.3f} / {u['max_ms']:.1f} ms", "", "", "(report)", None)
    out.add(f"DNS proxy memory, {d['names']:,}-name table (built in {d['table_build_s']} s)",
            f"+{d['rss_growth_kib'] / 1024:.1f} MiB", f"{d['rss_empty_kib'] / 1024:.1f} MiB empty table", "",
            "(report)", None)


def iptables_imports_rows(out: Rows, i: dict) -> None:
    for name, v in i["variants"].items():
        note = " (already imported)" if v["note"].startswith("already") else ""
        out.add(f"istio-iptables path + {name}{note}", f"{v['median_ms']:.2f} ms", f"min {v['min_ms']:.2f} ms", "",
                "(report; 5 ms rule)", None)


#: (result key, the figure an error row names, the rows it gives), in table order.
SECTIONS: list[tuple[str, str, Callable[[Rows, dict], None]]] = [
    ("start", "start to ready, standalone", start_rows),
    ("mesh_start", "mesh start to ready", mesh_start_rows),
    ("iptables", "istio-iptables apply", iptables_rows),
    ("iptables_imports", "istio-iptables import costs", iptables_imports_rows),
    ("nft_apply", "istio-iptables --native-nftables apply", nft_apply_rows),
    ("idle", "agent idle, standalone", idle_rows),
    ("agent_rss", "agent RSS in the mesh", agent_rss_rows),
    ("latency", "/healthz/ready latency", latency_rows),
    ("prometheus", "merged /stats/prometheus (cluster.* stats)", prometheus_rows("cluster.* stats")),
    ("prometheus_default", "merged /stats/prometheus (Istio default stats)", prometheus_rows("Istio default stats")),
    ("xds_push", "xDS push through the proxy", xds_push_rows),
    ("csr", "CSR latency", csr_rows),
    ("dns", "DNS proxy", dns_rows),
    *[(key, key, drain_rows(key)) for key in DRAIN_WHEN],
]


def rows(results: dict) -> list[Row]:
    out = Rows()
    for key, figure, fill in SECTIONS:
        res = results.get(key, {"error": "not run"})
        if "error" in res:
            out.error(figure, res["error"])
            continue
        try:
            fill(out, res)
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:  # a result of an unexpected shape
            out.error(figure, f"unexpected result: {type(e).__name__}: {e}")
    return out.lines


def table(lines: list[Row]) -> str:
    head = ("figure", "ours", "baseline", "ratio", "target", "verdict")
    widths = [max(len(x[i]) for x in [head, *lines]) for i in range(6)]
    fmt = lambda row: "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |"  # noqa: E731
    return "\n".join([fmt(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(fmt, lines)])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="shorter windows and fewer repeats (CPU window 10 s)")
    ap.add_argument("--json", help="also write the raw results here")
    ap.add_argument("--only", nargs="*", choices=list(GROUPS), help="run only these")
    args = ap.parse_args()
    plan = QUICK if args.quick else FULL
    wanted = {run for name in (args.only or GROUPS) for run in GROUPS[name]}
    results: dict = {}
    started = time.time()
    for name in [run for runs in GROUPS.values() for run in runs]:
        if name not in wanted:
            results[name] = {"error": "not run (--only)"}
            continue
        print(f"running {name} ...", file=sys.stderr, flush=True)
        results[name] = run_iptables(plan["iptables_n"]) if name == "iptables" else run_script(name, plan[name])
    load = open("/proc/loadavg").read().split()[0]
    print(f"\n{'quick' if args.quick else 'full'} run, {os.cpu_count()} CPUs, load average {load}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {(time.time() - started) / 60:.1f} min\n")
    print(table(rows(results)))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
