"""What another workload can do to a pod's ports: never reach Envoy's admin API (127.0.0.1:15000)
or the agent's loopback-only endpoints through 15090, 15021 or 15020.

15090 forwards to the admin port and 15021 to the agent, which sees Envoy's loopback address as the
caller. Both listeners must route their one path and nothing else, whatever the encoding. Every
request here is sent byte for byte from the remote namespace (tests/sidecar/raw_http.py, nothing
normalised client-side) to a real standalone agent and Envoy behind the init container's rules.
Afterwards nothing may have changed: same Envoy pid, same server state, listeners, counters,
log levels and runtime, inbound traffic still flowing, readiness still 200.
"""
from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.agent import APP, Agent, curl, stat
from tests.support.netns import APP_UID, ISTIO_INIT_ARGS, POD4, POD6, PROXY_UID, Pod
from tests.support.process import PY, script

#: Envoy 1.40's admin endpoints (`/help`), read-only first; with queries that change something.
ADMIN_READ = ("", "help", "config_dump", "config_dump?include_eds", "clusters", "certs", "listeners",
              "server_info", "runtime", "logging", "memory", "memory/tcmalloc", "stats", "stats?format=json",
              "init_dump", "ready", "hot_restart_version", "contention", "heap_dump", "stats/recentlookups")
ADMIN_WRITE = ("quitquitquit", "drain_listeners", "drain_listeners?inboundonly",
               "drain_listeners?inboundonly&graceful", "healthcheck/fail", "logging?level=trace",
               "logging?paths=admin:trace", "runtime_modify?exposure.test=1", "reset_counters",
               "cpuprofiler?enable=y", "heapprofiler?enable=y", "allocprofiler?enable=y", "reopen_logs",
               "stats/recentlookups/enable")
#: The agent's loopback-only endpoints (15021 reaches the agent from 127.0.0.1).
AGENT_WRITE = ("quitquitquit", "drain")
#: Text only Envoy's admin writes (none of it is in Prometheus output or the agent's answers).
ADMIN_MARKERS = ("admin commands are", "envoy.admin.", '"configs"', "POST required", "uptime_current_epoch",
                 "active loggers", '"layers"', '"certificates"', "::cx_active::",
                 "Lookup tracking", "Admin home", "OK\n")
PROMETHEUS_LINE = re.compile(r"(#.*|[a-zA-Z_:][a-zA-Z0-9_:]*(\{.*\})? \S+)")
REFUSED = {400, 403, 404, 405, 408, 411, 413, 414, 426, 431, 501, 505}

#: Ways to say "<base>/../../<target>" (`n`: one "../" per segment of the base) or to aim at
#: <target> past the route: dot segments plain and percent-encoded in any case, encoded and
#: back slashes, doubled slashes, `;` parameters, fragments, query strings, absolute-form
#: targets, case, double and overlong encodings, NUL and spaces; and queries that decode to a
#: fragment or to a second request (the agent passes the query on to 15090).
TRICKS = {
    "plain": lambda b, t, n: f"/{t}",
    "dots": lambda b, t, n: f"{b}/{'../' * n}{t}",
    "dots-extra": lambda b, t, n: f"{b}/{'../' * (n + 2)}{t}",
    "dot-dot-slash-dot": lambda b, t, n: f"{b}/./{'.././' * n}{t}",
    "%2e%2e": lambda b, t, n: f"{b}/{'%2e%2e/' * n}{t}",
    "%2E%2e": lambda b, t, n: f"{b}/{'%2E%2e/' * n}{t}",
    "%2E%2E": lambda b, t, n: f"{b}/{'%2E%2E/' * n}{t}",
    ".%2e": lambda b, t, n: f"{b}/{'.%2e/' * n}{t}",
    "%2e.": lambda b, t, n: f"{b}/{'%2e./' * n}{t}",
    "..%2f": lambda b, t, n: f"{b}/{'..%2f' * n}{t}",
    "..%2F": lambda b, t, n: f"{b}/{'..%2F' * n}{t}",
    "%2e%2e%2f": lambda b, t, n: f"{b}/{'%2e%2e%2f' * n}{t}",
    "%2f-only": lambda b, t, n: f"{b}%2f{'..%2f' * n}{t}",
    "..%5c": lambda b, t, n: f"{b}/{'..%5c' * n}{t}",
    "..%5C": lambda b, t, n: f"{b}/{'..%5C' * n}{t}",
    "backslash": lambda b, t, n: f"{b}/" + "..\\" * n + t,
    "backslash-only": lambda b, t, n: "\\" + t,
    "%252e": lambda b, t, n: f"{b}/{'%252e%252e/' * n}{t}",
    "overlong": lambda b, t, n: f"{b}/{'%c0%ae%c0%ae/' * n}{t}",
    "//": lambda b, t, n: f"{b}//{'..//' * n}{t}",
    "leading-//": lambda b, t, n: f"//{t}",
    "///-base": lambda b, t, n: f"/{b}///../{'../' * n}{t}",
    ";": lambda b, t, n: f"{b};/{'../' * n}{t}",
    "..;": lambda b, t, n: f"{b}/{'..;/' * n}{t}",
    ";-target": lambda b, t, n: f"/{t};{b}",
    "#": lambda b, t, n: f"{b}#/{'../' * n}{t}",
    "#-target": lambda b, t, n: f"/{t}#{b}",
    "?": lambda b, t, n: f"{b}?/{'../' * n}{t}",
    "?x=": lambda b, t, n: f"{b}?x=/{'../' * n}{t}",
    "??": lambda b, t, n: f"{b}??/../{t}",
    "?#": lambda b, t, n: f"{b}?#/{'../' * n}{t}",
    "?-target": lambda b, t, n: f"/{t}?{b}",
    "?%23": lambda b, t, n: f"{b}?%23/{'../' * n}{t}",
    "?%0d%0a": lambda b, t, n: f"{b}?x%20HTTP/1.1%0d%0aHost:%20x%0d%0a%0d%0aPOST%20/{t}%20HTTP/1.1%0d%0aX:",
    "absolute-admin": lambda b, t, n: f"http://127.0.0.1:15000/{t}",
    "absolute-dots": lambda b, t, n: f"http://localhost{b}/{'../' * n}{t}",
    "upper": lambda b, t, n: f"{b.upper()}/{'../' * n}{t}",
    "upper-target": lambda b, t, n: f"/{t.upper()}",
    "mixed-case": lambda b, t, n: f"{b[:2].upper()}{b[2:]}/{'../' * n}{t}",
    "%00": lambda b, t, n: f"{b}%00/{'../' * n}{t}",
    "%20": lambda b, t, n: f"{b}%20/{'../' * n}{t}",
    "no-slash": lambda b, t, n: t or "x",
}


@dataclass(frozen=True)
class Port:
    port: int
    bases: tuple[str, ...]
    targets: tuple[str, ...]
    ok_200: str  # what a 200 may carry: "prometheus" or "empty" or "either"


PORTS = {
    15090: Port(15090, ("/stats/prometheus",), ADMIN_READ + ADMIN_WRITE, "prometheus"),
    15021: Port(15021, ("/healthz/ready",), ADMIN_READ + ADMIN_WRITE + AGENT_WRITE, "empty"),
    15020: Port(15020, ("/stats/prometheus", "/healthz/ready"), ADMIN_READ + ADMIN_WRITE + AGENT_WRITE, "either"),
}


def http1(port: int, method: str, target: str, *, version: str = "HTTP/1.1", host: str | None = None,
          extra: str = "") -> dict:
    lines = [f"{method} {target} {version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += ["Connection: close", "Content-Length: 0"] if method == "POST" else ["Connection: close"]
    return {"host": POD4, "port": port, "data": "\r\n".join(lines) + "\r\n" + extra + "\r\n"}


def trick_requests(p: Port) -> list[dict]:
    out = []
    for base in p.bases:
        for t in p.targets:
            for make in TRICKS.values():
                target = make(base, t, base.count("/"))
                for method in ("GET", "POST"):
                    out.append(http1(p.port, method, target, host=f"{POD4}:{p.port}"))
    return out


def raw(port: int, data: str, expect: int = 1) -> dict:
    return {"host": POD4, "port": port, "data": data, "expect": expect}


def h2(port: int, method: str, path: str, authority: str = "x") -> dict:
    return {"host": POD4, "port": port, "h2": {"method": method, "path": path, "authority": authority}}


def framing_requests(p: Port) -> list[dict]:
    """Host headers, HTTP/1.0 and 0.9, pipelining, CONNECT, Upgrade, request smuggling and HTTP/2,
    each aimed at the admin or agent endpoints that have an effect."""
    base, n = p.bases[0], p.bases[0].count("/")
    admin, out = "127.0.0.1:15000", []
    for t in ("config_dump", "quitquitquit", "drain_listeners?inboundonly", "healthcheck/fail", "drain"):
        dots = f"{base}/{'../' * n}{t}"
        rewrites = "".join(f"{h}: /{t}\r\n" for h in ("X-Original-URL", "X-Rewrite-URL", "X-Envoy-Original-Path"))
        for method in ("GET", "POST"):
            out += [http1(p.port, method, f"/{t}", host=admin),
                    http1(p.port, method, f"/{t}", host="localhost:15000"),
                    http1(p.port, method, f"/{t}", host=admin, extra="Host: localhost\r\n"),
                    http1(p.port, method, base, host="x", extra=f"X-Forwarded-Host: {admin}\r\n{rewrites}"),
                    http1(p.port, method, dots, version="HTTP/1.0"),
                    http1(p.port, method, dots, version="HTTP/1.0", host=admin),
                    http1(p.port, method, dots),  # HTTP/1.1 without Host
                    raw(p.port, f"{method} /{t}\r\n"),  # HTTP/0.9
                    h2(p.port, method, dots), h2(p.port, method, f"/{t}", admin)]
        then = f"POST /{t} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        upgrade = ("Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                   "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n")
        out += [raw(p.port, f"GET {base} HTTP/1.1\r\nHost: x\r\n\r\n{then}", 2),  # pipelined
                raw(p.port, f"CONNECT {admin} HTTP/1.1\r\nHost: {admin}\r\n\r\n{then}", 2),
                raw(p.port, f"GET {base} HTTP/1.1\r\nHost: x\r\n{upgrade}\r\n{then}", 2),
                raw(p.port, f"POST {base} HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"  # CL and TE
                            f"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n{then}", 2)]
    return out


def send(pod: Pod, requests: list[dict]) -> list[dict]:
    cp = pod.remote.run([PY, script("sidecar/raw_http.py")], input=json.dumps(requests), timeout=600)
    answers = json.loads(cp.stdout)
    assert len(answers) == len(requests)
    return answers


def is_prometheus(body: str) -> bool:
    lines = [line for line in body.splitlines() if line]
    return bool(lines) and all(PROMETHEUS_LINE.fullmatch(line) for line in lines)


def verdict(p: Port, response: dict) -> str | None:
    """None when a response gives nothing away, else why it does."""
    text = response["head"] + "\r\n\r\n" + response["body"]
    if found := [m for m in ADMIN_MARKERS if m in text]:
        return f"admin content {found}"
    status, body = response["status"], response["body"]
    if status is None and body:
        return "bytes that are not HTTP"
    if status is None or status in REFUSED:
        return None
    if status == 200 and p.ok_200 in ("prometheus", "either") and is_prometheus(body):
        return None
    if status == 200 and p.ok_200 in ("empty", "either") and body == "":
        return None
    return f"status {status}"


def leaks(p: Port, requests: list[dict], answers: list[dict]) -> list[str]:
    out = []
    for req, ans in zip(requests, answers):
        for response in ans["responses"]:
            if why := verdict(p, response):
                shown = req.get("data") or req.get("h2")
                out.append(f"{why}: {shown!r} -> {response['status']} {response['body'][:120]!r}")
    return out


@dataclass(frozen=True)
class State:
    """What any admin or agent endpoint with an effect would change."""

    envoy_pids: tuple[int, ...]
    agent_running: bool
    server_state: int | None
    clusters_added: int | None
    listeners_stopped: int | None
    listeners_draining: int | None
    admin_ready: tuple[int, str]
    logging: str
    runtime: dict
    lookups: str
    inbound: tuple[int, str]
    ready_15021: int
    ready_15020: int


def state(pod: Pod, agent: Agent) -> State:
    admin = "http://127.0.0.1:15000"
    return State(
        tuple(agent.envoy_pids()), agent.proc.poll() is None, stat(pod.ns, "server.state"),
        stat(pod.ns, "cluster_manager.cluster_added"), stat(pod.ns, "listener_manager.listener_stopped"),
        stat(pod.ns, "listener_manager.total_listeners_draining"), curl(pod.ns, f"{admin}/ready"),
        curl(pod.ns, f"{admin}/logging")[1], json.loads(curl(pod.ns, f"{admin}/runtime")[1]),
        curl(pod.ns, f"{admin}/stats/recentlookups")[1].splitlines()[0],  # enabled or not; the count moves
        curl(pod.remote, f"http://{POD4}:8080/ok"),  # through 15006, which drain_listeners would close
        curl(pod.remote, f"http://{POD4}:15021/healthz/ready")[0],
        curl(pod.remote, f"http://{POD4}:15020/healthz/ready")[0])


@pytest.fixture(scope="module")
def env():
    pod = Pod.create(prefix="ax", ipv6=True)
    work = Path(tempfile.mkdtemp(prefix="admin-exposure-"))
    try:
        init = pod.istio_iptables(*ISTIO_INIT_ARGS)
        assert init.returncode == 0, init.stderr
        pod.spawn([PY, APP, "--http", "8080"], uid=APP_UID, wait_ready=True)
        agent = Agent.start(pod.ns, work, "--concurrency", "1", uid=PROXY_UID,
                            env={"INSTANCE_IP": POD4, "POD_NAME": "app-0", "POD_NAMESPACE": "default"})
        agent.wait_ready()
        before = state(pod, agent)
        assert before.inbound == (200, "app peer=127.0.0.6") and before.server_state == 0
        assert before.admin_ready == (200, "LIVE") and before.ready_15021 == before.ready_15020 == 200
        yield pod, agent, before
    finally:
        pod.close()
        shutil.rmtree(work, ignore_errors=True)


def test_admin_listens_on_loopback_only(env):
    pod, agent, _ = env
    listening = pod.ns.run(["ss", "-Hltn", "sport = :15000"]).stdout.split("\n")
    local = {line.split()[3].rsplit(":", 1)[0] for line in listening if line.strip()}
    assert local == {"127.0.0.1"}
    for host in (POD4, f"[{POD6}]"):
        for path in ("/server_info", "/config_dump"):
            code, body = curl(pod.remote, f"http://{host}:15000{path}", timeout=3)
            assert code == 0 and "LIVE" not in body and "configs" not in body, (host, path, code, body[:200])


@pytest.mark.parametrize("port", sorted(PORTS))
def test_no_encoding_reaches_admin_or_agent(env, port):
    pod, agent, before = env
    p = PORTS[port]
    requests = trick_requests(p) + framing_requests(p)
    answers = send(pod, requests)
    found = leaks(p, requests, answers)
    shown = "\n".join(found[:40])
    assert not found, f"{len(found)} of {len(requests)} requests to :{port} got through:\n{shown}"
    assert state(pod, agent) == before
    print(f"\n:{port}: {len(requests)} requests, none reached admin or had an effect")


def test_the_one_path_of_each_listener_still_works(env):
    pod, agent, before = env
    prometheus_accept = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
                         "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
    scrape = f"Accept: {prometheus_accept}\r\nUser-Agent: Prometheus/2.42.0\r\nX-Prometheus-Scrape-Timeout-Seconds: 10\r\n"
    stats = [http1(15090, "GET", "/stats/prometheus", host=f"{POD4}:15090", extra=scrape),
             http1(15090, "GET", "/stats/prometheus?usedonly", host="x"),
             http1(15090, "GET", "/stats/prometheus?filter=server&usedonly", host="x"),
             h2(15090, "GET", "/stats/prometheus"),
             http1(15020, "GET", "/stats/prometheus", host="x", extra=scrape)]
    ready = [http1(15021, "GET", "/healthz/ready", host=f"{POD4}:15021", extra="User-Agent: kube-probe/1.30\r\n"),
             http1(15021, "GET", "/healthz/ready?probe=1", host="x"),
             http1(15021, "HEAD", "/healthz/ready", host="x"),
             h2(15021, "GET", "/healthz/ready")]
    answers = send(pod, stats + ready)
    for req, ans in zip(stats, answers):
        assert ans["status"] == 200 and "envoy_server_live" in ans["body"], (req, ans["status"], ans["body"][:300])
    for req, ans in zip(ready, answers[len(stats):]):
        assert ans["status"] == 200, (req, ans)
    gz = pod.remote.run(["curl", "-s", "--compressed", "-D", "-", "-o", "/dev/null",
                         f"http://{POD4}:15090/stats/prometheus"]).stdout.lower()
    assert "content-encoding: gzip" in gz or "content-encoding: br" in gz or "content-encoding: zstd" in gz
    assert state(pod, agent) == before
