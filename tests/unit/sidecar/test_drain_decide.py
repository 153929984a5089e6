"""drain.decide() with a fake clock: every branch of the wait after SIGTERM (a fixed
terminationDrainDuration, or with EXIT_ON_ZERO_ACTIVE_CONNECTIONS a minimum wait, then polling until
no connection is active; a missing stat or repeated poll failures end it)."""
import pytest

from agent.sidecar.config_model import SidecarConfig
from agent.sidecar.drain import NO_STAT, POLL_FAILED, Action, DrainPolicy, Step, decide, finish, quiet

DEFAULT = DrainPolicy(termination_drain=5.0)
ZERO = DrainPolicy(exit_on_zero=True, minimum_drain=5.0, poll_interval=1.0, max_poll_errors=5)


def test_default_mode_waits_the_rest_of_termination_drain():
    step = decide(1.5, None, DEFAULT)
    assert step.action == Action.WAIT and step.seconds == pytest.approx(3.5)


def test_default_mode_ignores_connections_and_stops_at_deadline():
    assert decide(5.0, 100, DEFAULT).action == Action.STOP
    assert decide(7.0, None, DEFAULT).action == Action.STOP


def test_zero_termination_drain_stops_at_once():
    assert decide(0.0, None, DrainPolicy(termination_drain=0)).action == Action.STOP


def test_exit_on_zero_waits_minimum_first_even_with_zero_connections():
    step = decide(2.0, 0, ZERO)
    assert step.action == Action.WAIT and step.seconds == pytest.approx(3.0)


def test_exit_on_zero_polls_after_minimum():
    assert decide(5.0, None, ZERO).action == Action.POLL


@pytest.mark.parametrize("active, action", [(0, Action.STOP), (3, Action.WAIT), (NO_STAT, Action.STOP)])
def test_exit_on_zero_after_poll(active, action):
    step = decide(6.0, active, ZERO)
    assert step.action == action
    if action == Action.WAIT:
        assert step.seconds == 1.0


def test_exit_on_zero_is_not_bounded_by_termination_drain():
    policy = DrainPolicy(termination_drain=1.0, exit_on_zero=True, minimum_drain=0.0)
    assert decide(3600.0, 7, policy).action == Action.WAIT


def test_poll_failures_retry_then_stop():
    step = decide(6.0, POLL_FAILED, ZERO, poll_errors=4)
    assert step.action == Action.WAIT and step.seconds == 1.0
    assert decide(6.0, POLL_FAILED, ZERO, poll_errors=5).action == Action.STOP


def test_simulated_drain_with_fake_clock():
    """Drive decide() like the controller does: connections fall 3, 2, 0 one poll at a time."""
    clock, polls, active, trace = 0.0, iter([3, 2, 0]), None, []
    while True:
        step = decide(clock, active, ZERO)
        trace.append(step.action)
        if step.action == Action.STOP:
            break
        if step.action == Action.POLL:
            active = next(polls)
        else:
            clock += step.seconds
            active = None
    assert clock == pytest.approx(7.0)
    assert trace == [Action.WAIT, Action.POLL, Action.WAIT, Action.POLL, Action.WAIT, Action.POLL, Action.STOP]


def test_policy_from_config():
    cfg = SidecarConfig(termination_drain_duration=2.0, exit_on_zero_active_connections=True, minimum_drain_duration=3.0)
    p = DrainPolicy.from_config(cfg)
    assert (p.termination_drain, p.exit_on_zero, p.minimum_drain) == (2.0, True, 3.0)


FINISH = DrainPolicy(finish_grace=5.0, finish_poll=0.05)


def test_finish_counts_then_stops_when_nothing_accepted_is_in_flight():
    assert finish(0.05, None, FINISH).action == Action.POLL
    step = finish(0.05, 3, FINISH)
    assert step == Step(Action.WAIT, 0.05, "3 accepted in flight")
    assert finish(0.1, 0, FINISH) == Step(Action.STOP, reason="no accepted request in flight")


def test_finish_is_bounded_by_the_grace():
    assert finish(4.98, 2, FINISH).seconds == pytest.approx(0.02)
    assert finish(5.0, 2, FINISH) == Step(Action.STOP, reason="2 accepted in flight after 5s")


def test_finish_tries_a_failed_count_again_until_the_grace():
    assert finish(1.0, POLL_FAILED, FINISH) == Step(Action.WAIT, 0.05, "the count failed")
    assert finish(5.0, POLL_FAILED, FINISH) == Step(Action.STOP, reason="the count failed after 5s")


def test_simulated_finish_whatever_the_two_durations():
    """However long the termination window was, the stop waits for the last accepted request."""
    for window in (0.0, 3.0, 60.0):
        clock, counts, trace = window + 0.05, iter([2, 1, 1, 0]), []
        started = window
        count = None
        while True:
            step = finish(clock - started, count, FINISH)
            trace.append(step.action)
            if step.action == Action.STOP:
                break
            if step.action == Action.POLL:
                count = next(counts)
            else:
                clock += step.seconds
                count = None
        assert trace[-1] == Action.STOP and count == 0 and clock == pytest.approx(window + 0.2)


QUIET = DrainPolicy(quiet_for=0.1, close_wait=2.0, finish_poll=0.05)


def test_the_listeners_close_once_no_connection_came_for_a_while():
    assert quiet(0.0, None, QUIET).action == Action.POLL
    assert quiet(0.05, 0.05, QUIET) == Step(Action.WAIT, 0.05, "connections arriving")
    assert quiet(0.3, 0.1, QUIET) == Step(Action.STOP, reason="no new connection for 0.1s")
    assert quiet(0.05 + 0.05, 0.05 + 0.05, QUIET).action == Action.STOP  # a sum of clock steps, not exactly 0.1


def test_connections_still_arriving_hold_the_close_at_most_close_wait():
    assert quiet(1.95, 0.0, QUIET).action == Action.WAIT
    assert quiet(2.0, 0.0, QUIET) == Step(Action.STOP, reason="connections still arriving after 2s")


def test_a_failed_count_of_new_connections_closes_at_once():
    assert quiet(0.0, POLL_FAILED, QUIET) == Step(Action.STOP, reason="new connections unknown: the count failed")
