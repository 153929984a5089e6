"""DNS capture end to end: a pod with `istio-iptables --redirect-dns`, the agent started as the injector
starts it plus ISTIO_META_DNS_CAPTURE=true (uid 1337), istiod serving its NDS name table through the
agent's xDS proxy, and dnsmasq on the hub as the cluster resolver. The app (uid 1000) resolves with
the C library (getent) and dnspython; mesh names can only come from the agent (dnsmasq does not
know them), external ones only from dnsmasq.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import pytest

from agent.mesh.dns import NOT_READY
from agent.mesh.protos import nds_pb2
from tests.mesh.dns_helpers import external, kube
from tests.mesh_e2e.dns_pod import (NAMESPACE, Resolver, add_pod, dns_listeners, dns_metrics, forget, getent,
                                    lookup, query, serve, values)
from tests.mesh_e2e.helpers import MeshPod
from tests.support.process import wait_until

pytestmark = pytest.mark.netns
#: Out of the way of conftest's allocator (198.18.4.30 upwards).
CAPTURE_IP, PLAIN_IP = "198.18.4.200", "198.18.4.201"
CAPTURE_ENV = {"ISTIO_META_DNS_CAPTURE": "true"}


def mesh_table() -> nds_pb2.NameTable:
    t = nds_pb2.NameTable()
    kube(t, "productpage", NAMESPACE, "198.18.7.1", "2001:db8::7:1")  # the pod's own namespace, dual-stack
    kube(t, "reviews", "ns2", "198.18.7.2")  # IPv4 only
    external(t, "api.example.com", "240.240.0.5", "2001:2::f0f0:5")  # ServiceEntry, auto-allocated VIPs
    external(t, "*.wild.example", "198.18.7.4")
    external(t, "old.example", "198.18.7.6")
    return t


def first(rows: list[list[str]]) -> str | None:
    return rows[0][0] if rows else None


@dataclass(eq=False)
class CapturePod:
    pod: MeshPod
    served: bool = False


@pytest.fixture(scope="module")
def resolver(mesh):
    r = Resolver(mesh.hub).start()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def capture(mesh, resolver):
    """The capturing pod, its agent started while istiod has no name table for it yet."""
    pod = add_pod(mesh, "dns-a", CAPTURE_IP, capture=True)
    serve(mesh, pod, None)
    pod.start_agent(env=CAPTURE_ENV)
    yield CapturePod(pod)
    forget(mesh, pod)
    mesh.close_pod(pod)


@pytest.fixture
def served(mesh, capture) -> MeshPod:
    """The capturing pod with its name table, ready."""
    if not capture.served:
        serve(mesh, capture.pod, mesh_table())
        capture.pod.wait_ready(30)
        capture.served = True
    return capture.pod


def test_ready_only_once_the_name_table_arrived(mesh, capture):
    pod = capture.pod
    assert not capture.served
    # Envoy gets its (empty) listeners and clusters; the table is all that is missing. The probe's
    # answer has no body: the agent logs the reason of each 503, as Istio's does.
    wait_until(lambda: pod.ready()[0] == 503 and f"NOT ready: {NOT_READY}" in pod.agent.log(), 30, 0.1,
               f"readiness failing with {NOT_READY!r}")
    [early] = query(pod, "A:productpage.nsd.svc.cluster.local.")
    assert early["rcode"] == "SERVFAIL", early
    assert pod.ready()[0] == 503
    serve(mesh, pod, mesh_table())
    start = time.monotonic()
    pod.wait_ready(10)
    capture.served = True
    assert time.monotonic() - start < 5
    assert len(dns_listeners(pod)) == 2, dns_listeners(pod)  # 127.0.0.1:15053 UDP and TCP (IPv4 resolver)
    assert "Traceback" not in pod.agent.log()


def test_mesh_names_through_the_c_library(served):
    # gethostbyname2(AF_INET6) first: the dual-stack name's IPv6 address; reviews has none (empty NOERROR)
    assert first(getent(served, "hosts", "productpage.nsd.svc.cluster.local")) == "2001:db8::7:1"
    assert first(getent(served, "hosts", "reviews.ns2.svc.cluster.local")) == "198.18.7.2"
    # short forms through the search list
    assert first(getent(served, "ahostsv4", "productpage")) == "198.18.7.1"
    assert first(getent(served, "hosts", "productpage")) == "2001:db8::7:1"
    assert first(getent(served, "ahostsv4", "reviews.ns2")) == "198.18.7.2"
    assert first(getent(served, "ahostsv4", "reviews.ns2.svc")) == "198.18.7.2"
    assert first(getent(served, "ahosts", "productpage.nsd")) == "198.18.7.1"  # IPv4-only pod: AI_ADDRCONFIG
    # wildcard and auto-allocated VIPs
    assert first(getent(served, "ahostsv4", "foo.wild.example")) == "198.18.7.4"
    assert first(getent(served, "ahostsv4", "api.example.com")) == "240.240.0.5"
    assert first(getent(served, "hosts", "api.example.com")) == "2001:2::f0f0:5"


def test_mesh_names_through_dnspython(served):
    got = lookup(served, "A:productpage", "AAAA:productpage", "A:reviews.ns2", "A:reviews.ns2.svc",
                 "AAAA:reviews.ns2", "A:a.b.wild.example", "A:api.example.com", "AAAA:api.example.com")
    assert [r["answers"] for r in got] == [["198.18.7.1"], ["2001:db8::7:1"], ["198.18.7.2"], ["198.18.7.2"], [],
                                           ["198.18.7.4"], ["240.240.0.5"], ["2001:2::f0f0:5"]], got
    assert got[4]["rcode"] == "NOERROR", got[4]  # a known name without IPv6: empty NOERROR, not NXDOMAIN
    # the first search-list candidate is the one answered (by the agent: dnsmasq does not know it)
    assert got[0]["name"] == "productpage.nsd.svc.cluster.local."
    # raw queries to the resolv.conf server, UDP and TCP, both redirected to the agent
    udp = query(served, "A:productpage.nsd.svc.cluster.local.", "AAAA:productpage.nsd.svc.cluster.local.")
    [tcp] = query(served, "A:api.example.com.", tcp=True)
    assert [values(r) for r in udp + [tcp]] == [["198.18.7.1"], ["2001:db8::7:1"], ["240.240.0.5"]]


def test_external_names_answered_by_the_resolver_through_the_agent(served):
    before = dns_metrics(served)
    assert "istio_agent_dns_requests_total" in before, sorted(before)
    assert first(getent(served, "ahostsv4", "www.external.test")) == "198.18.6.5"
    assert lookup(served, "A:www.external.test")[0]["answers"] == ["198.18.6.5"]
    missing, over_tcp = query(served, "A:nope.external.test."), query(served, "A:www.external.test.", tcp=True)
    assert missing[0]["rcode"] == "NXDOMAIN" and values(over_tcp[0]) == ["198.18.6.5"]
    after = dns_metrics(served)
    # the C library's search-list candidates, dnspython's, the two raw queries: all seen and forwarded
    assert after["istio_agent_dns_requests_total"] >= before["istio_agent_dns_requests_total"] + 4
    forwarded = after["istio_agent_dns_upstream_requests_total"] - before["istio_agent_dns_upstream_requests_total"]
    assert forwarded >= 4, (before, after)
    assert after["istio_agent_dns_upstream_failures_total"] == before["istio_agent_dns_upstream_failures_total"]


def test_nds_update_is_seen_by_the_next_query(mesh, served):
    agent_pid, envoys = served.agent.proc.pid, served.envoy_pids()
    table = mesh_table()
    del table.table["old.example"]
    external(table, "new.example", "198.18.7.7")
    try:
        serve(mesh, served, table)
        wait_until(lambda: lookup(served, "A:new.example")[0]["answers"] == ["198.18.7.7"], 10, 0.1,
                   "new.example from the pushed table")
        assert lookup(served, "A:old.example")[0]["rcode"] == "NXDOMAIN"  # forwarded: dnsmasq does not know it
        assert first(getent(served, "ahostsv4", "new.example")) == "198.18.7.7"
        assert first(getent(served, "ahostsv4", "productpage")) == "198.18.7.1"  # the rest unchanged
        assert served.agent.proc.poll() is None and served.agent.proc.pid == agent_pid
        assert served.envoy_pids() == envoys and served.ready()[0] == 200
    finally:
        serve(mesh, served, mesh_table())
    wait_until(lambda: lookup(served, "A:old.example")[0]["answers"] == ["198.18.7.6"], 10, 0.1, "table restored")


def test_capture_off_nothing_on_15053_and_the_app_uses_the_resolver(mesh, resolver):
    pod = add_pod(mesh, "dns-b", PLAIN_IP, capture=False)
    try:
        serve(mesh, pod, mesh_table())  # istiod would answer NDS; without capture the agent never asks
        pod.start_agent()
        pod.wait_ready(30)
        assert dns_listeners(pod) == []
        assert "15053" not in pod.ns.run(["iptables-save", "-t", "nat"]).stdout
        assert first(getent(pod, "ahostsv4", "www.external.test")) == "198.18.6.5"
        assert getent(pod, "ahostsv4", "productpage") == []  # dnsmasq does not know mesh names
        assert lookup(pod, "A:productpage.nsd.svc.cluster.local.")[0]["rcode"] == "NXDOMAIN"
        assert not [k for k in dns_metrics(pod) if k.startswith("istio_agent_dns_requests")]
    finally:
        forget(mesh, pod)
        mesh.close_pod(pod)
