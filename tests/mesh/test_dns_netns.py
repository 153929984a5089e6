"""The DNS proxy in a pod: `pilot-agent istio-iptables --redirect-dns` rules, the proxy as uid 1337
(tests/mesh/dns_runner.py fed a NameTable file), Debian's dnsmasq as the cluster resolver in the
remote namespace, and the app (uid 1000) resolving with the C library (getent) and dnspython.

Dual-stack pod: resolv.conf names the resolver on both families, so the proxy listens on 127.0.0.1
and [::1] and both families' DNS is redirected to it.
"""
from __future__ import annotations

import json
import signal
import subprocess

import pytest
from google.protobuf import json_format

from agent.mesh.protos import nds_pb2
from tests.mesh.dns_helpers import SEARCH, big_ips, dnsmasq_argv, external, kube, readable_dir
from tests.support.netns import APP_UID, ISTIO_INIT_ARGS, PROXY_UID, REMOTE4, REMOTE6, Pod
from tests.support.process import PY, script, wait_until

pytestmark = pytest.mark.netns
TIMEOUT = 2.0  # the proxy's bound for a forwarded query


def mesh_table() -> nds_pb2.NameTable:
    t = nds_pb2.NameTable()
    kube(t, "productpage", "ns1", "198.18.10.1", "2001:db8::a:1")
    kube(t, "reviews", "ns2", "198.18.10.2")
    external(t, "api.example.com", "240.240.0.5", "2001:2::f0f0:5")  # auto-allocated VIPs
    external(t, "*.wild.example", "198.18.10.4")
    external(t, "old.example", "198.18.10.6")
    return t


def write_table(path, table: nds_pb2.NameTable) -> None:
    path.write_text(json_format.MessageToJson(table))
    path.chmod(0o644)


class PodDns:
    def __init__(self) -> None:
        self.dir = readable_dir("dns-netns-")
        self.table = self.dir / "table.json"
        self.hosts = self.dir / "hosts"
        lines = ["198.18.5.5 www.external.test", "2001:db8::5 www.external.test"]
        lines += [f"{ip} big.external.test" for ip in big_ips(100)]
        self.hosts.write_text("\n".join(lines) + "\n")
        self.hosts.chmod(0o644)
        write_table(self.table, mesh_table())
        self.pod = Pod.create(ipv6=True, prefix="dn")
        (self.pod.ns.etc_dir / "resolv.conf").write_text(
            f"nameserver {REMOTE4}\nnameserver {REMOTE6}\nsearch {' '.join(SEARCH)}\n"
            "options ndots:5 timeout:5 attempts:1\n")
        self.resolver = None
        self.start_resolver()
        res = self.pod.istio_iptables(*ISTIO_INIT_ARGS, "--redirect-dns", "--dual-stack")
        assert res.returncode == 0, res.stderr
        self.proxy = self.pod.spawn([PY, script("mesh/dns_runner.py"), "serve", "--table", str(self.table),
                                     "--timeout", str(TIMEOUT), "--attempt-timeout", "1"],
                                    uid=PROXY_UID, wait_ready=True)

    def start_resolver(self) -> None:
        self.resolver = self.pod.remote.spawn(dnsmasq_argv([REMOTE4, REMOTE6], self.hosts))
        wait_until(lambda: self.pod.remote.run(["ss", "-lnu", "sport", "= :53"]).stdout.count(":53") >= 2,
                   timeout=10, what="dnsmasq listening")

    def stop_resolver(self) -> None:
        self.resolver.send_signal(signal.SIGTERM)
        self.resolver.wait(10)

    def getent(self, *args: str) -> list[list[str]]:
        cp = self.pod.run(["getent", *args], uid=APP_UID, check=False, timeout=30)
        return [line.split() for line in cp.stdout.splitlines()]

    def dig(self, *queries: str, server: str = REMOTE4, tcp: bool = False, edns: int = 0) -> list[dict]:
        argv = [PY, script("mesh/dns_runner.py"), "query", "--server", server, *queries]
        argv += ["--tcp"] if tcp else []
        argv += ["--edns", str(edns)] if edns else []
        cp = self.pod.run(argv, uid=APP_UID, timeout=60)
        return json.loads(cp.stdout)

    def reload(self, table: nds_pb2.NameTable) -> str:
        write_table(self.table, table)
        self.proxy.send_signal(signal.SIGHUP)
        return self.proxy.stdout.readline()

    def close(self) -> None:
        self.pod.close()
        subprocess.run(["rm", "-rf", str(self.dir)], check=False)


@pytest.fixture(scope="module")
def pod():
    p = PodDns()
    yield p
    p.close()


def values(reply: dict) -> list[str]:
    return sorted(v for _, t, v in reply["answers"] if t in ("A", "AAAA"))


# ---- mesh names ---------------------------------------------------------------------------------

def test_mesh_name_and_its_short_forms_through_the_c_library(pod):
    assert pod.getent("hosts", "productpage.ns1.svc.cluster.local")[0][0] in ("2001:db8::a:1", "198.18.10.1")
    assert pod.getent("ahostsv4", "productpage")[0][:1] == ["198.18.10.1"]
    assert pod.getent("ahostsv4", "reviews.ns2")[0][:1] == ["198.18.10.2"]
    assert pod.getent("ahostsv4", "reviews.ns2.svc")[0][:1] == ["198.18.10.2"]
    both = {row[0] for row in pod.getent("ahosts", "productpage")}
    assert both == {"198.18.10.1", "2001:db8::a:1"}
    # reviews has no IPv6 address: AAAA is an empty NOERROR, so getaddrinfo still succeeds
    assert {row[0] for row in pod.getent("ahosts", "reviews.ns2")} == {"198.18.10.2"}


def test_wildcard_and_auto_allocated_vips(pod):
    assert pod.getent("ahostsv4", "foo.wild.example")[0][:1] == ["198.18.10.4"]
    assert {row[0] for row in pod.getent("ahosts", "api.example.com")} == {"240.240.0.5", "2001:2::f0f0:5"}


def test_dnspython_answers_on_both_families(pod):
    v4, v6, empty = pod.dig("A:productpage.ns1.svc.cluster.local.", "AAAA:productpage.ns1.svc.cluster.local.",
                            "AAAA:reviews.ns2.svc.cluster.local.")
    assert values(v4) == ["198.18.10.1"] and values(v6) == ["2001:db8::a:1"]
    assert empty["rcode"] == "NOERROR" and empty["answers"] == []
    # the same over IPv6 to the resolv.conf server, redirected to [::1]:15053, and over TCP
    [over6] = pod.dig("A:api.example.com.ns1.svc.cluster.local.", server=REMOTE6)
    assert values(over6) == ["240.240.0.5"]
    [over_tcp] = pod.dig("AAAA:api.example.com.", tcp=True)
    assert values(over_tcp) == ["2001:2::f0f0:5"]


# ---- forwarded to the real resolver ---------------------------------------------------------------

def test_external_names_answered_by_the_resolver_through_the_proxy(pod):
    assert {row[0] for row in pod.getent("ahosts", "www.external.test")} == {"198.18.5.5", "2001:db8::5"}
    a, txt, missing = pod.dig("A:www.external.test.", "TXT:txt.external.test.", "A:nope.external.test.")
    assert values(a) == ["198.18.5.5"] and txt["answers"][0][2] == '"from dnsmasq"'
    assert missing["rcode"] == "NXDOMAIN"
    # a known name's other record types go to the resolver too
    [srv] = pod.dig("TXT:productpage.ns1.svc.cluster.local.")
    assert srv["rcode"] == "NXDOMAIN"


def test_large_answer_through_tcp(pod):
    [udp] = pod.dig("A:big.external.test.")
    assert udp["tc"] and len(udp["answers"]) < 100
    [tcp] = pod.dig("A:big.external.test.", tcp=True)
    assert len(values(tcp)) == 100
    assert len(pod.getent("ahostsv4", "big.external.test")) >= 100  # glibc retries over TCP itself


def test_resolver_down_is_servfail_in_bounded_time_then_back(pod):
    pod.stop_resolver()
    try:
        for tcp in (False, True):
            [down] = pod.dig("A:www.external.test.", tcp=tcp)
            assert down.get("rcode") == "SERVFAIL", down
            assert down["ms"] < (TIMEOUT + 1) * 1000
        [mesh] = pod.dig("A:productpage.")
        assert values(mesh) == ["198.18.10.1"]  # mesh names do not need the resolver
    finally:
        pod.start_resolver()
    [back] = pod.dig("A:www.external.test.")
    assert values(back) == ["198.18.5.5"]


# ---- NDS updates ----------------------------------------------------------------------------------

def test_nds_update_is_seen_by_the_next_query(pod):
    table = mesh_table()
    del table.table["old.example"]
    external(table, "new.example", "198.18.10.7")
    try:
        assert pod.reload(table).startswith("updated 5 ")
        new, old = pod.dig("A:new.example.", "A:old.example.")
        assert values(new) == ["198.18.10.7"]
        assert old["rcode"] == "NXDOMAIN"  # forwarded: the resolver does not know it
        assert pod.getent("ahostsv4", "new.example")[0][:1] == ["198.18.10.7"]
        assert pod.proxy.poll() is None  # same process, no restart
    finally:
        pod.reload(mesh_table())
    assert values(pod.dig("A:old.example.")[0]) == ["198.18.10.6"]
