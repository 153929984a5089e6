#!/usr/bin/env bash
# Installs everything the agent and its test suite need on a fresh Debian machine (as root):
# iptables (legacy and nft backends), nftables (`nft`, for --native-nftables) and iproute2 for the
# network-namespace tests, dnsmasq (the cluster resolver of the DNS proxy's tests), and a venv at
# $AGENT_VENV (default /opt/agent) built from Debian's /usr/bin/python3, so that processes running
# as uid 1337 (Envoy, the agent as the sidecar user) can read it. AGENT_EDITABLE=1 installs the
# checkout in editable mode for development.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${AGENT_VENV:-/opt/agent}
need=()
for pkg in iptables nftables iproute2 python3-venv procps dnsmasq-base; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
[ -x "$VENV/bin/python" ] || /usr/bin/python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip >/dev/null
if [ "${AGENT_EDITABLE:-0}" = 1 ]; then
  # compat: a plain .pth path entry; the default finder costs every start-up ~5 ms of imports.
  # (setuptools warns that compat is transitional; drop the option if it goes away.)
  "$VENV/bin/pip" install -q -e '.[test,envoy]' --config-settings editable_mode=compat
else
  "$VENV/bin/pip" install -q '.[test,envoy]'
fi
chmod -R a+rX "$VENV"
echo "installed into $VENV"
