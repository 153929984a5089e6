"""The Istio init-container command line, applied by `pilot-agent istio-iptables` in a fresh pod
netns, proven with real connections (issue 2, "Tests that must exist"):

    -p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x "" -b '*' -d 15090,15020

One pod per backend (iptables, and native nftables with `--native-nftables`): the rules are applied
once; every test only connects, with the same expectations for both.
"""
from __future__ import annotations

import pytest

from tests.netns.backends import init, state
from tests.support.netns import APP_UID, POD4, PROXY_UID, REMOTE4, Pod

INIT_ARGS = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "",
             "-b", "*", "-d", "15090,15020"]


@pytest.fixture(scope="module")
def pod(backend):
    pod = Pod.create()
    try:
        pod.remote.spawn_listener(tcp="9090,8080", tag="remote", uid=None)
        pod.spawn_listener(tcp="15001,15006", tag="proxy", uid=PROXY_UID)
        pod.spawn_listener(tcp="8080,15090,15020,15008", tag="app", uid=APP_UID)
        res = init(pod, backend, *INIT_ARGS)
        assert res.returncode == 0, res.stderr
        yield pod
    finally:
        pod.close()


def test_inbound_connection_lands_on_15006_with_original_destination(pod):
    reply = pod.remote.client(uid=None).tcp(POD4, 8080)
    assert (reply.get("tag"), reply.get("listener"), reply.get("orig")) == ("proxy", 15006, f"{POD4}:8080"), reply
    assert reply["how"] == "SO_ORIGINAL_DST"


def test_app_outbound_connection_lands_on_15001_with_original_destination(pod):
    reply = pod.client(uid=APP_UID).tcp(REMOTE4, 9090)
    assert (reply.get("tag"), reply.get("listener"), reply.get("orig")) == ("proxy", 15001, f"{REMOTE4}:9090"), reply


def test_root_is_not_the_proxy_so_it_is_captured_too(pod):
    reply = pod.client(uid=0).tcp(REMOTE4, 9090)
    assert (reply.get("listener"), reply.get("orig")) == (15001, f"{REMOTE4}:9090"), reply


def test_proxy_uid_bypasses_capture(pod):
    reply = pod.client(uid=PROXY_UID).tcp(REMOTE4, 9090)
    assert (reply.get("tag"), reply.get("listener")) == ("remote", 9090), reply


@pytest.mark.parametrize("port", [15090, 15020, 15008])
def test_excluded_inbound_ports_and_tunnel_port_reach_the_app(pod, port):
    reply = pod.remote.client(uid=None).tcp(POD4, port)
    assert (reply.get("tag"), reply.get("listener")) == ("app", port), reply


def test_localhost_is_not_captured(pod):
    reply = pod.client(uid=APP_UID).tcp("127.0.0.1", 8080)
    assert (reply.get("tag"), reply.get("listener")) == ("app", 8080), reply


def test_app_calling_its_own_pod_ip_reaches_the_app_directly(pod):
    reply = pod.client(uid=APP_UID).tcp(POD4, 8080)
    assert (reply.get("tag"), reply.get("listener")) == ("app", 8080), reply


def test_proxy_calling_its_own_pod_ip_goes_back_through_inbound(pod):
    reply = pod.client(uid=PROXY_UID).tcp(POD4, 8080)
    assert (reply.get("tag"), reply.get("listener"), reply.get("orig")) == ("proxy", 15006, f"{POD4}:8080"), reply


def test_inbound_passthrough_from_127_0_0_6_is_not_captured(pod):
    reply = pod.client(uid=PROXY_UID, source="127.0.0.6").tcp(POD4, 8080)
    assert (reply.get("tag"), reply.get("listener")) == ("app", 8080), reply


def test_rerun_with_same_flags_changes_nothing(pod, backend):
    before = state(pod)
    res = init(pod, backend, *INIT_ARGS)
    assert res.returncode == 0, res.stderr
    assert "already in place" in res.stderr
    assert state(pod) == before


def test_verify_reports_rules_in_place(pod, backend):
    res = init(pod, backend, *INIT_ARGS, "--verify")
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout == ""
