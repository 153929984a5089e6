"""The signals that stop the sidecar (kubelet's SIGTERM, a terminal's Ctrl-C), held during start-up.

From the first side effect on, the edge (agent.sidecar.command) blocks them: a stop signal sent
meanwhile stays pending, neither lost nor acted on half-way, until the supervisor's loop has its
handlers and unblocks them (agent.sidecar.supervisor). A handler that records them instead could
miss one arriving while the loop's own handler replaces it.
"""
from __future__ import annotations

import signal

STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})


def hold() -> set[int]:
    """Block the stop signals; returns the mask before, for `release`."""
    return signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def release(mask: set[int]) -> None:
    """The run has answered any stop signal still pending: drop it, then put the mask back (for
    callers in the same process, and the processes they start, which inherit it)."""
    while signal.sigtimedwait(STOP_SIGNALS, 0) is not None:
        pass
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def pending() -> int | None:
    """A stop signal sent while held, if any."""
    return min(signal.sigpending() & STOP_SIGNALS, default=None)
