"""When to stop waiting during a graceful drain, as pure functions (Istio's drain, as in
https://github.com/istio/istio/blob/master/pkg/envoy/agent.go, and one step after it).

The controller (agent.sidecar.drainer) asks `decide()` after every wake-up and does what it says:

- default mode: wait `terminationDrainDuration` after the inbound listeners were told to drain
  (gracefully, with `skip_exit`: Envoy does not close them itself when its `--drain-time-s` ends,
  the agent does, below);
- exit-on-zero mode (`EXIT_ON_ZERO_ACTIVE_CONNECTIONS=true`): wait `MINIMUM_DRAIN_DURATION`, then poll
  Envoy's `downstream_cx_active` every second until it is zero; a missing stat stops at once, and
  five polls in a row that fail stop too. `terminationDrainDuration` does not bound this mode (only
  kubelet's terminationGracePeriodSeconds does), as in Istio.

Then, beyond Istio, the listeners are closed, so that nothing new is accepted, and Envoy is stopped
once nothing they accepted is in flight (agent.sidecar.in_flight). Istio stops Envoy at the end of
the wait while its listeners still accept (they close only when Envoy's own `--drain-time-s` ends,
45 s by default), so a request accepted in the last instant, or still running, was cut.

- `quiet()`: when to close. Closing a listening socket resets the connections the kernel has
  completed and queued for it but the application has not accepted yet (Envoy closes its sockets
  just after its workers stop accepting), so a close while clients still connect can cut one.
  The listeners are closed once no new connection has come for `quiet_for` (in a pod the clients
  are gone by then: the failed readiness took the endpoint away), at the latest `close_wait` after
  the wait ended.
- `finish()`: after the close, until nothing accepted is in flight, at most `finish_grace`.

Envoy exiting by itself and a second signal are handled by the controller: they end any wait.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from agent.sidecar.config_model import SidecarConfig

#: `active_connections` value meaning "the stat is absent from Envoy's answer" (empty body).
NO_STAT = -1
#: `active_connections` value meaning "the last poll failed" (Envoy did not answer).
POLL_FAILED = -2
#: Slack in comparing durations made of clock differences (a sum of 50 ms steps is not exact).
EPSILON = 1e-6


class Action(str, Enum):
    WAIT = "wait"  # sleep `seconds` (ended early by Envoy exiting or a second signal)
    POLL = "poll"  # ask Envoy for downstream_cx_active now
    STOP = "stop"  # stop Envoy and exit


@dataclass(frozen=True, slots=True)
class Step:
    action: Action
    seconds: float = 0.0
    reason: str = ""


@dataclass(frozen=True, slots=True)
class DrainPolicy:
    termination_drain: float = 5.0
    exit_on_zero: bool = False
    minimum_drain: float = 5.0
    poll_interval: float = 1.0
    max_poll_errors: int = 5
    quiet_for: float = 0.1  # no new connection for this long: the listeners can close
    close_wait: float = 2.0  # the longest wait for that quiet moment
    finish_grace: float = 5.0  # the longest wait for accepted requests once the listeners are closed
    finish_poll: float = 0.05  # how often connections are counted, and the delay before the first count

    @classmethod
    def from_config(cls, cfg: SidecarConfig) -> DrainPolicy:
        return cls(termination_drain=cfg.termination_drain_duration,
                   exit_on_zero=cfg.exit_on_zero_active_connections, minimum_drain=cfg.minimum_drain_duration)


def decide(elapsed: float, active_connections: int | None, cfg: DrainPolicy, *, poll_errors: int = 0) -> Step:
    """Next step, `elapsed` seconds after the drain began.

    `active_connections`: None = not polled since the last wait; NO_STAT = stat absent;
    POLL_FAILED = the last poll failed; else the sum. `poll_errors`: consecutive failed polls.
    """
    if not cfg.exit_on_zero:
        left = cfg.termination_drain - elapsed
        if left > 0:
            return Step(Action.WAIT, left, "termination drain duration")
        return Step(Action.STOP, reason="termination drain duration elapsed")
    if elapsed < cfg.minimum_drain:
        return Step(Action.WAIT, cfg.minimum_drain - elapsed, "minimum drain duration")
    if active_connections is None:
        return Step(Action.POLL, reason="check active connections")
    if active_connections == POLL_FAILED:
        if poll_errors >= cfg.max_poll_errors:
            return Step(Action.STOP, reason=f"active connections unknown after {poll_errors} failed polls")
        return Step(Action.WAIT, cfg.poll_interval, "retry active connections")
    if active_connections == NO_STAT:
        return Step(Action.STOP, reason="downstream_cx_active stat not present")
    if active_connections <= 0:
        return Step(Action.STOP, reason="zero active connections")
    return Step(Action.WAIT, cfg.poll_interval, f"{active_connections} active connections")


def quiet(elapsed: float, since_new: float | None, cfg: DrainPolicy) -> Step:
    """Next step before the close, `elapsed` seconds after the wait ended. `since_new`: seconds
    since the listeners last accepted a new connection (None = not counted since the last wait;
    POLL_FAILED = the count failed: close now, as Istio would stop Envoy now)."""
    if since_new is None:
        return Step(Action.POLL, reason="count new connections")
    if since_new == POLL_FAILED:
        return Step(Action.STOP, reason="new connections unknown: the count failed")
    if since_new + EPSILON >= cfg.quiet_for:
        return Step(Action.STOP, reason=f"no new connection for {cfg.quiet_for:g}s")
    if elapsed + EPSILON >= cfg.close_wait:
        return Step(Action.STOP, reason=f"connections still arriving after {cfg.close_wait:g}s")
    return Step(Action.WAIT, cfg.finish_poll, "connections arriving")


def finish(elapsed: float, in_flight: int | None, cfg: DrainPolicy) -> Step:
    """Next step, `elapsed` seconds after the listeners were closed. `in_flight`: None = not counted
    since the last wait; POLL_FAILED = the count failed (tried again until `finish_grace`); else
    the connections and requests in flight. The controller waits `finish_poll` before the first
    count: a connection accepted just before the close has its request on the way, and until the
    request arrives the connection looks idle."""
    if in_flight is None:
        return Step(Action.POLL, reason="count accepted requests in flight")
    if in_flight == 0:
        return Step(Action.STOP, reason="no accepted request in flight")
    what = "the count failed" if in_flight == POLL_FAILED else f"{in_flight} accepted in flight"
    if elapsed + EPSILON >= cfg.finish_grace:
        return Step(Action.STOP, reason=f"{what} after {cfg.finish_grace:g}s")
    return Step(Action.WAIT, min(cfg.finish_poll, cfg.finish_grace - elapsed), what)
