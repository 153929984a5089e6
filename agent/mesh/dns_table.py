"""The DNS proxy's lookup table: built from istiod's NDS `NameTable`, answering A/AAAA locally.

Istio's agent does the same in https://github.com/istio/istio/blob/master/pkg/dns/client/dns.go;
this module keeps its answers (names, aliases, TTL 30, empty NOERROR) and differs where Istio's
answers trip clients up (see `LookupTable.answer` and `TableSettings.istio_cnames`).

Names are compared as lower-case text with the trailing dot (`reviews.ns2.`). Every alias of one
host shares one `Entry`, whose address records are built once, when the table is.
"""
from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable
from dataclasses import dataclass

import dns.flags
import dns.message
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.CNAME
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.rrset

from agent.mesh.protos import nds_pb2

TTL = 30
KUBERNETES = "Kubernetes"
IN, A, AAAA, CNAME = dns.rdataclass.IN, dns.rdatatype.A, dns.rdatatype.AAAA, dns.rdatatype.CNAME


@dataclass(frozen=True, slots=True)
class ResolvConf:
    """What the proxy uses of resolv.conf: the nameservers (in order) and the search list."""

    nameservers: tuple[str, ...] = ()
    search: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> "ResolvConf":
        """`nameserver` lines in order; `search` (or `domain`, whichever comes last) for the search
        list; everything else (ndots, timeout, attempts) is the client's business, not ours."""
        servers: list[str] = []
        search: list[str] = []
        for line in text.splitlines():
            words = line.split("#", 1)[0].split(";", 1)[0].split()
            if len(words) < 2:
                continue
            if words[0] == "nameserver":
                try:
                    servers.append(str(ipaddress.ip_address(words[1].split("%", 1)[0])))
                except ValueError:
                    continue  # glibc skips an address it cannot parse, so do we
            elif words[0] in ("search", "domain"):
                search = words[1:] if words[0] == "search" else words[1:2]
        # A search domain written with a trailing dot must match like one without (istio#30564).
        return cls(tuple(servers), tuple(s.strip(".").lower() for s in search if s.strip(".")))


@dataclass(frozen=True, slots=True)
class TableSettings:
    """What the table needs of the pod.

    `proxy_domain` is the `--domain` flag (default `<ns>.svc.cluster.local`); a first label equal to
    the pod's namespace is dropped, as Istio does, leaving `svc.cluster.local`.

    `istio_cnames` answers exactly as Istio does: a search-domain form of a name gets a CNAME to the
    short alias (`reviews.ns2.ns1.svc.cluster.local.` -> `reviews.ns2.`) and only the first search
    domain is expanded. Off (the default), the address records are owned by the queried name, as
    kube-dns answers, for every search domain: some clients (Java, netcat) reject Istio's CNAME to a
    name they never asked for (istio#30531, istio#57276)."""

    pod_namespace: str = ""
    proxy_domain: str = ""
    search: tuple[str, ...] = ()
    istio_cnames: bool = False

    @property
    def domain(self) -> str:
        labels = [x for x in self.proxy_domain.strip(".").split(".") if x]
        if labels and labels[0] == self.pod_namespace:
            labels = labels[1:]
        return ".".join(labels)

    @property
    def expanded_search(self) -> tuple[str, ...]:
        return self.search[:1] if self.istio_cnames else self.search


@dataclass(frozen=True, slots=True)
class Entry:
    """One NDS host: its address records (prebuilt, shared by all its aliases)."""

    a: tuple[dns.rdtypes.IN.A.A, ...]
    aaaa: tuple[dns.rdtypes.IN.AAAA.AAAA, ...]

    def records(self, rdtype: int) -> tuple:
        return self.a if rdtype == A else self.aaaa


@dataclass(frozen=True, slots=True)
class Match:
    """A known name: its entry, the key it was found under, and for a search-domain form the alias
    the search domain was stripped from (Istio's CNAME target)."""

    entry: Entry
    key: str
    wildcard: bool
    via: str | None = None


def _entry(ips: Iterable[str]) -> Entry | None:
    a, aaaa = [], []
    for text in ips:
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            continue
        if ip.version == 4:
            a.append(dns.rdtypes.IN.A.A(IN, A, str(ip)))
        else:
            aaaa.append(dns.rdtypes.IN.AAAA.AAAA(IN, AAAA, str(ip)))
    return Entry(tuple(a), tuple(aaaa)) if a or aaaa else None


def aliases(host: str, info: nds_pb2.NameTable.NameInfo, settings: TableSettings) -> list[str]:
    """The names one NDS host answers to, each with its trailing dot, as Istio generates them."""
    if info.registry != KUBERNETES:
        return [host if host.endswith(".") else host + "."]
    if host.endswith("."):
        return []  # Istio ignores a Kubernetes host written with a trailing dot
    out = [host + "."]
    domain = settings.domain
    if not domain or not host.endswith(domain) or not info.shortname or not info.namespace:
        return out  # another cluster's domain: short names could clash, so none
    short, ns = info.shortname, info.namespace
    out.append(f"{short}.{ns}.")
    if ns == settings.pod_namespace:
        out.append(f"{short}.")
    out.append(f"{short}.{ns}.{domain.split('.')[0]}.")
    out.extend(alt.rstrip(".") + "." for alt in info.alt_hosts if alt.strip("."))
    return out


class LookupTable:
    """Immutable once built; the proxy swaps whole tables, so a query sees one table or the next."""

    __slots__ = ("names", "settings", "hosts")

    def __init__(self, name_table: nds_pb2.NameTable | None, settings: TableSettings) -> None:
        self.settings = settings
        self.names: dict[str, Entry] = {}
        self.hosts = 0
        for host, info in sorted((name_table.table if name_table else {}).items()):
            entry = _entry(info.ips)
            if entry is None:
                continue  # every address malformed: Istio skips the host
            names = aliases(host, info, settings)
            self.hosts += bool(names)
            for name in names:
                self.names[name.lower()] = entry

    def __len__(self) -> int:
        return len(self.names)

    def _wildcard(self, name: str) -> tuple[str, Entry] | None:
        """`*.l2...ln.`, then `*.l3...ln.`, ...: the most specific wildcard first."""
        rest = name
        while "." in rest[:-1]:
            rest = rest.split(".", 1)[1]
            key = "*." + rest
            entry = self.names.get(key)
            if entry is not None:
                return key, entry
        return None

    def _bases(self, name: str) -> Iterable[str]:
        """The name with one search domain stripped, for each search domain it ends with, skipping
        aliases that already end with that domain (Istio never expands those)."""
        for domain in self.settings.expanded_search:
            suffix = "." + domain + "."
            if name.endswith(suffix) and len(name) > len(suffix):
                base = name[: -len(suffix) + 1]
                if not base.endswith(domain + "."):
                    yield base

    def match(self, name: str) -> Match | None:
        """Exact name, then a search-domain form of an alias, then wildcards (of the name, then of
        its search-domain forms); None if the name is not the mesh's."""
        entry = self.names.get(name)
        if entry is not None:
            return Match(entry, name, False)
        bases = list(self._bases(name))
        for base in bases:
            entry = self.names.get(base)
            if entry is not None:
                return Match(entry, base, False, via=base)
        for candidate in (name, *bases):
            hit = self._wildcard(candidate)
            if hit is not None:
                return Match(hit[1], hit[0], True, via=None if candidate == name else hit[0])
        return None

    def answer(self, query: dns.message.Message) -> dns.message.Message | None:
        """The authoritative reply to an A/AAAA query for a known name, or None to forward it (an
        unknown name, or any other type even for a known name). A known name with no address of
        the asked family gets an empty NOERROR: NXDOMAIN would make clients that ask A and AAAA at
        once (glibc, curl) give up on the name altogether (istio#31250)."""
        question = query.question[0]
        if question.rdtype not in (A, AAAA) or question.rdclass != IN:
            return None
        match = self.match(question.name.to_text().lower())
        if match is None:
            return None
        reply = dns.message.make_response(query)
        reply.question = [question]
        reply.flags |= dns.flags.AA
        if query.flags & dns.flags.CD:
            reply.flags |= dns.flags.CD
        records = list(match.entry.records(question.rdtype))
        if not records:
            return reply
        random.shuffle(records)  # headless services: spread clients over the endpoints
        owner = question.name
        if self.settings.istio_cnames and match.via is not None:
            target = dns.name.from_text(match.via)
            cname = dns.rrset.RRset(owner, IN, CNAME)
            cname.add(dns.rdtypes.ANY.CNAME.CNAME(IN, CNAME, target), TTL)
            reply.answer.append(cname)
            owner = target
        rrset = dns.rrset.RRset(owner, IN, question.rdtype)
        rrset.update_ttl(TTL)
        for rd in records:
            rrset.add(rd)
        reply.answer.append(rrset)
        return reply
