"""What Envoy's stopped listeners still serve, from its admin API, as pure functions.

At the end of a drain the agent stops Envoy's (inbound) listeners and waits, before it stops Envoy,
until nothing they accepted is in flight (agent.sidecar.drainer). Envoy's stats count connections
per listener (`listener.<address>_<port>.downstream_cx_active`, or `listener.<stat_prefix>.` when
the listener has one) and requests per HTTP connection manager (`http.<stat_prefix>.downstream_rq_active`),
not requests per listener; and an idle keep-alive connection (a peer's pooled connection, open for
as long as the peer likes) is not work in flight. So, over the stopped listeners:

    in flight = their connections - the idle connections of their HTTP connection managers

where a manager's idle connections are its connections less its active requests (none when HTTP/2
multiplexes more requests than connections). A non-HTTP connection (TCP proxy) counts whole.

Before they are closed, the same listeners' `downstream_cx_total` tells whether connections are
still arriving (the drain closes them at a quiet moment: agent.sidecar.drain.quiet).

Which listeners stop, and which managers they use, comes from the listeners' configuration
(`/config_dump`, masked to what is read): `drain_listeners?inboundonly` stops the INBOUND ones,
without it every listener; the agent's own (15021, 15090) are not waited for.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

#: config_dump resources holding listeners, and where each holds the Listener message.
DUMPS = {"static_listeners": "listener", "dynamic_listeners": "active_state.listener"}
FIELDS = ("name", "address", "stat_prefix", "traffic_direction", "filter_chains", "default_filter_chain")
STATS = r"downstream_(cx|rq)_active$|downstream_cx_total$"
HCM_TYPE = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


def mask(resource: str) -> str:
    """The field mask of one config_dump resource: only what `plan()` reads. Envoy applies a mask
    inside the Listener of a static listener but not inside a dynamic one's active state (400):
    there, the whole active listener."""
    if resource == "dynamic_listeners":
        return DUMPS[resource]
    return ",".join(f"{DUMPS[resource]}.{f}" for f in FIELDS)


def listeners(resource: str, dump: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The Listener messages in one config_dump answer (`{}` when there are none)."""
    path = DUMPS[resource].split(".")
    out = []
    for config in dump.get("configs", []):
        for key in path:
            config = config.get(key) if isinstance(config, dict) else None
        if isinstance(config, dict):
            out.append(config)
    return out


@dataclass(frozen=True, slots=True)
class Plan:
    """The stats to add up: the stopped listeners' and their HTTP connection managers'."""

    listener_stats: frozenset[str]  # listener.<x>.downstream_cx_active
    http_prefixes: frozenset[str]  # <p> of http.<p>.downstream_{cx,rq}_active


def plan(configs: Iterable[Mapping[str, Any]], inbound_only: bool, excluded_ports: Iterable[int]) -> Plan:
    excluded = set(excluded_ports)
    names, prefixes = set(), set()
    for lis in configs:
        if inbound_only and lis.get("traffic_direction") != "INBOUND":
            continue  # what Envoy's drain_listeners?inboundonly leaves accepting
        socket_address = lis.get("address", {}).get("socket_address", {})
        if socket_address.get("port_value") in excluded:
            continue
        if (stat := listener_stat(lis)) is not None:
            names.add(stat)
            prefixes |= http_prefixes(lis)
    return Plan(frozenset(names), frozenset(prefixes))


def listener_stat(lis: Mapping[str, Any]) -> str | None:
    """Envoy's name of a listener's downstream_cx_active gauge (the address as Envoy prints it,
    `:` made `_`: `listener.0.0.0.0_15006.`, `listener.[__]_15006.`); None: not a socket listener."""
    if lis.get("stat_prefix"):
        return f"listener.{stat_name(lis['stat_prefix'])}.downstream_cx_active"
    socket_address = lis.get("address", {}).get("socket_address")
    if not socket_address:
        return None
    host = socket_address.get("address", "")
    try:
        ip = ipaddress.ip_address(host)
        host = f"[{ip.compressed}]" if ip.version == 6 else ip.compressed
    except ValueError:
        pass
    name = f"{host}:{socket_address.get('port_value', 0)}".replace(":", "_")
    return f"listener.{name}.downstream_cx_active"


def http_prefixes(lis: Mapping[str, Any]) -> set[str]:
    chains = list(lis.get("filter_chains", []))
    if lis.get("default_filter_chain"):
        chains.append(lis["default_filter_chain"])
    out = set()
    for chain in chains:
        for f in chain.get("filters", []):
            typed = f.get("typed_config", {})
            if typed.get("@type", "").endswith("/" + HCM_TYPE) and typed.get("stat_prefix"):
                out.add(stat_name(typed["stat_prefix"]))
    return out


def stat_name(prefix: str) -> str:
    """A configured stat prefix as Envoy names its stats: `:` made `_` (istiod's inbound managers
    of an IPv6-only pod are `inbound_::_<port>;`, their stats `http.inbound____<port>;.`)."""
    return prefix.replace(":", "_")


@dataclass(frozen=True, slots=True)
class Counts:
    in_flight: int  # connections and requests the listeners accepted that are not done
    accepted: int  # connections the listeners ever accepted


def count(stats: Mapping[str, int], p: Plan) -> Counts:
    """What the listeners still serve and have accepted so far (a stat Envoy does not report
    counts 0: `usedonly` leaves out what never moved, and so does a stats matcher)."""
    connections = sum(stats.get(name, 0) for name in p.listener_stats)
    idle = sum(max(0, stats.get(f"http.{prefix}.downstream_cx_active", 0)
                   - stats.get(f"http.{prefix}.downstream_rq_active", 0)) for prefix in p.http_prefixes)
    accepted = sum(stats.get(name.removesuffix("_active") + "_total", 0) for name in p.listener_stats)
    return Counts(max(0, connections - idle), accepted)
