"""An app's DNS lookups with dnspython's stub resolver: it reads the pod's /etc/resolv.conf and walks
its search list as the C library does (ndots), so short names go through the same path as an app's.
Imports only dnspython, so it runs from a copy as the app's uid.

    dns_client.py A:productpage AAAA:api.example.com ...

Prints one JSON list: per query {rcode, name (the name that answered), answers: [values]}; rcode is
NXDOMAIN when every candidate was unknown, and an error string when no server answered usefully.
"""
from __future__ import annotations

import json
import sys

import dns.exception
import dns.resolver


def lookup(resolver: dns.resolver.Resolver, spec: str) -> dict:
    rdtype, name = spec.split(":", 1)
    try:
        answer = resolver.resolve(name, rdtype, search=True, raise_on_no_answer=False)
    except dns.resolver.NXDOMAIN:
        return {"rcode": "NXDOMAIN", "answers": []}
    except dns.exception.DNSException as e:  # SERVFAIL everywhere, timeouts
        return {"rcode": "error", "error": f"{type(e).__name__}: {e}", "answers": []}
    values = sorted(rd.to_text() for rd in answer.rrset or ())
    return {"rcode": "NOERROR", "name": answer.qname.to_text(), "answers": values}


def main(specs: list[str]) -> int:
    resolver = dns.resolver.Resolver()  # /etc/resolv.conf: the netns's, bind-mounted by `ip netns exec`
    resolver.lifetime = 10
    print(json.dumps([lookup(resolver, spec) for spec in specs]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
