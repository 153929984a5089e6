"""Run the proxyv2 image's containers without a container engine: buildah for the root filesystem,
chroot + mounts + setpriv for the rest, inside the harness's network namespaces.

    image = Image.build()                        # docker/build-local.sh (layer-cached), then inspect
    with image.container("istio-init") as init:  # `buildah from` + `buildah mount`, removed afterwards
        pod.ns.run(init.argv(["istio-iptables", ...], user="0"))
    with image.container("istio-proxy") as proxy:
        proc = pod.ns.spawn(proxy.argv(["proxy", "sidecar", ...], env=..., read_only=True,
                                       empty_dirs=["/etc/istio/proxy"]))

What a Kubernetes runtime would do, and this does: each container gets its own copy-on-write root
from the image; the image's ENTRYPOINT, Env, User and WorkingDir apply; /proc, a minimal /dev, /sys
and the pod's resolv.conf are mounted; `readOnlyRootFilesystem` becomes a read-only bind of the root
with tmpfs emptyDirs on top; a non-root user gets no capabilities and no_new_privs (the injector's
`capabilities: drop: [ALL]`, `allowPrivilegeEscalation: false`). The mounts are made inside the
mount namespace `ip netns exec` creates for the process, so they vanish with it.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "docker" / "build-local.sh"
DEFAULT_IMAGE = "localhost/agent-proxyv2:latest"

# Runs as root in the container's network namespace, in the private mount namespace that
# `ip netns exec` made. argv: <root> <read_only 0|1> [volume specs...] -- <command...>
_SETUP = r"""
set -eu
root=$1; ro=$2; shift 2
if [ "$ro" = 1 ]; then mount --bind "$root" "$root"; mount -o remount,bind,ro "$root"; fi
mount -t proc proc "$root/proc"
mount -t sysfs -o ro sysfs "$root/sys"
mount -t tmpfs -o mode=0755,nosuid tmpfs "$root/dev"
for d in null zero full random urandom tty; do
  : >"$root/dev/$d"; mount --bind "/dev/$d" "$root/dev/$d"
done
mkdir "$root/dev/shm" "$root/dev/pts"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/dev/shm"
ln -s /proc/self/fd "$root/dev/fd"
ln -s /proc/self/fd/0 "$root/dev/stdin"; ln -s /proc/self/fd/1 "$root/dev/stdout"; ln -s /proc/self/fd/2 "$root/dev/stderr"
# The pod's resolv.conf (`ip netns exec` bind-mounted /etc/netns/<ns>/resolv.conf over ours).
[ ! -e "$root/etc/resolv.conf" ] || mount --bind /etc/resolv.conf "$root/etc/resolv.conf"
# Volumes (targets already resolved inside the root, see in_root): "tmpfs:<target>" is an emptyDir
# (writable by the sidecar's fsGroup 1337), "ro:<host dir>:<target>" a read-only volume such as
# the downward-API podinfo.
while [ "$1" != "--" ]; do
  case $1 in
    tmpfs:*) mount -t tmpfs -o uid=1337,gid=1337,mode=0775 tmpfs "${1#tmpfs:}" ;;
    ro:*) spec=${1#ro:}; mount --bind "${spec%%:*}" "${spec#*:}"
          mount -o remount,bind,ro "${spec#*:}" ;;
    *) echo "container-setup: bad volume $1" >&2; exit 2 ;;
  esac
  shift
done
shift
exec "$@"
"""


def _run(argv: list[str], timeout: float = 120) -> str:
    cp = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if cp.returncode != 0:
        raise RuntimeError(f"{argv!r} exited {cp.returncode}: {cp.stderr.strip()[-2000:]}")
    return cp.stdout


def in_root(root: str, path: str) -> str:
    """`path` inside the container resolved to a host path under `root`, following symlinks as if
    chrooted (Debian's /var/run -> /run must not lead to the host's /run)."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            resolved = resolved[:-1]
            continue
        candidate = os.path.join(root, *resolved, part)
        if os.path.islink(candidate):
            hops += 1
            if hops > 40:
                raise OSError(f"too many symlinks resolving {path} in {root}")
            link = os.readlink(candidate)
            if link.startswith("/"):
                resolved = []
            parts = [p for p in link.split("/") if p not in ("", ".")] + parts
            continue
        resolved.append(part)
    return os.path.join(root, *resolved)


@dataclass(frozen=True)
class Image:
    name: str
    entrypoint: list[str]
    env: dict[str, str]
    user: str
    workdir: str
    size: str

    @classmethod
    def build(cls, name: str = DEFAULT_IMAGE) -> "Image":
        """Build with docker/build-local.sh unless AGENT_IMAGE_BUILD=0 (then reuse `name` as is)."""
        if os.environ.get("AGENT_IMAGE_BUILD", "1") != "0":
            env = {**os.environ, "IMAGE": name}
            cp = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True,
                                env=env, timeout=1500)
            if cp.returncode != 0:
                raise RuntimeError(f"build-local.sh failed ({cp.returncode}):\n{cp.stdout[-3000:]}\n{cp.stderr[-3000:]}")
        return cls.inspect(name)

    @classmethod
    def inspect(cls, name: str) -> "Image":
        data = json.loads(_run(["buildah", "inspect", "--type", "image", name]))
        cfg = data["OCIv1"]["config"]
        env = dict(item.split("=", 1) for item in cfg.get("Env", []))
        size = _run(["buildah", "images", "--format", "{{.Size}}", name]).split("\n")[0]
        return cls(name, list(cfg.get("Entrypoint") or []), env, cfg.get("User") or "0",
                   cfg.get("WorkingDir") or "/", size)

    def container(self, label: str) -> "Container":
        return Container.create(self, label)


@dataclass(eq=False)
class Container:
    """One container's root filesystem: a buildah working container, mounted."""

    image: Image
    label: str
    cid: str
    root: str
    _removed: bool = field(default=False, repr=False)
    _temp: list[str] = field(default_factory=list, repr=False)

    @classmethod
    def create(cls, image: Image, label: str) -> "Container":
        cid = _run(["buildah", "from", "--pull-never", image.name]).strip()
        try:
            root = _run(["buildah", "mount", cid]).strip()
        except BaseException:
            subprocess.run(["buildah", "rm", cid], capture_output=True)
            raise
        return cls(image, label, cid, root)

    def _ids(self, user: str) -> tuple[int, int]:
        """uid, gid for an image/pod `user` ("1337", "1337:1337", a name), via the image's passwd."""
        name, _, group = user.partition(":")
        passwd = (Path(self.root) / "etc/passwd").read_text().splitlines()
        for line in passwd:
            parts = line.split(":")
            if name in (parts[0], parts[2]):
                return int(parts[2]), int(group or parts[3])
        return int(name), int(group or name)

    def argv(self, args: list[str], *, env: dict[str, str] | None = None, user: str | None = None,
             read_only: bool = False, empty_dirs: tuple[str, ...] | list[str] = (),
             ro_volumes: dict[str, str] | None = None, command: list[str] | None = None,
             pod_hosts: str = "") -> list[str]:
        """The argv (for Netns.run/spawn, which run it as root) that starts ENTRYPOINT + args in
        this container (or `command` + args, as a pod's `command:` or an exec hook does), as
        `user` (default: the image's USER). `ro_volumes` maps container path -> host directory.
        /etc/hosts is kubelet's managed file (localhost entries + `pod_hosts` lines), as in any pod."""
        uid, gid = self._ids(user if user is not None else self.image.user)
        full_env = {**self.image.env, **(env or {})}
        argv = ["env", "-i", *(f"{k}={v}" for k, v in full_env.items()),
                "/usr/sbin/chroot", self.root]
        if uid != 0:
            # Runs inside the chroot (the image's own setpriv): root is needed for chroot itself.
            argv += ["/usr/bin/setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
                     "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]
        # chroot leaves the working directory at the new root; the image's WorkingDir is "/".
        assert self.image.workdir == "/", self.image.workdir
        argv += [*(command if command is not None else self.image.entrypoint), *args]
        volumes = [f"tmpfs:{self.mount_point(p)}" for p in empty_dirs]
        volumes += [f"ro:{host}:{self.mount_point(path)}" for path, host in (ro_volumes or {}).items()]
        volumes.append(f"ro:{self._hosts_file(pod_hosts)}:{in_root(self.root, '/etc/hosts')}")
        return ["sh", "-c", _SETUP, "container-setup", self.root, "1" if read_only else "0",
                *volumes, "--", *argv]

    def _hosts_file(self, extra: str) -> str:
        text = ("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n"
                "::1\tlocalhost ip6-localhost ip6-loopback\n" + (extra + "\n" if extra else ""))
        path = Path(tempfile.mkdtemp(prefix="hosts-")) / "hosts"
        path.write_text(text)
        path.parent.chmod(0o755)
        path.chmod(0o644)
        self._temp.append(str(path.parent))
        return str(path)

    def mount_point(self, path: str) -> str:
        """Like a runtime: create a missing mount point in the container's writable layer."""
        target = in_root(self.root, path)
        os.makedirs(target, exist_ok=True)
        return target

    def remove(self) -> None:
        if not self._removed:
            self._removed = True
            subprocess.run(["buildah", "umount", self.cid], capture_output=True)
            subprocess.run(["buildah", "rm", self.cid], capture_output=True)
            for d in self._temp:
                shutil.rmtree(d, ignore_errors=True)

    def __enter__(self) -> "Container":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
