#!/bin/sh
# Regenerate the Python code of Istio's protos in agent/mesh/protos/ (committed).
#
#   scripts/gen-protos.sh
#
# grpcio-tools is needed only here, so it goes into a throwaway venv, not into the
# project's. It is pinned to the release whose protoc emits protobuf 6.31.1 code:
# generated code checks at import that the protobuf runtime is at least the version
# that generated it, and 6.31.1 is the floor of pyproject's protobuf range (the same
# one xds-protos is generated with).
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${PROTOC_VENV:-${TMPDIR:-/tmp}/agent-grpcio-tools}
python=${PYTHON:-python3}
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet 'grpcio-tools==1.74.0'
fi
cd "$root"
# Protos are compiled from the repository root so the generated imports read
# "from agent.mesh.protos import ...".
"$venv/bin/python" -m grpc_tools.protoc -I . \
    --python_out=. --pyi_out=. --grpc_python_out=. \
    agent/mesh/protos/ca.proto agent/mesh/protos/nds.proto agent/mesh/protos/proxy_config.proto
# Only the CA proto declares a service; the empty stubs of the others are noise.
rm -f agent/mesh/protos/nds_pb2_grpc.py agent/mesh/protos/proxy_config_pb2_grpc.py
