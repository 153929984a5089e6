"""Istio's protos (CA service, NDS name table, a minimal ProxyConfig) and their
generated Python code. Regenerate with ``scripts/gen-protos.sh``; do not edit the
``*_pb2*.py`` files by hand."""
