"""Unix-domain sockets for the agent's gRPC servers (SDS and the xDS proxy), created the way Istio does.

Istio (https://github.com/istio/istio/blob/master/pkg/uds/listener.go) removes a stale socket file,
creates the parent directory (0750; failure only warned, the bind then reports the real problem),
listens, and makes the socket 0666 so Envoy (uid 1337) can connect whoever runs the agent.

The kernel keeps a socket path in `sun_path`, 108 bytes including the terminating NUL. grpc reports
a longer path as an opaque "failed to add port"; we say which path and why before trying.
"""
from __future__ import annotations

import asyncio
import os
from pathlib import Path

import grpc
import grpc.aio

from agent.sidecar import logs

log = logs.get("uds")

#: sizeof(struct sockaddr_un.sun_path) on Linux, the terminating NUL included.
SUN_PATH_MAX = 108


class UdsError(RuntimeError):
    """A Unix socket the agent must serve on cannot be created (one clear line: what and why)."""


def check_path(path: str | os.PathLike[str], what: str = "unix socket") -> str:
    """The path as grpc gets it; UdsError when the kernel cannot hold it."""
    text = os.fspath(path)
    size = len(os.fsencode(text))
    if not text:
        raise UdsError(f"{what} path is empty")
    if size >= SUN_PATH_MAX:
        raise UdsError(f'{what} path "{text}" is {size} bytes; the kernel allows at most '
                       f"{SUN_PATH_MAX - 1} (sun_path)")
    return text


def grpc_target(path: str) -> str:
    """grpc's address for a socket path (`unix:relative/path` and `unix:/absolute/path` both work)."""
    return f"unix:{path}"


def prepare(path: str, what: str = "unix socket") -> str:
    """Everything before the bind: length check, stale file removed, parent directory made."""
    text = check_path(path, what)
    try:
        os.unlink(text)
    except (FileNotFoundError, NotADirectoryError):
        pass  # nothing stale; the bind says what is wrong with the directory, if anything
    except OSError as e:
        raise UdsError(f'failed to remove stale {what} "{text}": {e.strerror}') from None
    parent = Path(text).parent
    try:
        parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    except OSError as e:
        log.warning(f"Failed to create directory for {text}: {e}")
    return text


def listen(server: grpc.aio.Server, path: str | os.PathLike[str], what: str = "unix socket") -> str:
    """Bind `server` (not yet started) to the socket at `path`; returns the path.

    The socket file exists once this returns (grpc binds on add_insecure_port); `make_public`
    must follow the server's start."""
    text = prepare(os.fspath(path), what)
    try:
        server.add_insecure_port(grpc_target(text))
    except RuntimeError as e:
        reason = _bind_reason(text)
        raise UdsError(f'failed to listen on {what} "{text}": {reason or e}') from None
    return text


def make_public(path: str) -> None:
    """chmod 0666: Envoy runs as another user than the agent in a pod."""
    try:
        os.chmod(path, 0o666)
    except OSError as e:
        log.warning(f"failed to chmod {path}: {e}")


def _bind_reason(path: str) -> str:
    """grpc hides errno; a plain bind of the same path names it (read-only file system, permission...)."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(path)
        except OSError as e:
            return e.strerror or str(e)
    os.unlink(path)
    return ""


async def is_live(path: str, timeout: float = 1.0) -> bool:
    """True when a server accepts connections on the socket at `path` (within `timeout` seconds).

    A plain connect, not a gRPC handshake as Istio dials: the kernel answers it at once (refused for
    a socket file nobody listens on), where a gRPC channel's readiness depends on how busy the
    machine is and made the answer flaky under load."""
    try:
        _reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(path), timeout)
    except (OSError, asyncio.TimeoutError):
        return False
    writer.close()
    return True
