"""Who Envoy runs as when the agent runs as root, and what that user must be able to reach.

The pod's istio-iptables rules send every outbound connection through Envoy except those of the
proxy's uid/gid (1337 by default, `-u`/`-g`). Envoy's own upstream connections only escape the
capture when Envoy runs as that uid: started as root, each request Envoy forwards is captured again
and loops through Envoy until it fails. Istio's injector never starts the proxy container as plain
root (it is uid 1337, or uid 0 with gid 1337 for TPROXY and `capNetBindService`), and Istio's agent
itself switches Envoy to 1337:1337 when it runs as root for DNS capture on :53
(https://github.com/istio/istio/blob/master/pkg/envoy/proxy.go, `AgentIsRoot`). This agent does it
whenever it runs as root, so that no way of starting it loops:

- the uid is the `istio-proxy` account's where it exists, else 1337: what istio-iptables exempts
  when `-u` is not given (its `ENVOY_USER` default); the gid is the same number (istio-iptables'
  `-g` defaults to the `-u` value) and there are no supplementary groups, as in Istio;
- the capabilities Envoy may need from a root start are kept as ambient capabilities, so they
  survive the uid change: CAP_NET_ADMIN (TPROXY's transparent sockets and marks) and
  CAP_NET_BIND_SERVICE (ports below 1024), each only if the agent has it;
- the agent's stdout/stderr, when they are pipes (a container runtime's, a supervisor's), are
  handed to that uid, as a container runtime does for a container's user: Envoy's access logs open
  `/dev/stdout` again by path, which a pipe owned by root refuses to any other uid.

What Envoy reads by path must be reachable by that uid: `reachable()` says why not, so that start-up
refuses with one line instead of Envoy failing later on a file it cannot open.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import stat
from dataclasses import dataclass

PROXY_ACCOUNT = "istio-proxy"
DEFAULT_PROXY_UID = 1337

CAP_NET_BIND_SERVICE = 10
CAP_NET_ADMIN = 12
#: What a root start gives Envoy that it may need as uid 1337, by capability number.
CARRIED_CAPS = {CAP_NET_BIND_SERVICE: "CAP_NET_BIND_SERVICE", CAP_NET_ADMIN: "CAP_NET_ADMIN"}

PR_SET_KEEPCAPS = 8
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

try:
    _libc = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - no libc (not Linux)
    _libc = None


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


@dataclass(frozen=True, slots=True)
class ProxyUser:
    """The credentials Envoy is started with (set in the child between fork and exec)."""

    uid: int
    gid: int
    caps: tuple[int, ...] = ()  # capability numbers kept as ambient capabilities
    why_root: str = ""  # set when Envoy keeps uid 0 and takes only the proxy's gid: what the uid could not reach

    def keeping_root(self, why: str) -> "ProxyUser":
        """uid 0 with this gid: Envoy's connections still leave the pod by the capture rules' gid-owner
        rule (istio-iptables writes one for `-g`, which defaults to the `-u` value), and Envoy reaches
        whatever root reaches. It is how Istio's injector runs a TPROXY pod's proxy (runAsUser 0,
        runAsGroup 1337), used when the proxy's uid cannot reach Envoy's binary or files."""
        return ProxyUser(0, self.gid, (), why)

    def describe(self) -> dict[str, object]:
        """Log fields."""
        return {"uid": self.uid, "gid": self.gid, "capabilities": ",".join(CARRIED_CAPS[c] for c in self.caps)}

    def become(self) -> None:
        """Take these credentials (the forked child, before exec). OSError on failure.

        The kernel clears the parent-death signal on a credential change: the caller sets it after.
        """
        if self.caps:
            _check(_libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0))  # keep the permitted set across setresuid
        os.setgroups([])
        os.setresgid(self.gid, self.gid, self.gid)
        os.setresuid(self.uid, self.uid, self.uid)
        if self.caps:
            mask = sum(1 << c for c in self.caps)
            data = (_CapData * 2)(_CapData(mask, mask, mask), _CapData(0, 0, 0))
            _check(_libc.capset(ctypes.byref(_CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)), data))
            for cap in self.caps:  # ambient: kept by the exec of Envoy's (capability-less) binary
                _check(_libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0))


def _check(result: int) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def for_agent(euid: int | None = None) -> ProxyUser | None:
    """The user Envoy runs as: None (the agent's own) unless the agent runs as root."""
    if (os.geteuid() if euid is None else euid) != 0:
        return None
    try:
        uid = pwd.getpwnam(PROXY_ACCOUNT).pw_uid
    except KeyError:
        uid = DEFAULT_PROXY_UID
    return ProxyUser(uid, uid, tuple(c for c in CARRIED_CAPS if c in _effective_caps()))


def take_gid(gid: int) -> int | None:
    """The agent (root, mesh mode) takes the proxy's gid as its real, effective and saved gid; the
    gid it had, or None when it had this one already.

    Its own connections (istiod, the CA, the DNS proxy's upstreams) come from the agent's process, not
    Envoy's: with gid 0 the pod's capture rules would send them into Envoy's outbound listener, which
    is not even listening when the first certificate is asked for. The rules' gid-owner exemption
    lets them out with the proxy's gid, as for Istio's `runAsUser: 0`, `runAsGroup: 1337` proxies;
    uid 0 reaches files as before. OSError when the kernel refuses."""
    was = os.getgid()
    if was == gid and os.getegid() == gid:
        return None
    os.setresgid(gid, gid, gid)
    return was


def _effective_caps() -> set[int]:
    try:
        with open("/proc/self/status") as f:
            line = next(line for line in f if line.startswith("CapEff:"))
    except (OSError, StopIteration):
        return set()
    bits = int(line.split()[1], 16)
    return {c for c in range(64) if bits >> c & 1}


def reachable(path: str, uid: int, gid: int, want: int) -> str | None:
    """None when `uid`:`gid` (no supplementary groups) can reach `path` with access `want`
    (os.R_OK, os.X_OK...), going by the mode bits of the path and of every directory above it;
    else what stops it, e.g. "/root is 0700, owner uid 0". A path with an ACL is taken as
    reachable (its entries are not read here): Envoy then says for itself."""
    path = os.path.abspath(path)
    parts = path.split("/")[1:]
    checks = [("/" + "/".join(parts[:i]), os.X_OK) for i in range(len(parts))] + [(path, want)]
    for where, need in checks:
        try:
            st = os.stat(where)
        except OSError as e:
            return f"{where}: {e.strerror}"
        if uid == 0 or _allowed(st, uid, gid, need) or _has_acl(where):
            continue
        return f"{where} is {stat.S_IMODE(st.st_mode):04o}, owner uid {st.st_uid} gid {st.st_gid}"
    return None


def _allowed(st: os.stat_result, uid: int, gid: int, need: int) -> bool:
    shift = 6 if st.st_uid == uid else 3 if st.st_gid == gid else 0
    bits = (st.st_mode >> shift) & 0o7
    return bits & need == need


def _has_acl(path: str) -> bool:
    try:
        return "system.posix_acl_access" in os.listxattr(path)
    except OSError:
        return False


def hand_over_stdio(user: ProxyUser) -> list[tuple[int, int, int]]:
    """Give the agent's stdout/stderr pipes to `user` (so Envoy can open /dev/stdout and
    /dev/stderr again); returns (fd, old uid, old gid) for `give_back_stdio`."""
    changed = []
    for fd in (1, 2):
        with contextlib.suppress(OSError):
            st = os.fstat(fd)
            if stat.S_ISFIFO(st.st_mode) and st.st_uid != user.uid:
                os.fchown(fd, user.uid, -1)
                changed.append((fd, st.st_uid, st.st_gid))
    return changed


def give_back_stdio(changed: list[tuple[int, int, int]]) -> None:
    for fd, uid, gid in changed:
        with contextlib.suppress(OSError):
            os.fchown(fd, uid, gid)
