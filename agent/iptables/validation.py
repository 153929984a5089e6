"""`--run-validation` (Istio's pkg/validation), extended: prove each capture path with a real connection.

Istio proves one path: a connection from the proxy uid over lo to 127.0.0.6:<probe-port> must
land on the inbound port (the uid-owner ISTIO_IN_REDIRECT rule). We prove, and report by name:

* `inbound-ipv4`  127.0.0.1 -> 127.0.0.6:<probe-port>, as the proxy uid, lands on 15006 (-z);
* `outbound-ipv4` an address routed out of the pod (not lo) -> <probe-port>, as a uid that is
  not the proxy's, lands on 15001 (-p) with that original destination;
* `inbound-ipv6` / `outbound-ipv6` the same with ::1, ::6 and an IPv6 destination, when IPv6 is on.

A listener on 127.0.0.1 / ::1 ports -p and -z (SO_REUSEADDR/SO_REUSEPORT; a port that will not
bind is skipped, as Istio does) reads SO_ORIGINAL_DST of each connection. A path passes when a
connection arrives on the right port with the probe's original destination. Clients retry every
0.2 s until --probe-timeout (default 5 s) for all paths together.

The uid a probe socket belongs to is what the owner match sees, so when we are root we create the
socket under a temporary effective uid/gid (seteuid/setegid, then back); no process is spawned.
A path we cannot exercise is reported as skipped, not failed: the outbound path when we are the
proxy uid without root (istio-validation runs as 1337, whose traffic bypasses capture by design),
or when the config captures no outbound traffic, or when no route leaves the pod.

The outbound destination never leaves the pod when capture works. It is taken from the pod's own
routes (/proc/net/route, /proc/net/ipv6_route): the last address of a directly connected subnet,
else a documentation/discard address (198.51.100.1, 100::1) when only a default route exists, or
an address inside the first -i CIDR of that family when -i lists CIDRs.
"""
from __future__ import annotations

import ipaddress
import os
import pwd
import select
import socket
import struct
import threading
import time
from contextlib import contextmanager

from agent.iptables.config import IptablesConfig
from agent.iptables.host import HostFacts
from agent.iptables.logger import log

SO_ORIGINAL_DST = 80
SOL_IPV6 = 41
NOBODY = 65534
FAILED_MESSAGE = (
    "iptables validation failed; workload is not ready for Istio.\n"
    "When using Istio CNI, this can occur if a pod is scheduled before the node is ready.\n\n"
    "If installed with 'cni.repair.deletePods=true', this pod should automatically be deleted "
    "and retry.\nOtherwise, this pod will need to be manually removed so that it is scheduled "
    "on a node with istio-cni running, allowing iptables rules to be established.\n")


class Path:
    """One capture path to prove."""

    def __init__(self, name: str, family: int, listen_port: int, dest: str, port: int, source: str | None,
                 uid: int | None, gid: int | None) -> None:
        self.name, self.family = name, family
        self.listen_port = listen_port  # where the connection must land
        self.dest, self.port = dest, port  # where the probe connects (its original destination)
        self.source = source
        self.uid, self.gid = uid, gid  # effective ids for the probe socket; None: as we are
        self.skip = ""
        self.passed = False
        self.error = ""

    @property
    def orig(self) -> str:
        return f"[{self.dest}]:{self.port}" if self.family == 6 else f"{self.dest}:{self.port}"


# ---- choosing the paths -------------------------------------------------------------------------

def _numeric_id(text: str) -> int | None:
    if text.isdigit():
        return int(text)
    try:
        return pwd.getpwnam(text).pw_uid
    except KeyError:
        return None


def _v4_routes(path: str = "/proc/net/route") -> list[tuple[str, ipaddress.IPv4Network, bool]]:
    """(iface, network, has_gateway) of the main table, from /proc (no process)."""
    out = []
    try:
        with open(path) as f:
            for line in list(f)[1:]:
                w = line.split()
                dest, gw, mask = (struct.pack("<I", int(x, 16)) for x in (w[1], w[2], w[7]))
                net = ipaddress.IPv4Network((socket.inet_ntoa(dest), socket.inet_ntoa(mask)), strict=False)
                out.append((w[0], net, gw != b"\0\0\0\0"))
    except (OSError, ValueError, IndexError):
        pass
    return out


def _v6_routes(path: str = "/proc/net/ipv6_route") -> list[tuple[str, ipaddress.IPv6Network, bool]]:
    out = []
    try:
        with open(path) as f:
            for line in f:
                w = line.split()
                net = ipaddress.IPv6Network((bytes.fromhex(w[0]), int(w[1], 16)), strict=False)
                if w[9] == "lo" or net.network_address.is_multicast or net.network_address.is_link_local:
                    continue
                out.append((w[9], net, int(w[4], 16) != 0))
    except (OSError, ValueError, IndexError):
        pass
    return out


def outbound_destination(cfg: IptablesConfig, family: int, host_ip: str) -> str | None:
    """An address whose route leaves the pod and that these flags capture (None: none found)."""
    cidrs = [c for c in cfg.service_cidrs if c != "*" and (":" in c) == (family == 6)]
    if cfg.service_cidrs and not cfg.outbound_all and cidrs:
        net = ipaddress.ip_network(cidrs[0], strict=False)
        return str(net.network_address + (1 if net.num_addresses > 2 else 0))
    routes = _v4_routes() if family == 4 else _v6_routes()
    for iface, net, gateway in routes:
        if iface != "lo" and not gateway and 0 < net.prefixlen < net.max_prefixlen - 1:
            candidate = net.broadcast_address - 1
            if str(candidate) == host_ip:
                candidate -= 1
            return str(candidate)
    if any(net.prefixlen == 0 for _, net, _ in routes):
        return "198.51.100.1" if family == 4 else "100::1"
    return None


def _outbound_ids(cfg: IptablesConfig) -> tuple[int | None, int | None, str]:
    """(uid, gid, why-not) for the outbound probe: a socket the proxy-uid/gid rules do not skip."""
    bypassed = str(os.geteuid()) in cfg.proxy_uids or str(os.getegid()) in cfg.proxy_gids
    if not bypassed:
        return None, None, ""
    if os.geteuid() == 0:
        return NOBODY, NOBODY, ""
    return None, None, "running as the proxy uid without root: its traffic bypasses capture"


def plan(cfg: IptablesConfig, facts: HostFacts) -> list[Path]:
    proxy_uid = next((u for u in map(_numeric_id, cfg.proxy_uids) if u is not None), 1337)
    proxy_gid = next((int(g) for g in cfg.proxy_gids if g.isdigit()), proxy_uid)
    in_uid = None if os.geteuid() == proxy_uid else proxy_uid
    out_uid, out_gid, out_skip = _outbound_ids(cfg)
    port = cfg.probe_port if cfg.service_cidrs else (int(cfg.outbound_ports[0]) if cfg.outbound_ports else 0)
    paths = []
    for family in (4, 6) if facts.enable_ipv6 else (4,):
        lo, passthrough = ("127.0.0.1", "127.0.0.6") if family == 4 else ("::1", "::6")
        paths.append(Path(f"inbound-ipv{family}", family, int(cfg.inbound_capture_port), passthrough,
                          cfg.probe_port, lo, in_uid, proxy_gid if in_uid is not None else None))
        dest = outbound_destination(cfg, family, facts.host_ip) if port else None
        out = Path(f"outbound-ipv{family}", family, int(cfg.envoy_port), dest or "", port, None, out_uid, out_gid)
        out.skip = ("no outbound capture configured (-i and -q are empty)" if not port else
                    "no route leaves the pod" if dest is None else out_skip)
        paths.append(out)
    return paths


# ---- running them -------------------------------------------------------------------------------

@contextmanager
def effective_ids(uid: int | None, gid: int | None):
    """Sockets created inside belong to uid/gid (what `-m owner` matches). Root only."""
    if uid is None:
        yield
        return
    old_uid, old_gid = os.geteuid(), os.getegid()
    os.setegid(gid if gid is not None else uid)
    os.seteuid(uid)
    try:
        yield
    finally:
        os.seteuid(old_uid)
        os.setegid(old_gid)


def _original_dst(conn: socket.socket) -> str:
    try:
        if conn.family == socket.AF_INET:
            raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
            port, packed = struct.unpack_from("!2xH4s", raw)
            return f"{socket.inet_ntop(socket.AF_INET, packed)}:{port}"
        raw = conn.getsockopt(SOL_IPV6, SO_ORIGINAL_DST, 28)
        port, packed = struct.unpack_from("!2xH4x16s", raw)
        return f"[{socket.inet_ntop(socket.AF_INET6, packed)}]:{port}"
    except OSError:
        return ""


class Server:
    """Listens on lo for the capture ports; records (listener port, original destination)."""

    def __init__(self, ports: tuple[int, ...], families: tuple[int, ...]) -> None:
        self.ports, self.families = ports, families
        self.seen: set[tuple[int, str]] = set()
        self.arrived = threading.Condition()  # notified whenever `seen` grows
        self.socks: list[socket.socket] = []
        self.stop = threading.Event()

    def start(self) -> list[str]:
        errors = []
        for family in self.families:
            host, af = ("127.0.0.1", socket.AF_INET) if family == 4 else ("::1", socket.AF_INET6)
            for port in self.ports:
                s = socket.socket(af, socket.SOCK_STREAM)
                try:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                    s.bind((host, port))
                    s.listen(16)
                    self.socks.append(s)
                except OSError as e:
                    s.close()
                    errors.append(f"listen {host}:{port}: {e}")
        threading.Thread(target=self._loop, daemon=True).start()
        return errors

    def _loop(self) -> None:
        while not self.stop.is_set():
            readable, _, _ = select.select(self.socks, [], [], 0.1)
            for s in readable:
                try:
                    conn, _ = s.accept()
                except OSError:
                    continue
                orig = _original_dst(conn)
                with self.arrived:
                    self.seen.add((s.getsockname()[1], orig))
                    self.arrived.notify_all()
                try:
                    conn.sendall(orig.rsplit(":", 1)[-1].encode())  # Istio writes the port
                except OSError:
                    pass
                conn.close()

    def wait_for(self, wanted: set[tuple[int, str]], timeout: float) -> None:
        """Until every wanted (port, original destination) has arrived, or timeout."""
        with self.arrived:
            self.arrived.wait_for(lambda: wanted <= self.seen, timeout)

    def close(self) -> None:
        self.stop.set()
        for s in self.socks:
            s.close()


def _probe_once(path: Path) -> None:
    af = socket.AF_INET if path.family == 4 else socket.AF_INET6
    with effective_ids(path.uid, path.gid):
        s = socket.socket(af, socket.SOCK_STREAM)
    with s:
        s.settimeout(1)
        if path.source:
            s.bind((path.source, 0))
        s.connect((path.dest, path.port))


def run(cfg: IptablesConfig, facts: HostFacts, timeout: float | None = None) -> bool:
    """Probe every path; log each by name; True when none failed (skipped paths do not fail)."""
    paths = plan(cfg, facts)
    server = Server((int(cfg.envoy_port), int(cfg.inbound_capture_port)),
                    tuple(sorted({p.family for p in paths})))
    errors = server.start()
    if not server.socks:
        log.error("validation: no listener available: %s", "; ".join(errors))
        log.error("%s", FAILED_MESSAGE)
        return False
    deadline = time.monotonic() + (cfg.probe_timeout if timeout is None else timeout)
    try:
        _drive([p for p in paths if not p.skip], server, deadline)
    finally:
        server.close()
    return _report(paths)


def _drive(active: list[Path], server: Server, deadline: float) -> None:
    while active and time.monotonic() < deadline:
        for path in active:
            try:
                _probe_once(path)
            except OSError as e:
                path.error = str(e)
        # The listener thread records each arrival; wait for them (up to 0.2 s before retrying)
        # rather than a fixed 0.2 s: when capture works, they are there within a millisecond.
        server.wait_for({(p.listen_port, p.orig) for p in active}, 0.2)
        for path in active:
            path.passed = (path.listen_port, path.orig) in server.seen
        active = [p for p in active if not p.passed]


def _report(paths: list[Path]) -> bool:
    ok = True
    for p in paths:
        if p.skip:
            log.warning("validation path=%s result=skipped reason=%r", p.name, p.skip)
        elif p.passed:
            log.info("validation path=%s result=passed probe=%s landed_on=%d", p.name, p.orig, p.listen_port)
        else:
            ok = False
            log.error("validation path=%s result=failed probe=%s expected_on=%d error=%r", p.name, p.orig,
                      p.listen_port, p.error or "validation timeout")
    if ok:
        log.info("Validation passed, iptables rules established")
    else:
        log.error("%s", FAILED_MESSAGE)
    return ok
