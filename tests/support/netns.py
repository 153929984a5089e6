"""A "pod" network namespace and a "remote" one joined by a veth, for real-traffic tests.

    with Pod.create(ipv6=True) as pod:              # or the `pod_factory` fixture (tests/conftest.py)
        pod.run(["iptables-save"])                   # ip netns exec <pod> iptables-save
        pod.spawn_listener(tcp="15001,15006")        # tests/netns/origdst_listener.py as uid 1337
        pod.remote.spawn_listener(tcp="9090", tag="remote", uid=None)
        reply = pod.client(uid=1000).tcp(pod.remote_ip4, 9090)   # dict from the listener

Addresses (only inside namespaces we create): pod 198.18.0.10/24 and 2001:db8::10/64, remote
198.18.0.20/24 and 2001:db8::20/64, IPv6 without DAD so it is usable at once. The pod's
/etc/resolv.conf (bind-mounted by `ip netns exec` from /etc/netns/<name>/) names the remote as its
nameserver unless told otherwise.

Cleanup is guaranteed: `close()` (also via `with`, the fixtures and an atexit hook) kills every
process we spawned, deletes both namespaces and their /etc/netns directories, and keeps going
past individual failures.
"""
from __future__ import annotations

import atexit
import json
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.process import PILOT_AGENT, PY, script

POD4, REMOTE4 = "198.18.0.10", "198.18.0.20"
POD6, REMOTE6 = "2001:db8::10", "2001:db8::20"
PROXY_UID = 1337
APP_UID = 1000
#: The istio-init container's arguments as Istio's injector writes them (the agent's ports excluded).
ISTIO_INIT_ARGS = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "",
                   "-b", "*", "-d", "15090,15021,15020"]

#: Resolved once with the real PATH, so a test's PATH (e.g. counting shims) never sees them.
IP = shutil.which("ip") or "/usr/sbin/ip"
SETPRIV = shutil.which("setpriv") or "/usr/bin/setpriv"
BUILTIN_CHAINS = {"INPUT", "OUTPUT", "FORWARD", "PREROUTING", "POSTROUTING"}

_LIVE: set["Netns"] = set()


def _unique(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(3)}"


def sh(argv: list[str], *, check: bool = True, input: str | None = None, env: dict | None = None,
       timeout: float = 30) -> subprocess.CompletedProcess:
    """Run argv in the root namespace (only for `ip netns`/`ip link` plumbing)."""
    cp = subprocess.run(argv, input=input, capture_output=True, text=True, env=env, timeout=timeout)
    if check and cp.returncode != 0:
        raise RuntimeError(f"{argv!r} exited {cp.returncode}: {cp.stderr.strip()}")
    return cp


@dataclass(eq=False)
class Netns:
    """One named network namespace plus the processes we started inside it."""

    name: str
    procs: list[subprocess.Popen] = field(default_factory=list)

    @classmethod
    def create(cls, prefix: str = "nt") -> "Netns":
        ns = cls(_unique(prefix))
        sh(["ip", "netns", "add", ns.name])
        _LIVE.add(ns)
        ns.etc_dir.mkdir(parents=True, exist_ok=True)
        ns.run(["ip", "link", "set", "lo", "up"])
        return ns

    @property
    def etc_dir(self) -> Path:
        return Path("/etc/netns") / self.name

    def argv(self, argv: list[str], uid: int | None = None, caps: tuple[str, ...] = ()) -> list[str]:
        """argv wrapped to run inside this netns, optionally as `uid` (gid = uid, no groups)."""
        prefix = [IP, "netns", "exec", self.name]
        if uid is not None:
            prefix += [SETPRIV, f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
            if caps:
                spec = ",".join(f"+{c}" for c in caps)
                prefix += [f"--inh-caps={spec}", f"--ambient-caps={spec}"]
        return prefix + list(argv)

    def run(self, argv: list[str], *, uid: int | None = None, check: bool = True,
            input: str | None = None, env: dict | None = None, timeout: float = 60,
            caps: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
        return sh(self.argv(argv, uid, caps), check=check, input=input, env=env, timeout=timeout)

    def spawn(self, argv: list[str], *, uid: int | None = None, caps: tuple[str, ...] = (),
              wait_ready: bool = False, env: dict | None = None) -> subprocess.Popen:
        """Start a long-running process in the netns; killed by close(). With wait_ready, block
        until it prints its first stdout line (the listener prints `ready`)."""
        proc = subprocess.Popen(self.argv(argv, uid, caps), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)
        self.procs.append(proc)
        if wait_ready:
            line = proc.stdout.readline()
            if not line.startswith("ready"):
                proc.kill()
                raise RuntimeError(f"{argv!r} did not start: {line!r} {proc.stderr.read()}")
        return proc

    def spawn_listener(self, *, tcp: str = "", udp: str = "", tag: str = "proxy",
                       uid: int | None = PROXY_UID, transparent: bool = False) -> subprocess.Popen:
        argv = [PY, script("netns/origdst_listener.py"), "--tag", tag]
        argv += ["--tcp", tcp] if tcp else []
        argv += ["--udp", udp] if udp else []
        argv += ["--transparent"] if transparent else []
        caps = ("net_admin", "net_raw") if transparent and uid is not None else ()
        return self.spawn(argv, uid=uid, caps=caps, wait_ready=True)

    def client(self, uid: int | None = APP_UID, source: str | None = None) -> "Client":
        return Client(self, uid, source)

    def iptables_save(self, v6: bool = False, binary: str = "") -> str:
        """Live rules without the volatile comment lines and counters, for before/after diffs."""
        exe = binary or ("ip6tables-save" if v6 else "iptables-save")
        out = self.run([exe]).stdout
        return "".join(line + "\n" for line in out.splitlines() if not line.startswith("#"))

    def close(self) -> None:
        for proc in self.procs:
            try:
                if proc.poll() is None:
                    proc.kill()
                proc.wait(timeout=5)
                for pipe in (proc.stdout, proc.stderr, proc.stdin):
                    if pipe:
                        pipe.close()
            except Exception:  # keep going: the namespace must go regardless
                pass
        self.procs.clear()
        sh(["ip", "netns", "del", self.name], check=False)
        shutil.rmtree(self.etc_dir, ignore_errors=True)
        _LIVE.discard(self)


@dataclass(eq=False)
class Client:
    """Runs tests/netns/netclient.py in a netns as a uid; returns the listener's JSON reply."""

    ns: Netns
    uid: int | None
    source: str | None = None

    def _call(self, *args: str, timeout: float = 3) -> dict:
        argv = [PY, script("netns/netclient.py"), *args, "--timeout", str(timeout)]
        argv += ["--source", self.source] if self.source else []
        cp = self.ns.run(argv, uid=self.uid, check=False, timeout=timeout + 10)
        try:
            return json.loads(cp.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            return {"error": f"client exit {cp.returncode}: {cp.stdout!r} {cp.stderr!r}"}

    def tcp(self, host: str, port: int, timeout: float = 3) -> dict:
        return self._call("tcp", host, str(port), timeout=timeout)

    def udp(self, host: str, port: int, timeout: float = 3) -> dict:
        return self._call("udp", host, str(port), timeout=timeout)


@dataclass(eq=False)
class Pod:
    """The pod netns (`self.ns`) and the remote netns (`self.remote`) joined by a veth."""

    ns: Netns
    remote: Netns
    ipv4: bool
    ipv6: bool

    pod_ip4 = POD4
    pod_ip6 = POD6
    remote_ip4 = REMOTE4
    remote_ip6 = REMOTE6

    @classmethod
    def create(cls, *, ipv4: bool = True, ipv6: bool = False, nameservers: list[str] | None = None,
               prefix: str = "pa") -> "Pod":
        pod = remote = None
        try:
            pod, remote = Netns.create(prefix + "p"), Netns.create(prefix + "r")
            self = cls(pod, remote, ipv4, ipv6)
            self._wire()
            servers = nameservers if nameservers is not None else (
                [REMOTE4] if ipv4 else []) + ([REMOTE6] if ipv6 and not ipv4 else [])
            self.write_resolv_conf(servers)
            return self
        except BaseException:
            for ns in (pod, remote):
                if ns:
                    ns.close()
            raise

    def _wire(self) -> None:
        veth_p, veth_r = "eth0", "eth0"
        tmp = "v" + secrets.token_hex(4)
        sh(["ip", "link", "add", tmp, "netns", self.ns.name, "type", "veth", "peer", "name",
            tmp + "r", "netns", self.remote.name])
        for ns, old, new, a4, a6 in ((self.ns, tmp, veth_p, POD4, POD6),
                                     (self.remote, tmp + "r", veth_r, REMOTE4, REMOTE6)):
            ns.run(["ip", "link", "set", old, "name", new])
            if self.ipv6:
                ns.run(["sysctl", "-qw", f"net.ipv6.conf.{new}.accept_dad=0"])
                ns.run(["ip", "-6", "addr", "add", f"{a6}/64", "dev", new, "nodad"])
            else:
                ns.run(["sysctl", "-qw", f"net.ipv6.conf.{new}.disable_ipv6=1"])
            if self.ipv4:
                ns.run(["ip", "addr", "add", f"{a4}/24", "dev", new])
            ns.run(["ip", "link", "set", new, "up"])

    def write_resolv_conf(self, servers: list[str]) -> None:
        text = "".join(f"nameserver {s}\n" for s in servers)
        (self.ns.etc_dir / "resolv.conf").write_text(text or "# no nameservers\n")

    # Convenience pass-throughs to the pod namespace.
    def run(self, argv: list[str], **kw) -> subprocess.CompletedProcess:
        return self.ns.run(argv, **kw)

    def spawn(self, argv: list[str], **kw) -> subprocess.Popen:
        return self.ns.spawn(argv, **kw)

    def spawn_listener(self, **kw) -> subprocess.Popen:
        return self.ns.spawn_listener(**kw)

    def client(self, uid: int | None = APP_UID, source: str | None = None) -> Client:
        return self.ns.client(uid, source)

    def istio_iptables(self, *args: str, env: dict | None = None, timeout: float = 60,
                       ) -> subprocess.CompletedProcess:
        """`pilot-agent istio-iptables <args>` inside the pod netns (never checked)."""
        full_env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
        full_env.update(env or {})
        return self.ns.run([PILOT_AGENT, "istio-iptables", *args], check=False, env=full_env,
                           timeout=timeout)

    def save(self, v6: bool = False, binary: str = "") -> str:
        return self.ns.iptables_save(v6, binary)

    def save_all(self) -> str:
        """Both families and both backends: any rule anywhere shows up here."""
        parts = []
        for exe in ("iptables-legacy-save", "ip6tables-legacy-save", "iptables-nft-save",
                    "ip6tables-nft-save"):
            parts.append(f"## {exe}\n" + self.ns.iptables_save(binary=exe))
        return "".join(parts)

    def close(self) -> None:
        for ns in (self.ns, self.remote):
            try:
                ns.close()
            except Exception:
                pass

    def __enter__(self) -> "Pod":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def rules_only(save_text: str) -> str:
    """What matters of an iptables-save dump: the rules and user chains, not empty tables, built-in
    policies or counters (an nft table, once created, stays even when emptied)."""
    keep = []
    for line in save_text.splitlines():
        if line.startswith(("*", "#")) or line == "COMMIT" or not line.strip():
            continue
        if line.startswith(":") and line[1:].split()[0] in BUILTIN_CHAINS:
            continue
        keep.append(line.split(" [")[0] if line.startswith(":") else line)
    return "\n".join(keep)


SHIM = """#!/bin/sh
n=${0##*/}
printf '%s\\n' "$n $*${XTABLES_LOCKFILE:+ [XTABLES_LOCKFILE=$XTABLES_LOCKFILE]}" >> "$SHIM_LOG"
case " $SHIM_FAIL " in *" $n "*) echo "$n: injected failure" >&2; exit 1;; esac
PATH="$SHIM_REAL_PATH" exec "$n" "$@"
"""


@dataclass
class Shims:
    """A PATH of counting shims, one per executable in the system bin directories: each logs
    `<name> <args>` and execs the real program (or fails, for names in `fail`). Counting the
    log lines counts every process a command spawns by name."""

    root: Path
    fail: tuple[str, ...] = ()
    real_path: str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

    def __post_init__(self) -> None:
        bindir = self.root / "bin"
        bindir.mkdir(parents=True, exist_ok=True)
        script = self.root / "shim"
        script.write_text(SHIM)
        script.chmod(0o755)
        for d in self.real_path.split(":"):
            if not os.path.isdir(d):
                continue
            for name in os.listdir(d):
                link = bindir / name
                if not link.exists() and os.access(os.path.join(d, name), os.X_OK):
                    link.symlink_to(script)
        self.log.write_text("")

    @property
    def log(self) -> Path:
        return self.root / "calls.log"

    @property
    def env(self) -> dict:
        return {"PATH": str(self.root / "bin"), "SHIM_LOG": str(self.log), "SHIM_REAL_PATH": self.real_path,
                "SHIM_FAIL": " ".join(self.fail)}

    def calls(self) -> list[str]:
        return [line for line in self.log.read_text().splitlines() if line]

    def reset(self) -> None:
        self.log.write_text("")


@atexit.register
def _cleanup_all() -> None:
    for ns in list(_LIVE):
        try:
            ns.close()
        except Exception:
            pass
