"""The namespace harness itself (tests/support/netns.py): wiring, uid switching, listener replies, cleanup."""
from __future__ import annotations

import os
import subprocess

from tests.support.netns import APP_UID, PROXY_UID


def test_pod_wiring_listeners_and_cleanup(pod_factory):
    pod = pod_factory(ipv6=True)
    pod.remote.spawn_listener(tcp="9090", tag="remote", uid=None)
    pod.spawn_listener(tcp="15001", tag="proxy")
    r4 = pod.client().tcp(pod.remote_ip4, 9090)
    assert r4["tag"] == "remote" and r4["orig"] == f"{pod.remote_ip4}:9090"
    assert r4["peer"].startswith(pod.pod_ip4 + ":")
    r6 = pod.client().tcp(pod.remote_ip6, 9090)
    assert r6["tag"] == "remote" and r6["orig"] == f"[{pod.remote_ip6}]:9090", r6
    local = pod.client().tcp("127.0.0.1", 15001)
    assert local["uid"] == PROXY_UID and local["listener"] == 15001
    who = pod.run(["id", "-u"], uid=APP_UID).stdout.strip()
    assert who == str(APP_UID)
    assert "nameserver 198.18.0.20" in pod.run(["cat", "/etc/resolv.conf"]).stdout
    names = (pod.ns.name, pod.remote.name)
    pod.close()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(n in listed for n in names)
    assert not any(os.path.exists(f"/etc/netns/{n}") for n in names)
