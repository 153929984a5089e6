"""The DNS proxy's lookup table, answer by answer: Istio's worked example (pod in ns1), in Istio's
CNAME form and in ours (address records owned by the queried name, every search domain)."""
from __future__ import annotations

import dns.flags
import dns.message
import dns.rcode
import pytest

from agent.mesh.dns_table import LookupTable, ResolvConf, TableSettings, aliases
from agent.mesh.protos import nds_pb2
from tests.mesh.dns_helpers import SEARCH, external, kube, worked_example

OURS = TableSettings("ns1", "ns1.svc.cluster.local", SEARCH)
ISTIO = TableSettings("ns1", "ns1.svc.cluster.local", SEARCH, istio_cnames=True)


def ask(table: LookupTable, name: str, rdtype: str = "A", **kw) -> dns.message.Message | None:
    return table.answer(dns.message.make_query(name, rdtype, **kw))


def records(reply: dns.message.Message) -> list[tuple[str, str, str]]:
    return [(rrset.name.to_text(), dns.rdatatype.to_text(rrset.rdtype), rd.to_text())
            for rrset in reply.answer for rd in sorted(rrset, key=str)]


@pytest.fixture(params=["ours", "istio"])
def both(request):
    return request.param, LookupTable(worked_example(), OURS if request.param == "ours" else ISTIO)


# ---- what both forms agree on -----------------------------------------------------------------

@pytest.mark.parametrize("name,rdtype,expected", [
    ("productpage.ns1.svc.cluster.local.", "A", [("productpage.ns1.svc.cluster.local.", "A", "10.0.0.1")]),
    ("productpage.", "A", [("productpage.", "A", "10.0.0.1")]),
    ("productpage.ns1.", "A", [("productpage.ns1.", "A", "10.0.0.1")]),
    ("reviews.ns2.svc.", "A", [("reviews.ns2.svc.", "A", "10.0.0.2")]),
    ("api.example.com.", "AAAA", [("api.example.com.", "AAAA", "2001:2::f0f0:5")]),
    ("api.example.com.", "A", [("api.example.com.", "A", "240.240.0.5")]),
    ("foo.wild.com.", "A", [("foo.wild.com.", "A", "1.2.3.4")]),
    ("a.b.wild.com.", "A", [("a.b.wild.com.", "A", "1.2.3.4")]),
    ("ProductPage.NS1.svc.cluster.local.", "A", [("ProductPage.NS1.svc.cluster.local.", "A", "10.0.0.1")]),
])
def test_direct_names(both, name, rdtype, expected):
    reply = ask(both[1], name, rdtype)
    assert reply.rcode() == dns.rcode.NOERROR and reply.flags & dns.flags.AA
    assert records(reply) == expected
    assert all(rrset.ttl == 30 for rrset in reply.answer)


@pytest.mark.parametrize("name", ["productpage.ns1.svc.cluster.local.", "productpage.", "foo.wild.com.",
                                  "reviews.ns2.ns1.svc.cluster.local."])
def test_known_name_without_that_family_is_an_empty_noerror(both, name):
    reply = ask(both[1], name, "AAAA")
    assert reply.rcode() == dns.rcode.NOERROR and reply.flags & dns.flags.AA
    assert reply.answer == []  # not NXDOMAIN: glibc asks A and AAAA together (istio#31250)


@pytest.mark.parametrize("name,rdtype", [
    ("reviews.", "A"),  # another namespace: no bare short name
    ("www.google.com.ns1.svc.cluster.local.", "A"),
    ("wild.com.", "A"),  # a wildcard covers subdomains only
    ("productpage.ns1.svc.cluster.local.", "SRV"), ("productpage.", "MX"), ("api.example.com.", "TXT"),
    ("1.0.0.10.in-addr.arpa.", "PTR"), ("foo.wild.com.", "CNAME"), ("productpage.", "ANY"),
    ("productpage.ns1.svc.cluster.local.ns1.svc.cluster.local.", "A"),  # not expanded: already ends so
])
def test_unknown_names_and_other_types_are_forwarded(both, name, rdtype):
    assert ask(both[1], name, rdtype) is None


def test_reply_echoes_the_query():
    q = dns.message.make_query("productpage.", "A", use_edns=0)
    q.flags |= dns.flags.CD
    reply = LookupTable(worked_example(), OURS).answer(q)
    assert reply.id == q.id and reply.flags & dns.flags.QR and reply.flags & dns.flags.RD
    assert reply.flags & dns.flags.CD and not reply.flags & dns.flags.RA
    assert len(reply.question) == 1 and reply.edns == 0


# ---- search-domain forms: ours vs Istio's ------------------------------------------------------

@pytest.mark.parametrize("name,expected", [
    ("reviews.ns2.ns1.svc.cluster.local.", [("reviews.ns2.ns1.svc.cluster.local.", "A", "10.0.0.2")]),
    ("reviews.ns2.svc.ns1.svc.cluster.local.", [("reviews.ns2.svc.ns1.svc.cluster.local.", "A", "10.0.0.2")]),
    ("api.example.com.ns1.svc.cluster.local.", [("api.example.com.ns1.svc.cluster.local.", "A", "240.240.0.5")]),
    ("foo.wild.com.ns1.svc.cluster.local.", [("foo.wild.com.ns1.svc.cluster.local.", "A", "1.2.3.4")]),
    # every search domain, not only the first
    ("api.example.com.svc.cluster.local.", [("api.example.com.svc.cluster.local.", "A", "240.240.0.5")]),
    ("reviews.ns2.cluster.local.", [("reviews.ns2.cluster.local.", "A", "10.0.0.2")]),
])
def test_search_forms_are_answered_for_the_queried_name(name, expected):
    assert records(ask(LookupTable(worked_example(), OURS), name)) == expected


@pytest.mark.parametrize("name,expected", [
    ("reviews.ns2.ns1.svc.cluster.local.", [("reviews.ns2.ns1.svc.cluster.local.", "CNAME", "reviews.ns2."),
                                            ("reviews.ns2.", "A", "10.0.0.2")]),
    ("reviews.ns2.svc.ns1.svc.cluster.local.", [("reviews.ns2.svc.ns1.svc.cluster.local.", "CNAME", "reviews.ns2.svc."),
                                                ("reviews.ns2.svc.", "A", "10.0.0.2")]),
    ("api.example.com.ns1.svc.cluster.local.", [("api.example.com.ns1.svc.cluster.local.", "CNAME", "api.example.com."),
                                                ("api.example.com.", "A", "240.240.0.5")]),
    # Istio's quirk: the CNAME goes to the wildcard name itself
    ("foo.wild.com.ns1.svc.cluster.local.", [("foo.wild.com.ns1.svc.cluster.local.", "CNAME", "*.wild.com."),
                                             ("*.wild.com.", "A", "1.2.3.4")]),
])
def test_istio_cname_form(name, expected):
    assert records(ask(LookupTable(worked_example(), ISTIO), name)) == expected


def test_istio_form_expands_the_first_search_domain_only():
    table = LookupTable(worked_example(), ISTIO)
    assert ask(table, "api.example.com.svc.cluster.local.") is None
    assert ask(table, "reviews.ns2.svc.cluster.local.") is not None  # the FQDN itself


def test_empty_answer_drops_the_cname_too():
    reply = ask(LookupTable(worked_example(), ISTIO), "reviews.ns2.ns1.svc.cluster.local.", "AAAA")
    assert reply.rcode() == dns.rcode.NOERROR and reply.answer == []


# ---- building the table -------------------------------------------------------------------------

def info(**kw) -> nds_pb2.NameTable.NameInfo:
    return nds_pb2.NameTable.NameInfo(**kw)


def test_aliases_as_istio_generates_them():
    k = info(registry="Kubernetes", shortname="reviews", namespace="ns2", alt_hosts=["legacy.alias", ""])
    assert aliases("reviews.ns2.svc.cluster.local", k, OURS) == [
        "reviews.ns2.svc.cluster.local.", "reviews.ns2.", "reviews.ns2.svc.", "legacy.alias."]
    same_ns = info(registry="Kubernetes", shortname="pp", namespace="ns1")
    assert "pp." in aliases("pp.ns1.svc.cluster.local", same_ns, OURS)
    # another cluster's domain: no short forms; a trailing dot: Istio ignores the host
    assert aliases("reviews.ns2.svc.other.local", k, OURS) == ["reviews.ns2.svc.other.local."]
    assert aliases("reviews.ns2.svc.cluster.local.", k, OURS) == []
    assert aliases("api.example.com", info(registry="External"), OURS) == ["api.example.com."]
    assert aliases("api.example.com.", info(registry="External"), OURS) == ["api.example.com."]


def test_malformed_addresses_are_skipped_and_all_bad_drops_the_host():
    t = nds_pb2.NameTable()
    external(t, "mixed.test", "not-an-ip", "198.18.0.5", "2001:db8::5", "300.1.1.1")
    external(t, "bad.test", "nope", "")
    kube(t, "good", "ns1", "10.0.0.9")
    table = LookupTable(t, OURS)
    assert records(ask(table, "mixed.test.")) == [("mixed.test.", "A", "198.18.0.5")]
    assert records(ask(table, "mixed.test.", "AAAA")) == [("mixed.test.", "AAAA", "2001:db8::5")]
    assert ask(table, "bad.test.") is None
    assert table.hosts == 2


def test_most_specific_wildcard_wins():
    t = nds_pb2.NameTable()
    external(t, "*.example.com", "198.18.0.1")
    external(t, "*.eu.example.com", "198.18.0.2")
    table = LookupTable(t, OURS)
    assert records(ask(table, "a.eu.example.com."))[0][2] == "198.18.0.2"
    assert records(ask(table, "a.us.example.com."))[0][2] == "198.18.0.1"


def test_headless_answers_are_shuffled():
    t = nds_pb2.NameTable()
    external(t, "headless.test", *[f"198.18.1.{i}" for i in range(1, 9)])
    table = LookupTable(t, OURS)
    orders = {tuple(rd.to_text() for rd in ask(table, "headless.test.").answer[0]) for _ in range(30)}
    assert len(orders) > 1 and all(len(o) == 8 for o in orders)


def test_resolv_conf_parsing():
    text = ("# comment\nnameserver 198.18.0.20\nnameserver  2001:db8::20 \nnameserver bogus\n"
            "domain ignored.local\nsearch ns1.svc.cluster.local. svc.cluster.local cluster.local\n"
            "options ndots:5 timeout:1\nnameserver fe80::1%eth0\n")
    rc = ResolvConf.parse(text)
    assert rc.nameservers == ("198.18.0.20", "2001:db8::20", "fe80::1")
    assert rc.search == ("ns1.svc.cluster.local", "svc.cluster.local", "cluster.local")
    assert ResolvConf.parse("search a.b\ndomain c.d\n").search == ("c.d",)  # the last one counts
    assert ResolvConf.parse("").nameservers == ()


def test_search_domain_with_trailing_dot_matches():
    rc = ResolvConf.parse("search ns1.svc.cluster.local.\n")
    table = LookupTable(worked_example(), TableSettings("ns1", "ns1.svc.cluster.local", rc.search))
    assert ask(table, "reviews.ns2.ns1.svc.cluster.local.") is not None


def test_proxy_domain_without_the_namespace_label():
    assert TableSettings("ns1", "ns1.svc.cluster.local").domain == "svc.cluster.local"
    assert TableSettings("ns1", "svc.cluster.local").domain == "svc.cluster.local"
    assert TableSettings("ns1", "").domain == ""
    table = LookupTable(worked_example(), TableSettings("ns1", "", SEARCH))
    assert ask(table, "reviews.ns2.") is None and ask(table, "reviews.ns2.svc.cluster.local.") is not None
