"""Moved to agent.iptables.record (only istio-iptables uses Record now); this name stays importable
until nothing imports it."""
from agent.iptables.record import Record

__all__ = ["Record"]
